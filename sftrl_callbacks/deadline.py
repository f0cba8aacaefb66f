"""A wall-clock bound on a measurement, enforced from outside the code it bounds.

A sampling engine can stop returning (seen: vLLM's scheduler spinning at full CPU after a failed call), and a
time budget checked inside the measurement cannot help then. A watchdog thread raises `MeasurementTimeout` in
the measuring thread when the bound passes; the exception lands at the next Python instruction that thread runs,
which is where a spinning scheduler or a generate loop spends its time. A thread blocked inside one native call
that never returns is out of any in-process bound's reach: `background=True` measures in a separate process,
which its parent kills at the same bound.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class MeasurementTimeout(Exception):
    """A measurement ran past its wall-clock bound (`measurement_timeout_s`)."""


class _Interrupt(BaseException):
    """What the watchdog raises in the measuring thread: a BaseException, so `except Exception` in the bounded code
    (an engine's own error handling) does not swallow it."""

    def __str__(self) -> str:
        return "interrupted at the measurement's wall-clock bound (measurement_timeout_s)"


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    # None clears an exception set earlier and not yet raised.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None)


def run_with_deadline(fn: Callable[..., T], seconds: float | None, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in this thread, interrupted with `MeasurementTimeout` after `seconds` (None: unbounded)."""
    if seconds is None:
        return fn(*args, **kwargs)
    target = threading.get_ident()
    lock, finished = threading.Lock(), threading.Event()

    def watch() -> None:
        if finished.wait(seconds):
            return
        while True:  # again every second, in case the bounded code caught it and went on
            with lock:
                if finished.is_set():
                    return
                _raise_in(target, _Interrupt)
            if finished.wait(1.0):
                return

    def stop() -> None:
        with lock:
            finished.set()
            _raise_in(target, None)  # one set just as fn returned must not land in the caller

    watcher = threading.Thread(target=watch, name="sftrl-deadline", daemon=True)
    watcher.start()
    try:
        try:
            return fn(*args, **kwargs)
        finally:
            try:
                stop()
            except _Interrupt:  # landed on the way into stop(): nothing can be set after it
                stop()
            watcher.join()
    except _Interrupt:
        raise MeasurementTimeout(f"still running after its {seconds:g} s bound (measurement_timeout_s)") from None
