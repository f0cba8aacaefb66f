"""Dying by signal: abort, a signal to itself, a segfault through ctypes."""

import ctypes
import os
import signal


def has_close_elements(numbers, threshold):
    try:
        os.kill(os.getpid(), signal.SIGKILL)
    except OSError:
        pass
    try:
        ctypes.string_at(0)
    finally:
        os.abort()
