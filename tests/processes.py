"""Child processes of the tests: a free port for torchrun, and runs started side by side."""

import socket
import subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], log, **popen_kwargs) -> subprocess.Popen:
    """Start `command` with its stderr in the file `log`: a file, not a pipe, which nobody reads while it runs."""
    with open(log, "w") as stderr:
        return subprocess.Popen(command, stderr=stderr, **popen_kwargs)


def finish(proc: subprocess.Popen, log, timeout: float = 600) -> tuple[int, str]:
    """(exit code, stderr) of a process `start` started, once it has ended."""
    proc.wait(timeout=timeout)
    with open(log) as f:
        return proc.returncode, f.read()
