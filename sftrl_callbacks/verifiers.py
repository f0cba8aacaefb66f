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

import logging
import math
import multiprocessing as mp
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger("sftrl_callbacks")


@runtime_checkable
class Verifier(Protocol):
    """Anything with `check`. A verifier that limits its own time per call sets `bounded = True`
    (like `MathVerifyVerifier`); the others are called under `PassAtKConfig.verifier_timeout_s`."""

    def check(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        """One verdict per completion; `rows[i]` is the problem row of completion i (prompt, answer, ...)."""
        ...


class VerifierOutputError(ValueError):
    """A verifier returned something other than one True/False (or 1/0) per completion."""


def check_verdicts(verifier: Verifier, verdicts: Any, expected: int) -> list[bool]:
    """`verdicts` as a list of bools, or a `VerifierOutputError` that names the verifier and the fault."""
    name = type(verifier).__name__
    if isinstance(verdicts, (str, bytes, Mapping, set)) or not hasattr(verdicts, "__len__"):
        raise VerifierOutputError(
            f"Verifier {name}.check returned a {type(verdicts).__name__}; return a list with one bool per completion."
        )
    if len(verdicts) != expected:
        raise VerifierOutputError(
            f"Verifier {name}.check returned {len(verdicts)} verdicts for {expected} completions; "
            "return exactly one bool per completion, in order."
        )
    out = []
    for i, verdict in enumerate(verdicts):
        if isinstance(verdict, (bool, np.bool_)):
            out.append(bool(verdict))
        elif isinstance(verdict, (int, float, np.integer, np.floating)) and verdict in (0, 1):
            out.append(bool(verdict))
        else:
            raise VerifierOutputError(
                f"Verifier {name}.check returned {verdict!r} ({type(verdict).__name__}) for completion {i}; "
                "return True / False (or 1 / 0) per completion."
            )
    return out


class GuardedVerifier:
    """Calls a verifier with its output checked and, unless it is `bounded`, with a time limit.

    A call that takes longer than `timeout_s` counts as wrong for all its completions and is logged;
    Python cannot stop the thread it runs in, so while that call is still running every later call
    counts as wrong at once instead of starting another (a verifier that can spin forever should
    bound itself, as `MathVerifyVerifier` does with worker processes). `timeout_s=None` calls the
    verifier in the caller's thread (needed for verifiers that use signals).
    """

    def __init__(self, verifier: Verifier, timeout_s: float | None) -> None:
        self.verifier, self.timeout_s = verifier, timeout_s
        self.name = type(verifier).__name__
        self.timeouts = 0  # completions counted wrong because their call timed out
        self._stuck: threading.Thread | None = None

    def check(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        if self.timeout_s is None or getattr(self.verifier, "bounded", False):
            return check_verdicts(self.verifier, self.verifier.check(completions, rows), len(completions))
        if self._stuck is not None and self._stuck.is_alive():
            self.timeouts += len(completions)
            return [False] * len(completions)
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["verdicts"] = self.verifier.check(completions, rows)
            except BaseException as err:  # re-raised in the caller's thread
                box["error"] = err

        worker = threading.Thread(target=call, name=f"sftrl-verifier-{self.name}", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            self._stuck = worker
            self.timeouts += len(completions)
            logger.error(
                "sftrl: verifier %s gave no answer within verifier_timeout_s=%g s; its completions count as wrong, "
                "and so do later ones until that call returns",
                self.name,
                self.timeout_s,
            )
            return [False] * len(completions)
        if "error" in box:
            raise box["error"]
        return check_verdicts(self.verifier, box["verdicts"], len(completions))


def probe_verifier(verifier: GuardedVerifier, row: Mapping[str, Any], where: str) -> None:
    """Check a verifier once, on an empty completion for `row`, before any training step depends on it."""
    before = verifier.timeouts
    try:
        verdict = verifier.check([""], [row])[0]
    except VerifierOutputError:
        raise
    except Exception as err:
        hint = ""
        if "thread" in str(err) and verifier.timeout_s is not None:  # e.g. math-verify's signal-based timeouts
            hint = " (it needs the main thread: pass verifier_timeout_s=None to call it there, without a time limit)"
        raise ValueError(
            f"Verifier {verifier.name} failed on the first problem of {where}: {type(err).__name__}: {err}{hint}"
        ) from err
    if verifier.timeouts > before:
        raise ValueError(
            f"Verifier {verifier.name} gave no answer within {verifier.timeout_s:g} s for one empty completion "
            f"({where}); make it faster or raise verifier_timeout_s."
        )
    if verdict:
        raise ValueError(
            f"Verifier {verifier.name} counts an empty completion as correct for the first problem of {where}: "
            "every pass@k would be inflated; check its logic (or a RewardFunctionVerifier's threshold)."
        )


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


class RewardFunctionVerifier:
    """Turns a TRL reward function into a verifier: correct when reward >= `threshold` (None = wrong).

    The function is called as TRL's GRPOTrainer calls it: `reward_func(prompts=, completions=,
    completion_ids=None, **columns)` where every other column of the problem rows arrives as a keyword
    list, and a completion is `[{"role": "assistant", "content": text}]` when its prompt is a
    conversation (plain text otherwise), so TRL's own reward functions (e.g. `accuracy_reward`) work.
    """

    def __init__(
        self, reward_func: Callable[..., list[float | None]], threshold: float = 1.0, prompt_column: str = "prompt"
    ) -> None:
        if not callable(reward_func):
            raise TypeError("reward_func must be callable.")
        self.reward_func, self.threshold, self.prompt_column = reward_func, threshold, prompt_column

    def check(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        columns = {k: [r[k] for r in rows] for k in (rows[0] if rows else {}) if k != self.prompt_column}
        prompts = [r[self.prompt_column] for r in rows]
        completions = [
            [{"role": "assistant", "content": c}] if isinstance(p, list) else c for c, p in zip(completions, prompts)
        ]
        rewards = self.reward_func(
            prompts=prompts,
            completions=completions,
            completion_ids=None,
            **columns,
        )
        if len(rewards) != len(completions):
            raise ValueError(f"reward_func returned {len(rewards)} rewards for {len(completions)} completions.")
        return [r is not None and r >= self.threshold for r in rewards]


# name -> factory(answer_column=..., **kwargs); other packages add theirs with `register_verifier` (the toy world
# registers "toy-steps" when `sftrl_callbacks.toy` is imported).
VERIFIERS: dict[str, Callable[..., Verifier]] = {
    "answer": AnswerVerifier,
    "math-verify": MathVerifyVerifier,
}


def register_verifier(name: str, factory: Callable[..., Verifier]) -> None:
    """Let `make_verifier(name)` (and so `PassAtKCallback(verifier=name)`, `sftrl eval --verifier name` and
    background jobs) build `factory(answer_column=..., **kwargs)`."""
    VERIFIERS[name] = factory


def make_verifier(spec: str | Verifier, answer_column: str = "answer", **kwargs: Any) -> Verifier:
    """A verifier from a registered name ("answer", "math-verify", "toy-steps", ...) or the object itself.

    Named verifiers that read an answer read `answer_column`; `kwargs` go to their constructor."""
    if not isinstance(spec, str):
        if not isinstance(spec, Verifier):
            raise TypeError(f"{type(spec).__name__} is not a Verifier: it needs check(completions, rows).")
        return spec
    if spec not in VERIFIERS:
        raise ValueError(
            f"Unknown verifier {spec!r}; choose one of {sorted(VERIFIERS)} or pass a Verifier object "
            "('toy-steps' is there once sftrl_callbacks.toy is imported)."
        )
    return VERIFIERS[spec](answer_column=answer_column, **kwargs)
