"""Files that a crash mid-write leaves readable: JSON written atomically (temp file + rename), JSONL
appended as whole lines in one write and read back skipping a torn last line. Non-finite values are
written as `null` (JSON has no NaN), never as bare NaN.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("sftrl_callbacks")


def plain(value: Any) -> Any:
    """A JSON-safe scalar: tensors and numpy numbers unwrapped, NaN / inf turned into None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def invalid_reason(value: Any) -> str | None:
    """ "nan" / "inf" / "-inf" for a non-finite number, else None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return None


def json_safe(data: Any) -> Any:
    """Replace non-finite floats (anywhere in nested dicts / lists) by None, so the JSON is valid."""
    if isinstance(data, Mapping):
        return {str(k): json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return plain(data)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    """Write JSON to a temp file beside `path`, then rename: readers see the old or the new file, never half."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(json_safe(data), f, indent=indent, allow_nan=False, default=str)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL file; a torn last line (a crash mid-write) is skipped with a warning."""
    if not os.path.isfile(path):  # a device or a folder in its place would be read forever or fail obscurely
        raise FileNotFoundError(f"{os.fspath(path)} is not a regular file")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:  # no newline after it: it was being written when the writer died
                logger.warning("%s: skipping a torn last line (%d characters)", os.fspath(path), len(line))
                continue
            raise ValueError(f"{os.fspath(path)} line {i + 1} is not valid JSON: {err}") from err
    return records


def count_lines(path: str) -> int:
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as f:
        return f.read().count("\n")
