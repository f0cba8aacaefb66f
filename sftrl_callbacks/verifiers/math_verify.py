"""`MathVerifyVerifier`: math-verify's `parse` + `verify` in isolated worker processes (see `pool`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .pool import IsolatedPool


def _math_verify_one(completion: str, reference: str) -> bool:
    from math_verify import parse, verify

    gold = parse(reference)
    answer = parse(completion)
    return bool(gold) and bool(answer) and bool(verify(gold, answer))


class MathVerifyVerifier:
    """Compares math-verify's parse of the completion with that of the row's `answer_column`, in isolated worker
    processes (`IsolatedPool`): a parse or check that hangs, crashes or passes `memory_mb` counts as wrong."""

    bounded = True  # each completion has its own timeout in a worker process

    def __init__(
        self, answer_column: str = "answer", workers: int = 2, timeout_s: float = 5.0, memory_mb: int | None = 2048
    ) -> None:
        try:
            import math_verify  # noqa: F401
        except ImportError as err:
            raise ImportError("MathVerifyVerifier needs math-verify: pip install 'sftrl-callbacks[math]'") from err
        self.answer_column = answer_column
        self.pool = IsolatedPool(_math_verify_one, workers, timeout_s, memory_mb, preload=["math_verify"])

    def check(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        items = [(c, str(r[self.answer_column])) for c, r in zip(completions, rows, strict=True)]
        return [bool(r) for r in self.pool.map(items)]

    def close(self) -> None:
        self.pool.close()
