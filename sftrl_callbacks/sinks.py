"""Where results go: the `MetricSink` protocol, its JSONL and trainer-log sinks (trackers: `trackers.py`).

A sink takes scalars (`log`), events (`event`: a flag, a stop, a chosen checkpoint), run summaries
(`summary`) and media (`media`: a `Table`, optionally drawn as a line chart, or an `Image`). Only
`log` is required: a sink without one of the other methods simply does not receive that kind.
Every metric sits on the trainer's global-step axis; the JSONL file keeps everything when a tracker is
down or absent.

The JSONL sink appends whole lines in one write (so `io.read_jsonl` can skip a torn last line); a non-finite
value is written as `null` with the reason (`"invalid": "nan"`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .io import atomic_file, count_lines, invalid_reason, json_safe, plain

logger = logging.getLogger("sftrl_callbacks")


@dataclass(frozen=True)
class Table:
    """A small table; `line=(x, y)` also draws it as a line chart where the sink can."""

    columns: list[str]
    rows: list[list[Any]]
    line: tuple[str, str] | None = None
    title: str = ""


@dataclass(frozen=True)
class Image:
    path: str
    caption: str = ""


@runtime_checkable
class MetricSink(Protocol):
    """Required: `log`. Optional (looked up with getattr): `event(step, name, detail="", alert=False,
    **payload)`, `summary(values)` and `media(step, name, item)` with a `Table` or an `Image`."""

    def log(self, step: int, metrics: Mapping[str, float | None], **context: Any) -> None:
        """Record `metrics` at trainer step `step`; `context` describes how they were measured."""
        ...


class JsonlSink:
    """Appends one JSON object a metric to `path`: {"step", "name", "value", "time", ...context}.

    `lines` counts the whole lines the file holds, so a resumed run can cut it back to what its
    checkpoint had seen (`truncate`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.lines = count_lines(self.path)

    def _append(self, records: Sequence[Mapping[str, Any]]) -> None:
        text = "".join(json.dumps(r, default=str, allow_nan=False) + "\n" for r in records)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)  # one write of whole lines
        self.lines += len(records)

    def log(self, step: int, metrics: Mapping[str, float | None], **context: Any) -> None:
        now = time.time()
        records = []
        for name, value in metrics.items():
            record = {"step": int(step), "name": name, "value": plain(value), "time": now, **json_safe(context)}
            reason = invalid_reason(value)
            if reason:
                record["invalid"] = reason
            records.append(record)
        self._append(records)

    def event(self, step: int, name: str, detail: str = "", alert: bool = False, **payload: Any) -> None:
        """A non-scalar event (a flag, a stop): `value` is None, the details in the payload."""
        record = {"step": int(step), "name": name, "value": None, "time": time.time(), "detail": detail, "alert": alert}
        self._append([{**record, **json_safe(payload)}])

    def truncate(self, lines: int) -> None:
        """Keep the first `lines` lines (what a checkpoint had seen); the resumed run writes the rest again."""
        if not os.path.exists(self.path):
            self.lines = 0
            return
        with open(self.path, encoding="utf-8") as f:
            kept = f.read().split("\n")[:lines]
        with atomic_file(self.path) as f:
            f.write("".join(line + "\n" for line in kept))
        self.lines = len(kept)


class TrainerLogSink:
    """Queues metrics until the next `on_log`, where the callbacks merge them into the trainer's log."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, dict[str, Any]]] = []

    def log(self, step: int, metrics: Mapping[str, float | None], **context: Any) -> None:
        self.pending.append((int(step), {k: plain(v) for k, v in metrics.items()}))

    def drain(self) -> list[tuple[int, dict[str, Any]]]:
        out, self.pending = self.pending, []
        return out


@dataclass
class FailureLog:
    """Logs the first failure of each place loudly (with where and why), then at most once a minute."""

    interval_s: float = 60.0
    _seen: dict[str, list[float]] = field(default_factory=dict)  # key -> [count, last logged time]

    def report(self, key: str, where: str, err: BaseException) -> None:
        count, last = self._seen.get(key, [0, -math.inf])
        count += 1
        now = time.monotonic()
        if count == 1:
            logger.error(
                "sftrl: %s failed (%s: %s); the other outputs and training go on", where, type(err).__name__, err
            )
            last = now
        elif now - last >= self.interval_s:
            logger.error("sftrl: %s failed again (%d failures so far): %s", where, count, err)
            last = now
        self._seen[key] = [count, last]
