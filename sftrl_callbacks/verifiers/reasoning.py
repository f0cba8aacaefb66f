"""The reasoning format: where a completion's thinking ends and its answer begins. Pure Python, no torch.

Every verifier grades the *answer region* only (docs/pass-at-k.md#reasoning-models has the table these rules
give, and tests/test_reasoning.py holds it row by row):

- The answer region is the text after the last closing delimiter; a completion with no delimiter at all is all
  answer.
- Blocks nest: an opening delimiter raises the depth, a closing one lowers it (never below 0). A completion that
  ends at depth > 0 ended inside a thought: it gave no answer, it is wrong, and it counts as an unfinished thought
  (whatever it wrote inside the block, e.g. a `\\boxed{}` draft).
- Whether the prompt opened the block (chat templates of R1 distills and Qwen3 thinking models end their generation
  prompt with `<think>`) is read once per prompt from the rendered prompt (`prompt_opens_block`), never guessed from
  a completion: such a completion starts at depth 1, so it needs a `</think>` to give an answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_DELIMITERS = ("<think>", "</think>")


@dataclass(frozen=True)
class Region:
    """One completion split by the reasoning format: `thinking` is everything before the answer region (the
    delimiters included), `answer` the text after the last closing delimiter (None: the thought never ended)."""

    thinking: str
    answer: str | None
    unfinished: bool
    delimited: bool  # a delimiter occurs in the completion

    @property
    def has_answer(self) -> bool:
        return self.answer is not None


@dataclass(frozen=True)
class ReasoningFormat:
    """A pair of thinking delimiters, e.g. `<think>` / `</think>` or `<|begin_of_thought|>` / `<|end_of_thought|>`."""

    open: str = DEFAULT_DELIMITERS[0]
    close: str = DEFAULT_DELIMITERS[1]

    def __post_init__(self) -> None:
        pair = [self.open, self.close]
        if not self.open or not self.close:
            raise ValueError(
                f"reasoning_delimiters={pair!r}: give two non-empty strings, e.g. ['<think>', '</think>']."
            )
        if self.open == self.close:
            raise ValueError(f"reasoning_delimiters={pair!r}: the opening and closing delimiters must differ.")

    @classmethod
    def from_delimiters(cls, delimiters: Sequence[str] | None) -> ReasoningFormat | None:
        """A format from a config's `reasoning_delimiters` ([open, close]; None, [] or [None] - `none` on the command
        line - mean plain completions)."""
        if not delimiters or list(delimiters) == [None]:
            return None
        if len(delimiters) != 2 or not all(isinstance(d, str) for d in delimiters):
            raise ValueError(
                f"reasoning_delimiters={list(delimiters)!r}: give two strings, [open, close], or None for plain models."
            )
        return cls(delimiters[0], delimiters[1])

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Raise `ValueError("<Config>.reasoning_delimiters=...: ...")` when a config's delimiters make no format."""
        try:
            cls.from_delimiters(config.reasoning_delimiters)
        except ValueError as err:
            raise ValueError(f"{type(config).__name__}.{err}") from None

    def _pattern(self) -> re.Pattern:
        # the longer delimiter first, so that one containing the other is matched whole
        parts = sorted((self.open, self.close), key=len, reverse=True)
        return re.compile("|".join(map(re.escape, parts)))

    def depth_after(self, text: str, depth: int = 0) -> int:
        """The block depth at the end of `text`, starting from `depth`."""
        for match in self._pattern().finditer(text):
            depth = depth + 1 if match[0] == self.open else max(depth - 1, 0)
        return depth

    def split(self, completion: str, prompt_opened: bool = False) -> Region:
        """Where `completion`'s answer region begins (see the module doc)."""
        depth, answer_start, delimited = int(prompt_opened), 0, False
        for match in self._pattern().finditer(completion):
            delimited = True
            if match[0] == self.open:
                depth += 1
            else:
                depth = max(depth - 1, 0)
                answer_start = match.end()
        if depth > 0:
            return Region(completion, None, True, delimited)
        return Region(completion[:answer_start], completion[answer_start:], False, delimited)

    def thinking_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of `text` inside thinking blocks, delimiters included (for held-out loss by token class);
        a block still open at the end runs to the end of the text."""
        spans, depth, start = [], 0, 0
        for match in self._pattern().finditer(text):
            if match[0] == self.open:
                if depth == 0:
                    start = match.start()
                depth += 1
            elif depth > 0:
                depth -= 1
                if depth == 0:
                    spans.append((start, match.end()))
        if depth > 0:
            spans.append((start, len(text)))
        return spans

    def prompt_opens_block(self, rendered_prompt: str) -> bool:
        """Whether the prompt, as the model sees it (chat template and generation prompt applied), leaves a block
        open, so that the completion continues a thought."""
        return self.depth_after(rendered_prompt) > 0
