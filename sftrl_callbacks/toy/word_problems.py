"""Multi-step arithmetic word problems in real text, for pretrained chat models.

Rows are in TRL's conversational prompt-completion format: the prompt is a user turn, the completion an
assistant turn with a worked solution that ends in `\\boxed{answer}`, so math-verify can check samples.

    "Mia has 7 marbles. She buys 5 more marbles. Then she gives away 3 marbles. How many marbles does
     Mia have now? Put the final answer in \\boxed{}."
    -> "Mia starts with 7 marbles.\\nShe buys 5 more: 7 + 5 = 12.\\nShe gives away 3: 12 - 3 = 9.\\n
        The answer is \\boxed{9}."

With `style="reasoning"` the assistant thinks first, as reasoning models do: the working inside `<think>...</think>`
(in about a third of the problems a wrong draft answer, `\\boxed{}` included, then a check that corrects it), then
the answer after the block:

    -> "<think>\nMia starts with 7 marbles.\nShe buys 5 more: 7 + 5 = 12.\n...So the answer is \\boxed{10}.\n
        Wait, let me check: 12 - 3 = 9, not 10.\n</think>\nThe answer is \\boxed{9}."

A problem is its numbers (start, amounts, answer), whatever the name, item and wording: held-out rows
and pass@k problems share none with the training rows, so a reworded training problem cannot leak into
what measures generalization.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import Dataset

from .task import ToySplits, draw_until

NAMES = [
    ("Mia", "She"),
    ("Tom", "He"),
    ("Ava", "She"),
    ("Leo", "He"),
    ("Zoe", "She"),
    ("Sam", "He"),
    ("Ivy", "She"),
    ("Max", "He"),
    ("Ana", "She"),
    ("Ben", "He"),
]
ITEMS = ["apples", "marbles", "stickers", "pencils", "books", "cards", "coins", "shells", "stamps", "cookies"]
GAIN = [
    ("buys {x} more {item}", "buys {x} more"),
    ("finds {x} {item}", "finds {x}"),
    ("gets {x} {item} from a friend", "gets {x} from a friend"),
]
LOSS = [("gives away {x} {item}", "gives away {x}"), ("loses {x} {item}", "loses {x}"), ("uses {x} {item}", "uses {x}")]
INSTRUCTION = "Put the final answer in \\boxed{}."


@dataclass(frozen=True)
class WordProblem:
    name: str
    pronoun: str
    item: str
    start: int
    amounts: tuple[int, ...]  # signed: a gain or a loss per step
    phrasing: tuple[int, ...]  # which GAIN / LOSS phrase each step uses
    draft_error: int = 0  # reasoning style: a wrong draft answer this far off, then its correction (0: none)

    @property
    def key(self) -> tuple[int, ...]:
        """The numbers the question states, then the answer: two problems with the same key are taken to be the
        same problem (in other words, or with gains and losses swapped)."""
        return (self.start, *map(abs, self.amounts), int(self.answer))

    @property
    def steps(self) -> int:
        return len(self.amounts)

    @property
    def answer(self) -> str:
        return str(self.start + sum(self.amounts))

    def _phrases(self, i: int) -> tuple[str, str]:
        x = self.amounts[i]
        long, short = (GAIN if x > 0 else LOSS)[self.phrasing[i]]
        return long.format(x=abs(x), item=self.item), short.format(x=abs(x))

    @property
    def question(self) -> str:
        sentences = [f"{self.name} has {self.start} {self.item}."]
        for i in range(self.steps):
            lead = self.pronoun if i == 0 else f"Then {self.pronoun.lower()}"
            sentences.append(f"{lead} {self._phrases(i)[0]}.")
        sentences.append(f"How many {self.item} does {self.name} have now? {INSTRUCTION}")
        return " ".join(sentences)

    @property
    def solution(self) -> str:
        lines, value = [f"{self.name} starts with {self.start} {self.item}."], self.start
        for i, x in enumerate(self.amounts):
            new = value + x
            lines.append(f"{self.pronoun} {self._phrases(i)[1]}: {value} {'+' if x > 0 else '-'} {abs(x)} = {new}.")
            value = new
        lines.append(f"The answer is \\boxed{{{value}}}.")
        return "\n".join(lines)

    @property
    def reasoning_solution(self) -> str:
        """The working inside a thinking block (with a wrong draft and its correction when `draft_error`), then the
        answer after it."""
        working = self.solution.split("\n")[:-1]
        if self.draft_error:
            last = working[-1].rsplit("= ", 1)[0]
            working[-1] = f"{last}= {int(self.answer) + self.draft_error}."
            working.append(f"So the answer is \\boxed{{{int(self.answer) + self.draft_error}}}.")
            working.append(f"Wait, let me check: {last.split(': ', 1)[-1]}= {self.answer}, not that.")
        thinking = "\n".join(working)
        return f"<think>\n{thinking}\n</think>\nThe answer is \\boxed{{{self.answer}}}."


def draw_problem(
    rng: random.Random, steps: int, max_start: int = 20, max_amount: int = 12, draft_rate: float = 0.0
) -> WordProblem:
    """A problem whose running value never goes below zero; with probability `draft_rate` its reasoning solution
    drafts a wrong answer first."""
    name, pronoun = rng.choice(NAMES)
    start = rng.randint(2, max_start)
    amounts, value = [], start
    for _ in range(steps):
        x = rng.randint(1, max_amount)
        if value > x and rng.random() < 0.5:
            x = -x
        amounts.append(x)
        value += x
    phrasing = tuple(rng.randrange(3) for _ in amounts)
    item = rng.choice(ITEMS)
    draft_error = rng.choice((-2, -1, 1, 2)) if draft_rate and rng.random() < draft_rate else 0
    return WordProblem(name, pronoun, item, start, tuple(amounts), phrasing, draft_error)


def _draw(
    rng: random.Random, n: int, steps: Sequence[int], taken: set[tuple[int, ...]], draft_rate: float = 0.0
) -> list[WordProblem]:
    def accept(p: WordProblem) -> bool:
        if p.key in taken:
            return False
        taken.add(p.key)
        return True

    def draw() -> WordProblem:
        return draw_problem(rng, rng.choice(list(steps)), draft_rate=draft_rate)

    return draw_until(n, draw, accept, f"distinct word problems with steps={list(steps)}")


def to_conversations(problems: Sequence[WordProblem], style: str = "plain") -> Dataset:
    """SFT rows: conversational prompt (user turn) and completion (assistant turn), plain or reasoning."""
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p.question}] for p in problems],
            "completion": [
                [{"role": "assistant", "content": p.reasoning_solution if style == "reasoning" else p.solution}]
                for p in problems
            ],
        }
    )


def to_problems(problems: Sequence[WordProblem]) -> Dataset:
    """pass@k rows: the chat prompt, the reference answer and the step count."""
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p.question}] for p in problems],
            "answer": [p.answer for p in problems],
            "steps": [p.steps for p in problems],
        }
    )


def make_word_problem_splits(
    n_train: int = 2000,
    n_heldout_sft: int = 64,
    n_heldout_problems: int = 32,
    steps: Sequence[int] = (1, 2, 3),
    seed: int = 0,
    style: str = "plain",
    draft_rate: float = 0.3,
) -> ToySplits:
    """Train rows, held-out SFT rows (loss) and held-out problems (pass@k), pairwise disjoint by their numbers
    (`WordProblem.key`). `style="reasoning"`: the SFT rows think in a `<think>` block first, a share `draft_rate`
    of them through a wrong draft answer and its correction.

    The held-out sets are drawn first, so they stay the same when `n_train` changes."""
    if style not in ("plain", "reasoning"):
        raise ValueError(f"style={style!r}: use 'plain' or 'reasoning'.")
    if not 0.0 <= draft_rate <= 1.0:
        raise ValueError(f"draft_rate={draft_rate!r}: must be in [0, 1].")
    rng = random.Random(seed)
    rate = draft_rate if style == "reasoning" else 0.0
    taken: set[tuple[int, ...]] = set()
    heldout_sft = _draw(rng, n_heldout_sft, steps, taken, rate)
    problems = _draw(rng, n_heldout_problems, steps, taken, rate)
    train = _draw(rng, n_train, steps, taken, rate)
    return ToySplits(
        train=to_conversations(train, style),
        heldout_sft=to_conversations(heldout_sft, style),
        heldout_problems=to_problems(problems),
    )
