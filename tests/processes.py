"""Child processes of the tests: a free port for torchrun, runs started side by side, and DeepSpeed set up
without the CPU kernel it would compile."""

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


def skip_deepspeed_shm_build() -> None:
    """DeepSpeed compiles a shared-memory all-reduce kernel for CPU ranks when it sets up its process group
    (about 40 s on 2 cores, once per machine). Only its tensor-parallel inference all-reduce uses that kernel;
    ZeRO-3's collectives, and the library's, go through the gloo process group either way."""
    import importlib

    backend = importlib.import_module("deepspeed.comm.torch")  # `deepspeed.comm.torch` is the torch module
    assert hasattr(backend, "build_shm_op"), "DeepSpeed moved build_shm_op: update this patch"
    backend.build_shm_op = lambda: None
