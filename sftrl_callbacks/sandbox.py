"""Model-written code, run where it can neither fool the grader nor reach anything else: the trusted side.

`SandboxedFunction(program, entry_point)` starts a fresh interpreter (`sandbox_child.py`, never a fork of this
process) with an empty environment, an empty working folder, no inherited descriptors and a session of its own;
the child locks itself in (see its module doc for the layers) before it reads the program. Calls go in as plain data
and come back as plain data (`sandbox_child.encode` / `decode`), so the tests, the expected values and the verdict
stay on this side. This side enforces the wall clock: past the deadline the child's process group is killed, and
replies are read up to a byte cap.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from . import sandbox_child
from .sandbox_child import Unencodable, decode, encode

ISOLATIONS = ("strict", "process")
MAX_REPLY_BYTES = 16 * 2**20


class SandboxError(Exception):
    """The program failed in a way no test can accept: it did not load, timed out, died or returned non-data."""


class SandboxUnavailable(RuntimeError):
    """The isolation asked for cannot be set up on this machine."""


def _builtin_exception(name: str) -> type[BaseException]:
    found = getattr(builtins, name, None)
    if isinstance(found, type) and issubclass(found, Exception):
        return found
    return RuntimeError


class SandboxedFunction:
    """One program in its own sandboxed interpreter, its `entry_point` callable from here with plain data.

    Calling it returns the function's value; an exception the function raised comes back as the builtin exception
    of that name (RuntimeError for others), so tests that expect one work; anything else (no reply by the deadline,
    death, a value that is not plain data) raises `SandboxError`. Use it as a context manager: leaving kills it.
    """

    def __init__(
        self,
        program: str,
        entry_point: str,
        deadline: float,
        memory_mb: int = 512,
        isolation: str = "strict",
    ) -> None:
        self.deadline = deadline
        self.layers: list[str] = []
        self._calls = 0
        self._buffer = b""
        self._workdir = tempfile.mkdtemp(prefix="sftrl-sandbox-")
        os.chmod(self._workdir, 0o755)  # `nobody` may stand in it; Landlock keeps it from writing there
        cpu_s = max(1, int(deadline - time.time()) + 1)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", sandbox_child.__file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=self._workdir,
                env={},
                close_fds=True,
                start_new_session=True,
            )
        except OSError:  # no process to close(): the folder goes here
            shutil.rmtree(self._workdir, ignore_errors=True)
            raise
        setup = {
            "program": program,
            "entry_point": entry_point,
            "isolation": isolation,
            "limits": {"memory_mb": memory_mb, "cpu_s": cpu_s},
        }
        try:
            self._send(setup)
            reply = self._receive()
        except BaseException:
            self.close()
            raise
        if "error" in reply:
            self.close()
            error = str(reply["error"])
            if error.startswith("isolation:"):
                raise SandboxUnavailable(error)
            raise SandboxError(error)
        self.layers = list(reply.get("layers", []))

    def __call__(self, *args: Any) -> Any:
        self._calls += 1
        try:
            payload = encode(list(args))
        except Unencodable as err:
            raise SandboxError(f"an argument cannot cross the boundary: {err}") from None
        self._send({"id": self._calls, "args": payload})
        reply = self._receive()
        if reply.get("id") != self._calls:
            raise SandboxError("a reply out of order")
        if "raised" in reply:
            raise _builtin_exception(str(reply["raised"]))(str(reply.get("message", ""))[:200])
        if "error" in reply:
            raise SandboxError(str(reply["error"])[:300])
        try:
            return decode(reply["value"])
        except (Unencodable, KeyError) as err:
            raise SandboxError(f"the reply is not plain data: {err}") from None

    def _send(self, message: dict) -> None:
        try:
            self._proc.stdin.write((json.dumps(message) + "\n").encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise SandboxError("the program exited") from None

    def _receive(self) -> dict:
        out = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = self.deadline - time.time()
            if left <= 0:
                raise SandboxError("timed out")
            ready, _, _ = select.select([out], [], [], left)
            if not ready:
                raise SandboxError("timed out")
            chunk = os.read(out, 1 << 16)
            if not chunk:
                raise SandboxError("the program exited")
            self._buffer += chunk
            if len(self._buffer) > MAX_REPLY_BYTES:
                raise SandboxError(f"a reply over {MAX_REPLY_BYTES >> 20} MiB")
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            reply = json.loads(line)
        except (ValueError, RecursionError):
            raise SandboxError("a reply that is not JSON") from None
        if not isinstance(reply, dict):
            raise SandboxError("a reply that is not a message")
        return reply

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        for stream in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self._proc.wait()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> SandboxedFunction:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def probe_isolation(isolation: str = "strict") -> list[str]:
    """The layers a sandbox gets here, or `SandboxUnavailable` naming what is missing and the ways out."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation={isolation!r}: use one of {ISOLATIONS}.")
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"the code sandbox runs on Linux only (this is {sys.platform}).")
    try:
        with SandboxedFunction("def f():\n    return 1\n", "f", time.time() + 30, isolation=isolation) as probe:
            if probe() != 1:
                raise SandboxUnavailable("the sandbox probe returned a wrong value")
            return probe.layers
    except SandboxUnavailable as err:
        weaker = (
            " or opt in to process limits and seccomp without Landlock, knowingly: verifier_options="
            "{'isolation': 'process'}"
            if isolation == "strict"
            else ""
        )
        raise SandboxUnavailable(
            f"The code verifier cannot isolate model code here ({str(err).removeprefix('isolation: ')}): it needs "
            f"Linux >= 5.13 with Landlock enabled (lsm=landlock) and seccomp on x86_64{weaker}."
        ) from None
    except SandboxError as err:
        raise SandboxUnavailable(f"The code sandbox does not start here: {err}.") from None
