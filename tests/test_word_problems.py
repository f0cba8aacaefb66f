import re

from sftrl_callbacks.toy.word_problems import draw_problem, make_word_problem_splits


def _signature(question: str, answer: str) -> tuple:
    """The numbers a question states and its answer: equal for any two problems with the same arithmetic."""
    return (*map(int, re.findall(r"\d+", question)), int(answer))


def _answer_of(solution: str) -> str:
    return re.search(r"\\boxed\{(-?\d+)\}\.$", solution).group(1)


def test_splits_share_no_problem_and_are_conversational():
    splits = make_word_problem_splits(n_train=3000, n_heldout_sft=64, n_heldout_problems=32, seed=3)
    train, heldout, problems = splits.train, splits.heldout_sft, splits.heldout_problems
    assert (len(train), len(heldout), len(problems)) == (3000, 64, 32)
    for row in (train[0], heldout[0]):
        assert [m["role"] for m in row["prompt"]] == ["user"]
        assert [m["role"] for m in row["completion"]] == ["assistant"]
    signatures = {}
    for name, ds in (("train", train), ("heldout", heldout)):
        signatures[name] = {
            _signature(p[0]["content"], _answer_of(c[0]["content"])) for p, c in zip(ds["prompt"], ds["completion"])
        }
    signatures["problems"] = {_signature(p[0]["content"], a) for p, a in zip(problems["prompt"], problems["answer"])}
    assert len(signatures["train"]) == 3000 and len(signatures["heldout"]) == 64 and len(signatures["problems"]) == 32
    assert not signatures["train"] & signatures["heldout"]
    assert not signatures["train"] & signatures["problems"]
    assert not signatures["heldout"] & signatures["problems"]
    # the held-out sets do not depend on how many training rows are drawn
    again = make_word_problem_splits(n_train=100, n_heldout_sft=64, n_heldout_problems=32, seed=3)
    assert again.heldout_problems["prompt"] == problems["prompt"]


def test_solutions_are_right_and_end_in_a_boxed_answer():
    import random

    rng = random.Random(0)
    for _ in range(500):
        p = draw_problem(rng, rng.choice([1, 2, 3]))
        lines = p.solution.splitlines()
        assert len(lines) == p.steps + 2 and lines[-1] == f"The answer is \\boxed{{{p.answer}}}."
        value = p.start
        for line, amount in zip(lines[1:-1], p.amounts):
            a, op, b, r = re.search(r"(\d+) ([+-]) (\d+) = (-?\d+)\.$", line).groups()
            assert int(a) == value and int(b) == abs(amount) and (op == "+") == (amount > 0)
            value += amount
            assert int(r) == value >= 0
        assert str(value) == p.answer and "\\boxed{}" in p.question
