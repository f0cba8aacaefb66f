"""A synthetic step-by-step arithmetic task with a verifiable `#### answer`.

`Q: 3+4-2=? A:` -> ` 3+4=7; 7-2=5 #### 5`. The number of steps sets the difficulty and the length,
so "short-only" and "mixed-length" SFT sets are one argument apart. Held-out problems never appear
in the training rows (their prompts are excluded), so held-out loss and pass@k measure generalization.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from datasets import Dataset

T = TypeVar("T")

OPERATORS = "+-"
_STEP = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Problem:
    operands: tuple[int, ...]
    operators: tuple[str, ...]

    @property
    def steps(self) -> int:
        return len(self.operators)

    @property
    def question(self) -> str:
        text = str(self.operands[0])
        for op, x in zip(self.operators, self.operands[1:]):
            text += f"{op}{x}"
        return text + "=?"

    @property
    def prompt(self) -> str:
        return f"Q: {self.question} A:"

    def running_values(self) -> list[int]:
        values = [self.operands[0]]
        for op, x in zip(self.operators, self.operands[1:]):
            values.append(_apply(values[-1], op, x))
        return values

    @property
    def answer(self) -> str:
        return str(self.running_values()[-1])

    @property
    def completion(self) -> str:
        values = self.running_values()
        lines = [f"{a}{op}{x}={r}" for a, op, x, r in zip(values[:-1], self.operators, self.operands[1:], values[1:])]
        return " " + "; ".join(lines) + f" #### {self.answer}"


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def final_answer(completion: str) -> str | None:
    """The text after the last `####`, stripped; None when there is none."""
    if "####" not in completion:
        return None
    return completion.rsplit("####", 1)[1].strip().split("<", 1)[0].strip() or None


def steps_are_correct(completion: str, problem: Problem) -> bool:
    """Strict check: right final answer, right number of steps, and every step `a op b=r` right.

    Sampled completions often reach the right final answer through wrong steps; rewarding only the
    final answer then teaches wrong arithmetic to RL (see the project notes), so RL uses this check.
    """
    answer = final_answer(completion)
    if answer != problem.answer:
        return False
    body = completion.rsplit("####", 1)[0]
    parts = [p for p in body.split(";")]
    if len(parts) != problem.steps:
        return False
    values = problem.running_values()
    for i, part in enumerate(parts):
        match = _STEP.match(part)
        if match is None:
            return False
        a, op, b, r = int(match[1]), match[2], int(match[3]), int(match[4])
        if (a, op, b, r) != (values[i], problem.operators[i], problem.operands[i + 1], values[i + 1]):
            return False
    return True


@dataclass
class ArithmeticTask:
    """Generator of toy problems and of SFT / held-out datasets in the formats SFTTrainer accepts."""

    max_operand: int = 9
    operators: str = OPERATORS
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def problem(self, steps: int) -> Problem:
        rng = self._rng
        operands = tuple(rng.randint(0, self.max_operand) for _ in range(steps + 1))
        operators = tuple(rng.choice(self.operators) for _ in range(steps))
        return Problem(operands, operators)

    def problems(
        self,
        n: int,
        steps: Sequence[int] = (1, 2, 3),
        weights: Sequence[float] | None = None,
        exclude: set[str] | None = None,
        unique: bool = False,
    ) -> list[Problem]:
        """`n` problems with a step count drawn from `steps` (with `weights`), prompts not in `exclude`."""
        exclude = set(exclude or ())
        seen: set[str] = set()

        def accept(p: Problem) -> bool:
            if p.prompt in exclude or (unique and p.prompt in seen):
                return False
            seen.add(p.prompt)
            return True

        def draw() -> Problem:
            return self.problem(self._rng.choices(list(steps), weights=weights)[0])

        return draw_until(n, draw, accept, f"problems with steps={steps} outside the excluded set")


def draw_until(n: int, draw: Callable[[], T], accept: Callable[[T], bool], what: str) -> list[T]:
    """The first `n` draws that `accept` takes (it may record them), giving up after 200 n + 10,000 tries."""
    out: list[T] = []
    for _ in range(200 * n + 10_000):
        if len(out) == n:
            return out
        item = draw()
        if accept(item):
            out.append(item)
    if len(out) < n:
        raise ValueError(f"Could not draw {n} {what}.")
    return out


def to_dataset(problems: Sequence[Problem], fmt: str = "prompt_completion") -> Dataset:
    """Rows in one of SFTTrainer's formats: "prompt_completion", "messages", "text" or "problems".

    "problems" rows carry `prompt`, `answer`, `steps` and the operands/operators (for step checks).
    """
    if fmt == "prompt_completion":
        rows = {"prompt": [p.prompt for p in problems], "completion": [p.completion for p in problems]}
    elif fmt == "messages":
        rows = {
            "messages": [
                [{"role": "user", "content": p.question}, {"role": "assistant", "content": p.completion}]
                for p in problems
            ]
        }
    elif fmt == "text":
        rows = {"text": [p.prompt + p.completion for p in problems]}
    elif fmt == "problems":
        rows = {
            "prompt": [p.prompt for p in problems],
            "answer": [p.answer for p in problems],
            "steps": [p.steps for p in problems],
            "operands": [list(p.operands) for p in problems],
            "operators": ["".join(p.operators) for p in problems],
        }
    else:
        raise ValueError(f"Unknown format {fmt!r}: use prompt_completion, messages, text or problems.")
    return Dataset.from_dict(rows)


def problem_from_row(row: dict) -> Problem:
    return Problem(tuple(row["operands"]), tuple(row["operators"]))


@dataclass
class ToySplits:
    train: Dataset
    heldout_sft: Dataset
    heldout_problems: Dataset


def make_splits(
    n_train: int = 20_000,
    train_steps: Sequence[int] = (1, 2, 3),
    train_weights: Sequence[float] | None = None,
    n_heldout_sft: int = 256,
    n_heldout_problems: int = 64,
    heldout_steps: Sequence[int] = (1, 2, 3),
    fmt: str = "prompt_completion",
    seed: int = 0,
    unique_train: bool = False,
    exclude: set[str] | None = None,
) -> ToySplits:
    """Train rows, held-out SFT rows (for loss) and held-out problems (for sampling), disjoint by prompt.

    `exclude` keeps other prompts (e.g. another split's held-out set) out of everything made here.
    """
    task = ArithmeticTask(seed=seed)
    exclude = set(exclude or ())
    heldout = task.problems(n_heldout_sft + n_heldout_problems, heldout_steps, exclude=exclude, unique=True)
    heldout_sft, heldout_problems = heldout[:n_heldout_sft], heldout[n_heldout_sft:]
    exclude |= {p.prompt for p in heldout}
    train = task.problems(n_train, train_steps, train_weights, exclude=exclude, unique=unique_train)
    return ToySplits(
        train=to_dataset(train, fmt),
        heldout_sft=to_dataset(heldout_sft, fmt),
        heldout_problems=to_dataset(heldout_problems, "problems"),
    )


class StepVerifier:
    """The strict toy verifier (see `steps_are_correct`); rows need operands/operators columns."""

    def check(self, completions, rows) -> list[bool]:
        return [steps_are_correct(c, problem_from_row(r)) for c, r in zip(completions, rows, strict=True)]
