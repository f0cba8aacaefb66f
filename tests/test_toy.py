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
