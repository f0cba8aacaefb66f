"""`AnswerVerifier`: the text after `####` (or any regex group), exact or numeric match."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any


class AnswerVerifier:
    """Compares the last match of `pattern` in the completion with the row's `answer_column`."""

    def __init__(
        self,
        pattern: str = r"####\s*([^\n<#]+)",
        answer_column: str = "answer",
        numeric: bool = True,
        tolerance: float = 1e-6,
    ) -> None:
        self.regex = re.compile(pattern)
        if self.regex.groups < 1:
            raise ValueError("pattern needs one capture group around the answer.")
        self.answer_column = answer_column
        self.numeric = numeric
        self.tolerance = tolerance

    def extract(self, completion: str) -> str | None:
        matches = self.regex.findall(completion)
        if not matches:
            return None
        last = matches[-1]
        return (last[0] if isinstance(last, tuple) else last).strip()

    def check(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        return [self._one(c, str(r[self.answer_column])) for c, r in zip(completions, rows, strict=True)]

    def _one(self, completion: str, reference: str) -> bool:
        answer = self.extract(completion)
        if answer is None:
            return False
        if answer == reference.strip():
            return True
        if self.numeric:
            a, b = _number(answer), _number(reference)
            if a is not None and b is not None:
                return math.isclose(a, b, rel_tol=self.tolerance, abs_tol=self.tolerance)
        return False


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None
