"""`IsolatedPool`: untrusted text parsed in worker processes, each call with a timeout and a memory cap.

math-verify relies on SIGALRM, which only works on a process's main thread, and sympy can hang or exhaust memory on
model output, so every check runs in a worker's main thread; a check that hangs, crashes or blows the memory cap
counts as not verified and its worker is replaced. Training never waits longer than the timeout for one completion.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from typing import Any


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
