"""Reasoning completions graded as the field grades them: the answer region after the thinking block, an unclosed
block as an unfinished thought, a block the prompt opened, thinking / answer tokens, held-out loss by token class.

Every row of the table in docs/pass-at-k.md#reasoning-models is a case below (`test_docs_table_holds_every_case`)."""

import json
import logging
import os
import re

import pytest

from sftrl_callbacks import HeldOutLossCallback, PassAtKCallback
from sftrl_callbacks.contracts import Completion, PassAtKConfig
from sftrl_callbacks.io import read_jsonl
from sftrl_callbacks.verifiers import GuardedVerifier, MathVerifyVerifier, ReasoningFormat, RewardFunctionVerifier
from sftrl_callbacks.verifiers.grading import grade, warn_if_unseen

from .conftest import make_trainer

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "pass-at-k.md")

# id: (the prompt opened the block, completion, the answer region graded (None: no answer), math-verify verdict on 7)
CASES = {
    "plain": (False, r"3+4=7. The answer is \boxed{7}.", r"3+4=7. The answer is \boxed{7}.", True),
    "one-block": (False, r"<think>3+4=7</think> The answer is \boxed{7}.", r" The answer is \boxed{7}.", True),
    "draft-in-thinking": (
        False,
        r"<think>Maybe the answer is \boxed{5}. Wait, no, it is 7.</think> The answer is \boxed{7}.",
        r" The answer is \boxed{7}.",
        True,
    ),
    "wrong-after-right-draft": (False, r"<think>\boxed{7}? No.</think> \boxed{5}", r" \boxed{5}", False),
    "cut-mid-thought": (
        False,
        r"<think>Let me compute. 3+4 = 7 so \boxed{7}. Hmm, let me double check the",
        None,
        False,
    ),
    "nothing-after-thinking": (False, r"<think>3+4=7</think>", "", False),
    "several-blocks": (False, r"<think>a</think> \boxed{5} <think>b</think> \boxed{7}", r" \boxed{7}", True),
    "nested-blocks": (False, r"<think>a <think>b</think> \boxed{5}</think> \boxed{7}", r" \boxed{7}", True),
    "last-block-open": (False, r"<think>a</think> \boxed{7} <think>but", None, False),
    "text-before-block": (False, r"Sure. <think>3+4=7</think> \boxed{7}", r" \boxed{7}", True),
    "stray-close": (False, r"3+4=7</think> \boxed{7}", r" \boxed{7}", True),
    "prompt-opened-closed": (True, r"3+4=7</think> The answer is \boxed{7}.", r" The answer is \boxed{7}.", True),
    "prompt-opened-never-closed": (True, r"3+4=7 so \boxed{7}", None, False),
    "prompt-opened-opens-again": (True, r"<think>3+4=7</think> \boxed{7}", None, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_answer_region_rules(case):
    opened, completion, answer, _ = CASES[case]
    region = ReasoningFormat().split(completion, prompt_opened=opened)
    assert region.answer == answer
    assert region.unfinished == (answer is None)
    if answer is not None:
        assert region.thinking + region.answer == completion
    else:
        assert region.thinking == completion


def test_other_delimiters_and_spans():
    fmt = ReasoningFormat("<|begin_of_thought|>", "<|end_of_thought|>")
    text = "<|begin_of_thought|>x<|end_of_thought|>\n\\boxed{7}"
    assert fmt.split(text).answer == "\n\\boxed{7}"
    assert ReasoningFormat().split(text).answer == text  # another model's tags: graded whole
    assert ReasoningFormat().thinking_spans("a<think>b</think>c<think>d") == [(1, 17), (18, 26)]
    with pytest.raises(ValueError, match="delimiters must differ"):
        ReasoningFormat("|", "|")
    with pytest.raises(ValueError, match="give two strings"):
        PassAtKConfig(reasoning_delimiters=["<think>"])
    assert PassAtKConfig(reasoning_delimiters=[None]).reasoning_format() is None  # `--reasoning-delimiters none`


def test_docs_table_holds_every_case():
    with open(DOCS, encoding="utf-8") as f:
        rows = {m[1]: m[2] for m in re.finditer(r"^\| `([a-z-]+)` \|(.*)$", f.read(), flags=re.M)}
    for case, (opened, completion, answer, verdict) in CASES.items():
        assert case in rows, case
        cells = [c.strip() for c in rows[case].split(" | ")]
        assert cells[0] == ("yes" if opened else "no"), case
        assert cells[1] == f"`{completion}`", case
        assert cells[2] == ("none (unfinished thought)" if answer is None else f"`{answer}`" if answer else "empty")
        assert cells[3].startswith("correct" if verdict else "wrong"), case


@pytest.fixture(scope="module")
def math_verify():
    verifier = MathVerifyVerifier(workers=1, timeout_s=5)
    yield verifier
    verifier.close()


def test_math_verify_verdicts_on_every_case(math_verify):
    guarded = GuardedVerifier(math_verify, 60)
    for case, (opened, completion, _, verdict) in CASES.items():
        (got,) = grade(guarded, [completion], [10], {"answer": "7"}, 1.0, ReasoningFormat(), opened)
        assert got.correct == verdict, case
    # graded whole, as before the reasoning format: the three completions of the issue get the wrong verdicts
    whole = [CASES[c][1] for c in ("draft-in-thinking", "cut-mid-thought", "nothing-after-thinking")]
    assert [g.correct for g in grade(guarded, whole, [10] * 3, {"answer": "7"}, 1.0)] == [False, True, True]


def test_reward_functions_get_the_whole_completion_unless_asked():
    seen = []

    def reward(prompts, completions, **_):
        seen.extend(completions)
        return [1.0 if c.rstrip().endswith("7") else 0.0 for c in completions]

    completions = ["<think>so 7</think> 5", "<think>so 7", "<think>5</think> 7"]
    for answer_region, expected, verdicts in (
        (False, completions, [False, True, True]),  # as GRPOTrainer gives them: the unfinished thought scores
        (True, [" 5", " 7"], [False, False, True]),
    ):
        seen.clear()
        verifier = GuardedVerifier(RewardFunctionVerifier(reward, answer_region=answer_region), 60)
        grades = grade(verifier, completions, [5, 5, 5], {"prompt": "q"}, 1.0, ReasoningFormat())
        assert seen == expected and [g.correct for g in grades] == verdicts
        assert [g.unfinished for g in grades] == [False, True, False]


def test_thinking_and_answer_tokens_split_the_completion(tokenizer):
    def count(texts):
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    verifier = GuardedVerifier(RewardFunctionVerifier(lambda completions, **_: [0.0] * len(completions)), 60)
    texts = ["(3+4=7) 7", "7", "(3+4"]
    fmt = ReasoningFormat("(", ")")  # the toy vocabulary has no angle brackets
    grades = grade(verifier, texts, [9, 1, 4], {"prompt": "q"}, 1.0, fmt, count_tokens=count)
    assert [(g.thinking_tokens, g.answer_tokens, g.unfinished) for g in grades] == [
        (7, 2, False),
        (0, 1, False),
        (4, 0, True),
    ]


class ScriptedSampler:
    """Returns given completions: the grading, not the sampling, is under test here."""

    def __init__(self, texts, tokenizer, cut=()):
        self.texts, self.tokenizer, self.cut = texts, tokenizer, set(cut)

    def sample(self, model, tokenizer, prompts, n, params):
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        out = []
        for count in counts:
            texts = [self.texts[j % len(self.texts)] for j in range(count)]
            lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
            out.append([Completion(t, m, t in self.cut) for t, m in zip(texts, lengths)])
        return out


def test_the_three_completions_get_the_right_verdicts_through_the_callback(tmp_path, tokenizer, splits):
    """The issue's three completions, sampled for every problem: only the draft-then-answer one is correct, and the
    measurement reports thinking / answer tokens, unfinished thoughts and the length cap per problem."""
    texts = [CASES[c][1] for c in ("draft-in-thinking", "cut-mid-thought", "nothing-after-thinking")]
    problems = splits.heldout_problems.select(range(3)).map(lambda r: {"answer": "7"})
    sampler = ScriptedSampler(texts, tokenizer, cut=[texts[1]])
    passk = PassAtKCallback({"p": problems}, verifier="math-verify", n=3, sampler=sampler, max_new_tokens=90)
    trainer = make_trainer(tmp_path, tokenizer, splits.train, [passk], max_steps=1, save_strategy="no")
    trainer.train()
    assert passk.errors == 0
    result = passk.results["p"][0]  # step 0 (the end of training measures the same completions again)
    assert result.c_per_problem == [1, 1, 1] and result.truncated_per_problem == [1, 1, 1]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    answer = len(tokenizer(r" The answer is \boxed{7}.", add_special_tokens=False)["input_ids"])
    assert result.reasoning["mean_answer_tokens"] == pytest.approx(answer / 3)
    assert result.reasoning["mean_thinking_tokens"] == pytest.approx((sum(lengths) - answer) / 3)
    assert result.reasoning["unfinished_thought_rate"] == pytest.approx(1 / 3)
    logged = {r["name"]: r for r in read_jsonl(tmp_path / "out" / "sftrl" / "metrics.jsonl")}
    assert logged["sftrl/passk/p/pass@1"]["value"] == pytest.approx(1 / 3)
    assert logged["sftrl/passk/p/unfinished_thought_rate"]["value"] == pytest.approx(1 / 3)
    assert logged["sftrl/passk/p/mean_answer_tokens"]["reasoning_delimiters"] == ["<think>", "</think>"]
    saved = json.loads((tmp_path / "out" / "sftrl" / "passk" / "step-0_p.json").read_text())
    assert [c["unfinished"] for c in saved["examples"][0]["completions"]] == [False, True, False]


def test_scores_give_a_mean_with_its_interval(tmp_path, tokenizer, splits):
    """A verifier that returns scores: pass@k counts those at or above score_threshold, and the mean score is a
    metric of its own with a bootstrap interval over problems."""
    problems = splits.heldout_problems.select(range(4))
    rewards = iter([0.25, 1.0, 0.5, 0.0] * 100)

    def reward(completions, **_):
        return [next(rewards) for _ in completions]

    sampler = ScriptedSampler(["7"], tokenizer)
    passk = PassAtKCallback(
        {"p": problems}, verifier=RewardFunctionVerifier(reward), n=4, sampler=sampler, score_threshold=0.5
    )
    trainer = make_trainer(tmp_path, tokenizer, splits.train, [passk], max_steps=1, save_strategy="no")
    trainer.train()
    result = passk.results["p"][0]
    assert result.c_per_problem == [2, 2, 2, 2]  # 1.0 and 0.5 reach the threshold
    assert result.mean_score["estimate"] == pytest.approx(0.4375) and result.mean_score["threshold"] == 0.5
    assert result.mean_score["low"] == result.mean_score["high"] == pytest.approx(0.4375)  # every problem alike
    assert "percentile bootstrap over 4 problems" in result.mean_score["method"]
    logged = {r["name"]: r["value"] for r in read_jsonl(tmp_path / "out" / "sftrl" / "metrics.jsonl")}
    assert logged["sftrl/passk/p/mean_score"] == pytest.approx(0.4375)
    assert "sftrl/passk/p/mean_score_low" in logged and "sftrl/passk/p/unfinished_thought_rate" not in logged


def test_unseen_delimiters_warn_once_with_what_the_completions_start_with(caplog):
    fmt = ReasoningFormat("<reasoning>", "</reasoning>")
    with caplog.at_level(logging.WARNING, logger="sftrl_callbacks"):
        line = warn_if_unseen(fmt, ["<think>a</think> 7", "7"], 0, "pass@k of 'p' at step 5")
    assert "'<reasoning>' / '</reasoning>' occur in none of the 2 completions" in line
    assert "'<think>', '</think>'" in line and "they start with '<think>a</think> 7', '7'" in line
    assert caplog.text.count("occur in none") == 1
    # the default pair on a plain model that writes no tag at all: nothing to say
    assert warn_if_unseen(ReasoningFormat(), ["7", "8"], 0, "x") is None
    assert warn_if_unseen(ReasoningFormat(), ["<thought>7</thought>"], 0, "x") is not None


def test_heldout_loss_by_token_class_equals_an_independent_split(tmp_path, tokenizer):
    """Rows whose completions think in a block: loss_thinking and loss_answer are the token-weighted NLL over the
    scored tokens inside and outside the block, computed here from SFTTrainer's own tokenization."""
    import torch
    from datasets import Dataset

    rows = Dataset.from_dict(
        {
            "prompt": ["Q: 3+4=? A:", "Q: 5-2=? A:", "Q: 9-1=? A:"],
            "completion": [" (3+4=7) #### 7", " (5-2=3) #### 3", " 9-1=8 #### 8"],
        }
    )
    loss = HeldOutLossCallback({"h": rows}, reasoning_delimiters=["(", ")"], measure_at_start=True)
    trainer = make_trainer(tmp_path, tokenizer, rows, [loss], max_steps=1, save_strategy="no", learning_rate=0.0)
    trainer.train()
    model = trainer.model.eval()
    open_id, close_id = tokenizer.convert_tokens_to_ids(["(", ")"])
    sums = {"thinking": [0.0, 0], "answer": [0.0, 0]}
    with torch.no_grad():
        for row in trainer.train_dataset:  # input_ids and labels as SFTTrainer trains on them
            ids, labels = row["input_ids"], row["labels"]
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            inside = False
            for t in range(1, len(ids)):
                starts = ids[t] == open_id
                inside = inside or starts
                if labels[t] != -100:
                    nll = -torch.log_softmax(logits[t - 1], -1)[ids[t]].item()
                    part = sums["thinking" if inside else "answer"]
                    part[0], part[1] = part[0] + nll, part[1] + 1
                inside = inside and ids[t] != close_id
    history = {name: dict(points) for name, points in loss.history.items()}
    assert history["sftrl/heldout/h/loss_thinking"][0] == pytest.approx(
        sums["thinking"][0] / sums["thinking"][1], rel=1e-5
    )
    assert history["sftrl/heldout/h/loss_answer"][0] == pytest.approx(sums["answer"][0] / sums["answer"][1], rel=1e-5)
    total = (sums["thinking"][0] + sums["answer"][0]) / (sums["thinking"][1] + sums["answer"][1])
    assert history["sftrl/heldout/h/loss"][0] == pytest.approx(total, rel=1e-5)
    plain = HeldOutLossCallback({"h": rows}, reasoning_delimiters=None)
    assert "loss_thinking" in plain.metric_fields()  # a name metric_for_best_model may use


# The generation prompt opens the block, as the templates of R1 distills and Qwen3 thinking models do: completions
# hold only the closing tag.
OPENING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Q: ' + message['content'] + ' A:' }}"
    "{% elif message['role'] == 'assistant' %}{% generation %}{{ '<think>' + message['content'] + '<eos>' }}"
    "{% endgeneration %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<think>' }}{% endif %}"
)


@pytest.mark.slow
def test_a_template_that_opens_the_block_end_to_end(tmp_path, caplog):
    """A tokenizer whose chat template opens `<think>` in the generation prompt (added as one token each), a toy
    model SFT-trained to close the block and answer: pass@k reads each completion as continuing the thought, counts
    its thinking tokens, and the held-out loss splits at the closing tag."""
    from datasets import Dataset

    from sftrl_callbacks.toy import build_model, build_tokenizer, make_splits

    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["<think>", "</think>"])
    tokenizer.chat_template = OPENING_TEMPLATE
    splits = make_splits(n_train=2000, train_steps=(1,), n_heldout_sft=16, n_heldout_problems=12, heldout_steps=(1,))

    def chat(ds):  # `Q: 3+4=? A:` -> ` 3+4=7 #### 7`: the user asks `3+4=?`, the assistant closes its thought first
        prompts = [[{"role": "user", "content": p[len("Q: ") : -len(" A:")]}] for p in ds["prompt"]]
        completions = [
            [{"role": "assistant", "content": c.replace(" ####", "</think> ####")}] for c in ds["completion"]
        ]
        return Dataset.from_dict({"prompt": prompts, "completion": completions})

    train, heldout = chat(splits.train), chat(splits.heldout_sft)
    problems = splits.heldout_problems.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"][3:-3]}]})
    loss = HeldOutLossCallback({"h": heldout}, every_n_steps=None)
    passk = PassAtKCallback({"p": problems}, n=8, max_new_tokens=24, on_save=False)
    model = build_model(tokenizer, seed=0)
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        train,
        [loss, passk],
        max_steps=200,
        save_strategy="no",
        model=model,
        learning_rate=3e-3,
    )
    with caplog.at_level(logging.INFO, logger="sftrl_callbacks"):
        trainer.train()
    assert loss.errors == 0 and passk.errors == 0
    assert "12 of 12 prompts of 'p' end inside a '<think>' block" in caplog.text
    first, last = passk.results["p"]
    assert last.reasoning["prompts_opening_block"] == 12
    texts = [c["completion"] for e in last.examples for c in e["completions"]]
    assert texts and not any("<think>" in t for t in texts)
    assert sum("</think>" in t for t in texts) >= 0.75 * len(texts), texts
    summary = (last.pass_at_k[1], last.reasoning)
    assert last.pass_at_k[1] > 0.1 and last.reasoning["unfinished_thought_rate"] < 0.25, summary
    assert last.reasoning["mean_thinking_tokens"] > 4 and 3 <= last.reasoning["mean_answer_tokens"] <= 8, summary
    # before training the block is rarely closed (a random `</think>` token now and then), and nothing is correct
    assert first.reasoning["unfinished_thought_rate"] > 0.75 and first.pass_at_k[1] == 0.0
    history = {name: dict(points) for name, points in loss.history.items()}
    assert history["sftrl/heldout/h/loss_thinking"][200] < history["sftrl/heldout/h/loss_thinking"][0]
    assert set(history["sftrl/heldout/h/loss_answer"]) == {0, 200}


