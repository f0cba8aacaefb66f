"""Grading one problem's completions: the reasoning format's answer regions -> the guarded verifier -> verdicts.

The one place where the reasoning rules meet a verifier, shared by `PassAtKCallback`, background jobs and `sftrl
eval` (through `measure_pass_at_k`), so every path grades the same way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .base import GuardedVerifier
from .reasoning import DEFAULT_DELIMITERS, ReasoningFormat

logger = logging.getLogger("sftrl_callbacks")

# Tags that look like a thinking block's: completions holding one while the configured delimiters never occur
# suggest the delimiters are not the model's.
_THINKING_TAG = re.compile(r"<\|?/?[A-Za-z_]*(?:think|thought|reason)[A-Za-z_]*\|?>", re.IGNORECASE)


@dataclass(frozen=True)
class Grade:
    """One completion's verdict and how its tokens split."""

    score: float
    correct: bool
    unfinished: bool = False  # ended inside a thinking block: no answer
    delimited: bool = False  # held a delimiter
    thinking_tokens: int = 0
    answer_tokens: int = 0


def grade(
    verifier: GuardedVerifier,
    completions: Sequence[str],
    n_tokens: Sequence[int],
    row: Mapping[str, Any],
    threshold: float,
    reasoning: ReasoningFormat | None = None,
    prompt_opened: bool = False,
    count_tokens: Callable[[list[str]], list[int]] | None = None,
) -> list[Grade]:
    """Grades of `completions` (all of one problem, `row`): the verifier sees each answer region, a completion that
    ended inside a thought is wrong without a call, and a verifier with `reads_answer_region = False` sees the
    whole completion. `count_tokens` (the tokenizer's encoder, lengths only) splits `n_tokens` into thinking and
    answer tokens."""
    if reasoning is None:
        scores = verifier.check(list(completions), [row] * len(completions))
        return [Grade(s, s >= threshold, answer_tokens=n) for s, n in zip(scores, n_tokens)]
    regions = [reasoning.split(text, prompt_opened) for text in completions]
    if verifier.reads_answer_region:
        answered = [i for i, region in enumerate(regions) if region.has_answer]
        got = verifier.check([regions[i].answer for i in answered], [row] * len(answered))
        scores = [0.0] * len(completions)
        for i, score in zip(answered, got):
            scores[i] = score
    else:
        scores = verifier.check(list(completions), [row] * len(completions))
    thinking = [0] * len(completions)
    split = [i for i, region in enumerate(regions) if region.thinking and not region.unfinished]
    if split and count_tokens is not None:
        for i, count in zip(split, count_tokens([regions[i].thinking for i in split])):
            thinking[i] = min(count, n_tokens[i])
    for i, region in enumerate(regions):
        if region.unfinished:
            thinking[i] = n_tokens[i]
    return [
        Grade(
            score,
            score >= threshold and (region.has_answer or not verifier.reads_answer_region),
            region.unfinished,
            region.delimited,
            think,
            n - think,
        )
        for score, region, think, n in zip(scores, regions, thinking, n_tokens)
    ]


def warn_if_unseen(
    reasoning: ReasoningFormat, completions: Sequence[str], prompts_opened: int, where: str
) -> str | None:
    """The warning line for a measurement in which the delimiters never occurred (None when they did, or when the
    default pair is simply not used by a plain model: then nothing in the completions looks like a thinking tag)."""
    if prompts_opened or any(reasoning.open in c or reasoning.close in c for c in completions):
        return None
    default = (reasoning.open, reasoning.close) == DEFAULT_DELIMITERS
    tags = list(dict.fromkeys(m[0] for c in completions for m in _THINKING_TAG.finditer(c)))
    if default and not tags:
        return None
    starts = list(dict.fromkeys(c[:40] for c in completions if c))[:3]
    seen = f"; the completions hold {', '.join(map(repr, tags[:4]))}" if tags else ""
    line = (
        f"sftrl: {where}: the reasoning delimiters {reasoning.open!r} / {reasoning.close!r} occur in none of the "
        f"{len(completions)} completions, which were graded whole{seen}; they start with "
        f"{', '.join(map(repr, starts)) or 'nothing'}: set reasoning_delimiters to the model's own tags (or None)"
    )
    logger.warning(line)
    return line


def describe_delimiter_tokens(reasoning: ReasoningFormat, tokenizer: Any) -> dict[str, int]:
    """How many tokens each delimiter takes with `tokenizer` (1 when it is in the vocabulary as one token)."""
    return {d: len(tokenizer(d, add_special_tokens=False)["input_ids"]) for d in (reasoning.open, reasoning.close)}
