"""Files that a crash mid-write leaves readable: files and folders that land all at once (built under a
temporary name, then renamed), JSONL appended as whole lines in one write and read back skipping a torn last
line. Non-finite values are written as `null` (JSON has no NaN), never as bare NaN.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any

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


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """An open file that lands at `path` all at once: written to a temporary file beside it, renamed over
    `path` when the block ends (readers see the old or the new file, never half of one), removed on an error."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[str]:
    """A path beside `path` to build a folder at (the block creates it); renamed to `path`, replacing what was
    there, when the block ends, and removed on an error: a crash never leaves a half-built folder at `path`."""
    path = os.fspath(path)
    partial = path + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(partial, path)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    """JSON through `atomic_file`, with non-finite numbers written as null."""
    with atomic_file(path) as f:
        json.dump(json_safe(data), f, indent=indent, allow_nan=False, default=str)


def series_to_json(points: Iterable[tuple[int, float]]) -> list[list]:
    """A metric's (step, value) points as JSON rows `[step, value]` (a NaN becomes null when written)."""
    return [[int(step), value] for step, value in points]


def series_from_json(rows: Iterable[Sequence]) -> list[tuple[int, float]]:
    """`series_to_json` read back: null is NaN again."""
    return [(int(step), math.nan if value is None else float(value)) for step, value in rows]


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
