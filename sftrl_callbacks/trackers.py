"""One small sink per experiment tracker the Trainer reports to (`TrainingArguments.report_to`).

Why not the Trainer's own path: the Trainer runs its `report_to` integrations before user callbacks, so
keys a callback adds in `on_log` reach none of them, and `trainer.log` (which does reach them) stamps the
step the trainer is on, not the step a value was measured at (a background pass@k result arrives steps
after its checkpoint; the step-0 baseline is measured before the first log). Each sink therefore writes
with the tracker's own library, at the measured step, to the run the Trainer's integration opened:

- W&B: `wandb.run`, on the `train/global_step` axis (the integration's step metric).
- TensorBoard: an event file of its own in the integration's log directory, at the measured step (the
  integration's writer is not reachable from a callback; TensorBoard shows one directory as one run).
- MLflow: the integration's run, by id, at the measured step (results that arrive after the run ended land).
- trackio: the integration's run object, with `train/global_step` in every point as the integration does
  (results that arrive after `finish` still land).

Names are the sftrl names (`sftrl/passk/<set>/pass@64`), except in MLflow, which refuses `@` and other
characters: there they are rewritten as the Trainer's MLflow integration rewrites its own (`pass_64`).
Values that are None or not finite are skipped (`metrics.jsonl` keeps them, with the reason).
A tracker that is in `report_to` but has no open run yet is skipped until it has one.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .io import json_safe, plain
from .sinks import Image, Table

logger = logging.getLogger("sftrl_callbacks")

STEP_METRIC = "train/global_step"


def is_available(library: str) -> bool:
    return importlib.util.find_spec(library) is not None


def is_wandb_available() -> bool:
    return is_available("wandb")


def finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers among `metrics`, tensors unwrapped; None and non-finite values left out (`io.plain`)."""
    out = {}
    for name, value in metrics.items():
        value = plain(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def table_markdown(table: Table, max_rows: int = 50, max_cell: int = 600) -> str:
    def cell(value: Any) -> str:  # a line break inside a markdown table cell is written as <br>
        text = str(value)
        text = text if len(text) <= max_cell else text[:max_cell] + " ..."
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows[:max_rows]]
    return "\n".join(lines)


class WandbSink:
    """Logs to the active W&B run, on the `train/global_step` axis.

    It never passes an explicit `step=` to `wandb.log`: W&B drops points whose step is below its
    current one, and the trainer's own W&B callback advances that step on every log call.
    """

    library = "wandb"

    @classmethod
    def from_args(cls, args: Any) -> WandbSink:
        return cls()

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and is_wandb_available()
        self._defined_for = None

    @property
    def run(self):
        if not self.enabled:
            return None
        import wandb

        run = wandb.run
        if run is not None and self._defined_for is not run:
            run.define_metric(STEP_METRIC)
            run.define_metric("sftrl/*", step_metric=STEP_METRIC, step_sync=True)
            self._defined_for = run
        return run

    def log(self, step: int, metrics: Mapping[str, float | None], **context: Any) -> None:
        run = self.run
        if run is not None:
            values = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items() if v is not None}
            run.log({**values, STEP_METRIC: int(step)})

    def event(self, step: int, name: str, detail: str = "", alert: bool = False, **payload: Any) -> None:
        run = self.run
        if run is None or not alert:
            return
        try:
            run.alert(title=payload.get("title", name), text=detail)
        except Exception as err:  # offline runs may refuse alerts; the event is in the metrics anyway
            logger.warning("W&B alert %r not sent: %s", name, err)

    def summary(self, values: Mapping[str, Any]) -> None:
        run = self.run
        if run is not None:
            run.summary.update(json_safe(dict(values)))

    def media(self, step: int, name: str, item: Table | Image) -> None:
        run = self.run
        if run is None:
            return
        import wandb

        if isinstance(item, Image):
            objects = {name: wandb.Image(item.path, caption=item.caption)}
        else:
            table = wandb.Table(columns=item.columns, data=item.rows)
            objects = {name: table}
            if item.line is not None:
                objects = {name: wandb.plot.line(table, *item.line, title=item.title)}
        run.log({**objects, STEP_METRIC: int(step)})


