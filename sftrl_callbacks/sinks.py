"""Where metrics go: a small `MetricSink` protocol with W&B, JSONL and trainer-log sinks.

Every metric is a (step, name, value) triple on the trainer's global-step axis. W&B gets it under
its own name (`sftrl/...`) with `train/global_step` as the x-axis; the JSONL file keeps everything
when W&B is down or absent; the trainer-log sink hands it to `Trainer.log` consumers.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger("sftrl_callbacks")

STEP_METRIC = "train/global_step"


def is_wandb_available() -> bool:
    return importlib.util.find_spec("wandb") is not None


@runtime_checkable
class MetricSink(Protocol):
    def log(self, step: int, metrics: Mapping[str, float], **context: Any) -> None:
        """Record `metrics` at trainer step `step`; `context` describes how they were measured."""
        ...


class JsonlSink:
    """Appends one JSON object a metric to `path`: {"step", "name", "value", "time", ...context}."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)

    def log(self, step: int, metrics: Mapping[str, float], **context: Any) -> None:
        now = time.time()
        with open(self.path, "a", encoding="utf-8") as f:
            for name, value in metrics.items():
                record = {"step": int(step), "name": name, "value": _plain(value), "time": now, **context}
                f.write(json.dumps(record, default=str) + "\n")

    def event(self, step: int, name: str, **payload: Any) -> None:
        """A non-scalar event (a flag, a chosen checkpoint): `value` is None, details in the payload."""
        with open(self.path, "a", encoding="utf-8") as f:
            record = {"step": int(step), "name": name, "value": None, "time": time.time(), **payload}
            f.write(json.dumps(record, default=str) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class WandbSink:
    """Logs to the active W&B run (if any) on the `train/global_step` axis.

    It never passes an explicit `step=` to `wandb.log`: W&B drops points whose step is below its
    current one, and the trainer's own W&B callback advances that step on every log call.
    """

    def __init__(self) -> None:
        self._defined = False

    @property
    def run(self):
        if not is_wandb_available():
            return None
        import wandb

        return wandb.run

    def _define(self, run) -> None:
        if not self._defined:
            run.define_metric(STEP_METRIC)
            run.define_metric("sftrl/*", step_metric=STEP_METRIC, step_sync=True)
            self._defined = True

    def log(self, step: int, metrics: Mapping[str, float], **context: Any) -> None:
        run = self.run
        if run is None:
            return
        self._define(run)
        run.log({**{k: _plain(v) for k, v in metrics.items()}, STEP_METRIC: int(step)})

    def log_objects(self, step: int, objects: Mapping[str, Any]) -> None:
        """Tables and charts (already W&B objects) at `step`."""
        run = self.run
        if run is None:
            return
        self._define(run)
        run.log({**objects, STEP_METRIC: int(step)})

    def alert(self, title: str, text: str) -> None:
        run = self.run
        if run is None:
            return
        try:
            run.alert(title=title, text=text)
        except Exception as err:  # offline runs may refuse alerts; the flag is in the metrics anyway
            logger.warning("W&B alert %r not sent: %s", title, err)

    def summary(self, values: Mapping[str, Any]) -> None:
        run = self.run
        if run is not None:
            run.summary.update(dict(values))


class TrainerLogSink:
    """Queues metrics until the next `on_log`, where callbacks merge them into the trainer's log."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, dict[str, float]]] = []

    def log(self, step: int, metrics: Mapping[str, float], **context: Any) -> None:
        self.pending.append((int(step), {k: _plain(v) for k, v in metrics.items()}))

    def drain(self) -> list[tuple[int, dict[str, float]]]:
        out, self.pending = self.pending, []
        return out


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value