def test_delimiters_of_several_tokens_are_said_once(tokenizer, splits, caplog):
    from sftrl_callbacks.measure import explain_reasoning_format

    with caplog.at_level(logging.INFO, logger="sftrl_callbacks"):
        explain_reasoning_format(tokenizer, {"p": splits.heldout_problems}, PassAtKConfig(n=1, temperature=0))
        explain_reasoning_format(tokenizer, {"p": splits.heldout_problems}, PassAtKConfig(reasoning_delimiters=None))
    assert caplog.text.count("are not single tokens") == 1
    assert "'<think>' / '</think>' are not single tokens of the" in caplog.text and "(7 / 8 tokens)" in caplog.text
    assert "end inside" not in caplog.text  # the toy prompts open no block


def test_the_completions_table_clips_the_thinking_and_keeps_the_answer():
    from types import SimpleNamespace

    from sftrl_callbacks.report import completions_table

    thinking = "<think>" + "step; " * 60 + "</think>"
    kept = [
        {"completion": thinking + " \\boxed{7}", "correct": True, "tokens": 70, "truncated": False},
        {"completion": "<think>" + "x" * 300, "correct": False, "tokens": 90, "truncated": True, "unfinished": True},
    ]
    kept[0].update(thinking_tokens=66, unfinished=False)
    kept[1].update(thinking_tokens=90)
    reasoning = {"delimiters": ["<think>", "</think>"], "seen": True}
    examples = [{"prompt": "q", "answer": "7", "completions": kept}]
    result = SimpleNamespace(examples=examples, dataset="p", reasoning=reasoning)
    table = completions_table(result, 5)
    assert table.columns[-2:] == ["thinking_tokens", "unfinished"]
    (first, second) = table.rows
    assert first[2].startswith("<think>step;") and first[2].endswith("</think> \\boxed{7}")
    assert "characters ...]" in first[2] and len(first[2]) < len(kept[0]["completion"])
    assert first[-2:] == [66, False] and second[-2:] == [90, True]
    assert "characters ...]" in second[2] and not second[2].endswith("</think>")  # no answer after a cut thought
