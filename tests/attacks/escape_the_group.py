"""Leaving its process group and session so that a group kill misses it, then lingering."""

import os
import time


def has_close_elements(numbers, threshold):
    for attempt in (os.setsid, lambda: os.setpgid(0, 0)):
        try:
            attempt()
        except OSError:
            pass
    time.sleep(3600)