class TensorBoardSink:
    """Writes an event file of its own into the directory the Trainer's TensorBoard integration writes to.

    That directory is `TENSORBOARD_LOGGING_DIR` when set, else the newest `<output_dir>/runs/*` folder
    (the integration makes it at train start, before this sink's first write). Tags are the sftrl names,
    without the `train/` prefix the integration gives the trainer's own logs. Events and tables go to the
    Text tab, images to the Images tab.
    """

    library = "tensorboard"

    @classmethod
    def from_args(cls, args: Any) -> TensorBoardSink:
        return cls(os.path.abspath(args.output_dir))

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir
        self._writer = None

    def _find_dir(self) -> str:
        chosen = os.getenv("TENSORBOARD_LOGGING_DIR")
        if chosen:
            return os.path.expanduser(chosen)
        runs = os.path.join(self.output_dir, "runs")
        folders = [os.path.join(runs, d) for d in os.listdir(runs)] if os.path.isdir(runs) else []
        folders = [d for d in folders if os.path.isdir(d)]
        return max(folders, key=os.path.getmtime) if folders else os.path.join(runs, "sftrl")

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self._find_dir(), filename_suffix=".sftrl")
        return self._writer

    @property
    def path(self) -> str | None:
        return self._writer.log_dir if self._writer is not None else None

    def log(self, step: int, metrics: Mapping[str, float | None], **context: Any) -> None:
        for name, value in finite(metrics).items():
            self.writer.add_scalar(name, value, int(step))
        self.writer.flush()

    def event(self, step: int, name: str, detail: str = "", alert: bool = False, **payload: Any) -> None:
        self.writer.add_text("sftrl/events", f"**{name}** {detail}", int(step))
        self.writer.flush()

    def summary(self, values: Mapping[str, Any]) -> None:
        self.writer.add_text("sftrl/summary", "```\n" + json.dumps(json_safe(dict(values)), indent=1) + "\n```")
        self.writer.flush()

    def media(self, step: int, name: str, item: Table | Image) -> None:
        if isinstance(item, Image):
            import numpy as np
            from PIL import Image as PILImage

            pixels = np.asarray(PILImage.open(item.path).convert("RGB"))
            self.writer.add_image(name, pixels, int(step), dataformats="HWC")
        else:
            self.writer.add_text(name, table_markdown(item), int(step))
        self.writer.flush()


def mlflow_name(name: str) -> str:
    """The name MLflow stores: the characters it refuses become `_`, as in the Trainer's MLflow integration."""
    return re.sub(r"[^0-9A-Za-z_\-\.\ :/]", "_", name)


class MLflowSink:
    """Logs to the MLflow run the Trainer's integration started, through `MlflowClient` and the run's id.

    The id is taken from the active run at the first write; going through the client keeps results that
    arrive after the integration ended its run (background pass@k, the final RL-start choice). Events
    become tags (`sftrl.<event>`), tables JSON artifacts and images image artifacts under `sftrl/`.
    """

    library = "mlflow"

    @classmethod
    def from_args(cls, args: Any) -> MLflowSink:
        return cls()

    def __init__(self) -> None:
        self.run_id: str | None = None
        self._client = None

    def _ready(self) -> bool:
        if self.run_id is None:
            import mlflow

            run = mlflow.active_run()
            if run is None:
                return False
            self.run_id = run.info.run_id
            self._client = mlflow.MlflowClient()
        return True

    def log(self, step: int, metrics: Mapping[str, float | None], **context: Any) -> None:
        if not self._ready():
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_name(k), float(v), now, int(step)) for k, v in finite(metrics).items()]
        if batch:
            self._client.log_batch(self.run_id, metrics=batch)

    def event(self, step: int, name: str, detail: str = "", alert: bool = False, **payload: Any) -> None:
        if self._ready():
            self._client.set_tag(self.run_id, f"sftrl.{mlflow_name(name)}", f"step {step}: {detail}"[:5000])

    def summary(self, values: Mapping[str, Any]) -> None:
        if self._ready():
            self._client.log_text(self.run_id, json.dumps(json_safe(dict(values)), indent=1), "sftrl/summary.json")

    def media(self, step: int, name: str, item: Table | Image) -> None:
        if not self._ready():
            return
        if isinstance(item, Image):
            self._client.log_artifact(self.run_id, item.path, artifact_path="sftrl")
        else:
            text = json.dumps({"columns": item.columns, "rows": item.rows}, default=str)
            self._client.log_text(self.run_id, text, f"{mlflow_name(name)}/step-{int(step)}.json")


