"""Starting programs: a shell, the interpreter again, through subprocess, os.system, os.exec, multiprocessing."""

import multiprocessing
import os
import subprocess
import sys


def has_close_elements(numbers, threshold):
    escaped = []
    for attempt in (
        lambda: subprocess.run(["/bin/sh", "-c", "echo escaped"], capture_output=True).stdout,
        lambda: os.system("echo escaped"),
        lambda: subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True).stdout,
        lambda: multiprocessing.Process(target=print).start(),
        lambda: os.posix_spawn("/bin/true", ["/bin/true"], {}),
    ):
        try:
            escaped.append(repr(attempt()))
        except Exception as err:
            escaped.append(type(err).__name__)
    if any(e.startswith(("b'", "0", "None")) for e in escaped):
        raise RuntimeError(f"escaped: {escaped}")
    os.execv("/bin/sh", ["/bin/sh", "-c", "true"])
