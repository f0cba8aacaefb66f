"""Verifiers: is a sampled completion correct? A small `Verifier` protocol and three backends.

- `AnswerVerifier`: the text after `####` (or any regex group), exact or numeric match.
- `MathVerifyVerifier`: math-verify's `parse` + `verify` in worker processes with a per-call
  timeout and memory cap. math-verify relies on SIGALRM, which only works on a process's main
  thread, and sympy can hang or exhaust memory on model output, so every check runs in a worker's
  main thread; a check that hangs, crashes or blows the memory cap counts as incorrect and its
  worker is replaced. Training never waits longer than the timeout for one completion.
- `RewardFunctionVerifier`: any TRL reward function, thresholded.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Verifier(Protocol):
    def check(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        """One verdict per completion; `rows[i]` is the problem row of completion i (prompt, answer, ...)."""
        ...


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


# ---- isolated workers ------------------------------------------------------------------------
def _worker_main(conn, fn: Callable, memory_bytes: int | None) -> None:
    if memory_bytes:
        import resource

        # A forked worker inherits its parent's address space (torch alone maps GBs): cap the growth.
        limit = _address_space_bytes() + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        try:
            result = fn(*item)
        except BaseException:  # MemoryError, RecursionError, sympy errors: all count as "not verified"
            result = None
        conn.send(result)


def _address_space_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class IsolatedPool:
    """Runs `fn(*args)` in worker processes, each call with a timeout; a stuck worker is replaced.

    Workers are forked (spawn and forkserver would re-import the user's `__main__`, which breaks
    training scripts without an `if __name__ == "__main__"` guard); they are started at construction,
    before the trainer starts its threads, and only run the check function.
    """

    def __init__(
        self,
        fn: Callable,
        workers: int = 2,
        timeout_s: float = 5.0,
        memory_mb: int | None = 2048,
        preload: Sequence[str] = (),
    ) -> None:
        if workers < 1 or timeout_s <= 0:
            raise ValueError("workers must be >= 1 and timeout_s > 0.")
        self._ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        for module in preload:  # imported once here, inherited by every forked worker
            __import__(module)
        self.fn, self.timeout_s = fn, timeout_s
        self.memory_bytes = memory_mb * 2**20 if memory_mb else None
        self.replaced = 0
        self._consecutive_failures = 0
        self._workers = [self._start() for _ in range(workers)]

    def _start(self):
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, self.fn, self.memory_bytes), daemon=True)
        proc.start()
        child.close()
        return proc, parent

    def _replace(self, i: int) -> None:
        proc, conn = self._workers[i]
        proc.kill()
        proc.join(timeout=5)
        conn.close()
        self._workers[i] = self._start()
        self.replaced += 1
        self._consecutive_failures += 1
        if self._consecutive_failures > 20 * len(self._workers):
            raise RuntimeError("Verifier workers keep dying before answering; is the check function importable?")

    def map(self, items: Sequence[tuple]) -> list[Any]:
        """Results in order; None for a call that raised, timed out or killed its worker."""
        results: list[Any] = [None] * len(items)
        todo = list(range(len(items)))[::-1]
        busy: dict[int, tuple[int, float]] = {}  # worker -> (item, started)
        while todo or busy:
            for w in range(len(self._workers)):
                if w not in busy and todo:
                    i = todo.pop()
                    try:
                        self._workers[w][1].send(items[i])
                        busy[w] = (i, time.monotonic())
                    except (BrokenPipeError, OSError):
                        self._replace(w)
                        todo.append(i)
            for w, (i, started) in list(busy.items()):
                proc, conn = self._workers[w]
                if conn.poll(0.001):
                    try:
                        results[i] = conn.recv()
                        self._consecutive_failures = 0
                    except (EOFError, OSError):
                        self._replace(w)
                    del busy[w]
                elif not proc.is_alive() or time.monotonic() - started > self.timeout_s:
                    self._replace(w)
                    del busy[w]
        return results

    def close(self) -> None:
        for proc, conn in self._workers:
            try:
                conn.send(None)
            except OSError:
                pass
            proc.join(timeout=1)
            if proc.is_alive():
                proc.kill()
        self._workers = []

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _math_verify_one(completion: str, reference: str) -> bool:
    from math_verify import parse, verify

    gold = parse(reference)
    answer = parse(completion)
    return bool(gold) and bool(answer) and bool(verify(gold, answer))


class MathVerifyVerifier:
    """math-verify (`parse` + `verify`) in isolated worker processes (see module doc)."""

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


class RewardFunctionVerifier:
    """Turns a TRL reward function into a verifier: correct when reward >= `threshold` (None = wrong).

    The function is called as TRL calls it: `reward_func(prompts=, completions=, completion_ids=None,
    **columns)` where every other column of the problem rows arrives as a keyword list.
    """

    def __init__(
        self, reward_func: Callable[..., list[float | None]], threshold: float = 1.0, prompt_column: str = "prompt"
    ) -> None:
        if not callable(reward_func):
            raise TypeError("reward_func must be callable.")
        self.reward_func, self.threshold, self.prompt_column = reward_func, threshold, prompt_column

    def check(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        columns = {k: [r[k] for r in rows] for k in (rows[0] if rows else {}) if k != self.prompt_column}
        rewards = self.reward_func(
            prompts=[r[self.prompt_column] for r in rows],
            completions=list(completions),
            completion_ids=None,
            **columns,
        )
        if len(rewards) != len(completions):
            raise ValueError(f"reward_func returned {len(rewards)} rewards for {len(completions)} completions.")
        return [r is not None and r >= self.threshold for r in rewards]


VERIFIERS: dict[str, Callable[..., Verifier]] = {
    "answer": AnswerVerifier,
    "math-verify": MathVerifyVerifier,
}


def make_verifier(spec: str | Verifier, **kwargs: Any) -> Verifier:
    """A verifier from a name ("answer", "math-verify", "toy-steps") or the object itself."""
    if not isinstance(spec, str):
        if not isinstance(spec, Verifier):
            raise TypeError(f"{type(spec).__name__} is not a Verifier: it needs check(completions, rows).")
        return spec
    if spec == "toy-steps":
        from .toy import StepVerifier

        return StepVerifier()
    if spec not in VERIFIERS:
        raise ValueError(
            f"Unknown verifier {spec!r}; choose one of {sorted([*VERIFIERS, 'toy-steps'])} or pass a Verifier object."
        )
    return VERIFIERS[spec](**kwargs)
