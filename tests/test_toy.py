from sftrl_callbacks.toy import ArithmeticTask, final_answer, make_splits, problem_from_row, steps_are_correct


def test_tokenizer_round_trips(tokenizer):
    text = "Q: 3+4-2=? A: 3+4=7; 7-2=5 #### 5"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer(text + tokenizer.eos_token)["input_ids"], skip_special_tokens=True) == text


def test_chat_template_renders_like_prompt_completion(tokenizer):
    messages = [{"role": "user", "content": "3+4=?"}, {"role": "assistant", "content": " 3+4=7 #### 7"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == "Q: 3+4=? A: 3+4=7 #### 7<eos>"


def test_problem_completion_is_step_by_step_and_verifiable():
    task = ArithmeticTask(seed=1)
    for steps in (1, 2, 3, 4):
        p = task.problem(steps)
        assert p.completion.count(";") == steps - 1
        assert final_answer(p.completion) == p.answer
        assert steps_are_correct(p.completion, p)
        wrong_step = p.completion.replace("=", "=1", 1)
        assert not steps_are_correct(wrong_step, p)
    assert final_answer("no answer") is None


def test_splits_are_disjoint_and_difficulty_is_controllable():
    s = make_splits(n_train=500, train_steps=(1,), n_heldout_sft=20, n_heldout_problems=10, seed=3)
    held = set(s.heldout_sft["prompt"]) | set(s.heldout_problems["prompt"])
    assert not held & set(s.train["prompt"])
    assert all(c.count(";") == 0 for c in s.train["completion"])
    row = s.heldout_problems[0]
    assert problem_from_row(row).answer == row["answer"]
    msgs = make_splits(n_train=5, fmt="messages", n_heldout_sft=2, n_heldout_problems=2).train
    assert msgs[0]["messages"][1]["role"] == "assistant"


def test_exclude_keeps_prompts_out_of_every_split():
    held = make_splits(n_train=0, n_heldout_sft=30, n_heldout_problems=30, train_steps=(1,), heldout_steps=(1,), seed=0)
    exclude = set(held.heldout_sft["prompt"]) | set(held.heldout_problems["prompt"])
    # 1-step prompts number 162, so 2,000 draws would hit every excluded one were they not kept out.
    s = make_splits(
        n_train=2000,
        train_steps=(1,),
        heldout_steps=(1,),
        n_heldout_sft=10,
        n_heldout_problems=10,
        exclude=exclude,
        seed=1,
    )
    for split in (s.train, s.heldout_sft, s.heldout_problems):
        assert not exclude & set(split["prompt"])


def test_the_study_trains_and_runs_rl_on_no_held_out_prompt():
    """Every SFT data set and the RL prompts of the study (full and quick settings) avoid its held-out prompts."""
    import importlib.util
    import os
    import sys

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "sft_rl_study", "run_study.py")
    spec = importlib.util.spec_from_file_location("run_study", path)
    study = importlib.util.module_from_spec(spec)
    sys.modules["run_study"] = study  # its dataclasses look their module up there
    spec.loader.exec_module(study)
    for settings in (study.Settings(), study.Settings.quick()):
        _, heldout_sft, problems, rl_prompts, heldout = study.world(settings)
        assert heldout == set(heldout_sft["prompt"]) | set(problems["prompt"])
        assert not heldout & set(rl_prompts["prompt"])
        for regime in study.REGIMES:
            for sft_seed in (0, 1):
                assert not heldout & set(study.sft_data(regime, sft_seed, heldout).train["prompt"]), (regime, sft_seed)