class TrackioSink:
    """Logs to the trackio run the Trainer's integration opened, with `train/global_step` in every point.

    The Trainer's integration logs without an explicit step (trackio counts its calls) and adds
    `train/global_step`; this sink does the same, so trackio's own step counter stays the integration's and
    every chart lines up when drawn against `train/global_step` (the dashboard's X-axis choice). The run
    object is kept from the first write, so results that arrive after the integration's `finish` still land.
    Flags that are alerts become trackio alerts; tables and images are trackio media.
    """

    library = "trackio"

    @classmethod
    def from_args(cls, args: Any) -> TrackioSink:
        return cls()

    def __init__(self) -> None:
        self.run = None

    def _ready(self) -> bool:
        if self.run is None:
            import trackio

            self.run = trackio.context_vars.current_run.get()
        return self.run is not None

    def log(self, step: int, metrics: Mapping[str, float | None], **context: Any) -> None:
        values = finite(metrics)
        if values and self._ready():
            self.run.log({**values, STEP_METRIC: int(step)})

    def event(self, step: int, name: str, detail: str = "", alert: bool = False, **payload: Any) -> None:
        if alert and self._ready():
            from trackio import AlertLevel

            self.run.alert(title=payload.get("title", name), text=f"step {step}: {detail}", level=AlertLevel.WARN)

    def media(self, step: int, name: str, item: Table | Image) -> None:
        if not self._ready():
            return
        import trackio

        if isinstance(item, Image):
            value = trackio.Image(item.path, caption=item.caption or None)
        else:
            value = trackio.Table(columns=item.columns, data=[[str(v) for v in row] for row in item.rows])
        self.run.log({name: value, STEP_METRIC: int(step)})


def reported(report_to: str | Sequence[str] | None) -> list[str]:
    """The integrations `report_to` names ("all": every installed one, as TrainingArguments expands it)."""
    if report_to is None or report_to == "none":
        return []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if "all" in names:
        return [name for name, cls in TRACKERS.items() if is_available(cls.library)]
    return names


TRACKERS: dict[str, type] = {
    "wandb": WandbSink,
    "tensorboard": TensorBoardSink,
    "mlflow": MLflowSink,
    "trackio": TrackioSink,
}


def tracker_sinks(args: Any) -> list[Any]:
    """A sink for each tracker in `args.report_to` that this module knows and that is installed; one warning for
    each entry it does not cover (its panels get no sftrl metrics, which metrics.jsonl and the trainer's log
    still hold)."""
    names = reported(getattr(args, "report_to", None))
    for name in names:
        if name not in TRACKERS:
            logger.warning(
                "sftrl: report_to=%r: sftrl has no sink for %r, so its panels get no sftrl metrics (they are in "
                "<output_dir>/sftrl/metrics.jsonl and the trainer's log; covered trackers: %s)",
                names,
                name,
                ", ".join(TRACKERS),
            )
    classes = [TRACKERS[name] for name in names if name in TRACKERS]
    return [cls.from_args(args) for cls in classes if is_available(cls.library)]
