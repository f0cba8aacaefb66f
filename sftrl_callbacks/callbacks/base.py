"""Plumbing shared by the sftrl callbacks: their run hub, per-run state, failure isolation and schedule.

Each callback finds what it needs in the event arguments (`model`, `processing_class`, `args`, `state`),
measures on the step the trainer is on, and hands typed records (`records.py`) to its run's hub (`hub.py`),
which sends them to the sinks (`metrics.jsonl`, the trainer's log, W&B) and to the listeners
(`RLReadinessCallback`). Measurements that fall on a save step are taken in `on_step_end`, before the
trainer's log / eval / save for that step, so the values sit on the same step as the checkpoint they describe.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from datasets import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..checks import first_line, require
from ..deadline import MeasurementTimeout, run_with_deadline
from ..distributed import Shard, current_shard
from ..hub import RunHub, Source, hub_for
from ..io import series_from_json, series_to_json
from ..records import Record, parse_name
from ..sinks import MetricSink

logger = logging.getLogger("sftrl_callbacks")


def make_config(config_cls: type, config: Any, overrides: dict) -> Any:
    if config is None:
        names = {f.name for f in fields(config_cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"Unknown {config_cls.__name__} field(s): {sorted(unknown)}. Known: {sorted(names)}.")
        return config_cls(**overrides)
    if not isinstance(config, config_cls):
        raise TypeError(f"config must be a {config_cls.__name__}, got {type(config).__name__}.")
    if overrides:
        raise TypeError("Pass either config= or keyword fields, not both.")
    return config


@dataclass
class ScheduleConfig:
    """When a measuring callback measures: every N steps, on saves, at the end (its config extends this)."""

    every_n_steps: int | None = field(default=None, metadata={"help": "Measure every N optimizer steps (None: off)."})
    on_save: bool = field(default=True, metadata={"help": "Measure on every step the trainer saves a checkpoint."})
    on_train_end: bool = field(default=True, metadata={"help": "Measure at the end of training."})
    measure_at_start: bool = field(
        default=True,
        metadata={
            "help": "Measure once before the first optimizer step (the model as SFT receives it): the baseline of "
            "every chart and of the report."
        },
    )
    on_evaluate: bool = field(
        default=False,
        metadata={
            "help": "Also measure on the steps the trainer evaluates (eval_strategy) and add the values to its "
            "evaluation metrics as eval_sftrl/..., where metric_for_best_model and EarlyStoppingCallback read them. "
            "On by itself when metric_for_best_model names one of this callback's metrics."
        },
    )
    strict: bool = field(default=False, metadata={"help": "Raise on a failed measurement instead of logging it."})
    measurement_timeout_s: float | None = field(
        default=10800.0,
        metadata={
            "help": "Wall-clock bound of one measurement, enforced from outside the measuring code (a watchdog "
            "interrupts it; a background job's process is killed): past it the measurement is recorded as failed, "
            "the sampler is rebuilt and training goes on. Single-process runs; under DDP / FSDP the collectives' own "
            "timeout bounds a hung rank. None: no bound."
        },
    )
    isolate_from_start: bool = field(
        default=False,
        metadata={
            "help": "A failed step-0 baseline measurement (before any training step, so nothing is lost yet) stops "
            "the run with its error; True reports it and trains on, as every later failure is."
        },
    )

    def check_schedule(self, owner: str, measures_elsewhere: bool = False) -> None:
        every = self.every_n_steps
        bound = self.measurement_timeout_s
        require(self, "measurement_timeout_s", bound is None or bound > 0, "must be > 0 seconds or None (no bound)")
        require(self, "every_n_steps", every is None or every >= 0, "must be >= 0 or None (None / 0: off)")
        if not (every or self.on_save or self.on_train_end or measures_elsewhere):
            raise ValueError(
                f"{type(self).__name__}: every_n_steps={every!r}, on_save=False and on_train_end=False: "
                f"{owner} would never measure; turn one of them on."
            )


def named_sets(value: Any, argument: str, what: str) -> dict[str, Dataset]:
    """One `Dataset` (named "heldout") or a non-empty dict name -> Dataset, as a dict; a TypeError otherwise."""
    if isinstance(value, Dataset):
        value = {"heldout": value}
    if not isinstance(value, Mapping) or not value:
        raise TypeError(f"{argument} must be a datasets.Dataset or a non-empty dict name -> Dataset.")
    for name, ds in value.items():
        if not isinstance(ds, Dataset):
            raise TypeError(f"{what} {name!r} must be a datasets.Dataset, got {type(ds).__name__}.")
    return dict(value)


def text_tokenizer(processing_class: Any) -> Any:
    """The tokenizer inside what the trainer calls `processing_class` (a processor wraps one)."""
    return getattr(processing_class, "tokenizer", processing_class)


def check_sinks(sinks: Sequence[Any]) -> list[Any]:
    for sink in sinks:
        if not callable(getattr(sink, "log", None)):
            raise TypeError(f"{type(sink).__name__} is not a MetricSink: it needs log(step, metrics, **context).")
    return list(sinks)


class MonitorCallback(TrainerCallback):
    """Plumbing shared by the sftrl callbacks: the run hub, per-run state, failure isolation."""

    def __init__(self, config: Any, sinks: Sequence[MetricSink] = ()) -> None:
        self.config = config  # a *Config dataclass with a `strict` field; set here, before _start_run reads it
        self.strict = bool(config.strict)
        self.extra_sinks = check_sinks(sinks)
        self.hub: RunHub | None = None
        self.key: str | None = None  # this callback's key in its run (set when it joins)
        self._start_run()

    def _start_run(self) -> None:
        """Forget everything of an earlier run (a callback object reused by a second trainer starts clean)."""
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.errors = 0
        self.time_spent_s = 0.0  # wall time of this callback's measurements
        self.measurements = 0  # measurements attempted, and of them failed (`errors` also counts other failures)
        self.failed_measurements = 0
        self.last_error: str | None = None
        # step -> the last failure there (rl_start.json says why a signal is missing)
        self.failures: dict[int, str] = {}
        self._step = 0  # the step being worked on: where a failure is reported

    # -- per-run state ----------------------------------------------------------------------------
    def _label(self) -> str:
        return type(self).__name__

    def export_state(self) -> dict:
        """What this run has accumulated, as JSON (saved with each checkpoint, restored on resume)."""
        return {"history": {k: series_to_json(points) for k, points in self.history.items()}}

    def load_state(self, data: Mapping[str, Any]) -> None:
        for name, points in data.get("history", {}).items():
            self.history[name] = series_from_json(points)

    def _attach(self, args: TrainingArguments, state: TrainerState) -> None:
        hub = hub_for(args, state)
        if hub is self.hub:
            return
        if self.hub is not None:
            self._start_run()
        self.hub = hub
        self.key = hub.join(self, self._label(), self.source())
        if self.key in hub.restored:
            self.load_state(hub.restored[self.key])
        self._joined(hub)

    def source(self) -> Source | None:
        """What this callback measures (told to its run when it joins); None for one that only listens."""
        return None

    def _joined(self, hub: RunHub) -> None:
        """Called once per run, when this callback joins its hub."""

    def on_train_begin(self, args, state, control, **kwargs):
        self._attach(args, state)

    # -- output ---------------------------------------------------------------------------------
    def log_metrics(self, step: int, metrics: Mapping[str, float | None], **context: Any) -> None:
        """Values to this run's sinks and this callback's history (no record: the readiness numbers)."""
        for name, value in metrics.items():
            self.history[name].append((step, value))
        self.hub.log(step, metrics, context, self.extra_sinks)

    def publish(self, record: Record) -> None:
        """A measurement to the run's sinks (as metrics) and to its listeners, the readiness callback (as the
        record)."""
        self.log_metrics(record.step, record.metrics(), **record.context())
        self.hub.notify(self, record)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.hub is not None:
            self.hub.merge_into_log(state, logs)

    def on_save(self, args, state, control, **kwargs):
        self._step = state.global_step
        if self.hub is not None:
            self.hub.member_saved(self.key, state)

    def _log_this_step(self, control: TrainerControl) -> None:
        """Ask the trainer to log on this step, so queued metrics reach its log at their own step.

        Every rank asks (not only the main one, which holds the queue): the trainer's log gathers the loss
        across ranks, and a rank that skipped it would leave the others waiting."""
        control.should_log = True

    def _safely(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a measurement; a failure is logged loudly and training goes on, unless strict."""
        start = time.time()
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if self.strict:
                raise
            self._count_failure(f"{what} failed", exc_info=True, error=f"{type(err).__name__}: {first_line(err)}")
            return None
        finally:
            self.time_spent_s += time.time() - start

    def _fail(self, message: str) -> None:
        """A failure that leaves the rest of the work at hand to do: raised in strict mode, else counted and logged,
        as `_safely` does with an exception."""
        if self.strict:
            raise RuntimeError(message)
        self._count_failure(message)

    def _count_failure(self, message: str, exc_info: bool = False, error: str | None = None) -> None:
        """Count a failure and put it where the user looks: the log, and an event in metrics.jsonl and every
        tracker (an alert the first time, in trackers that have alerts), with its step, callback and error line."""
        self.errors += 1
        detail = f"{message}: {error}" if error else message
        self.last_error = self.failures[self._step] = detail
        logger.error("sftrl: %s (training continues; pass strict=True to stop on errors)", message, exc_info=exc_info)
        if self.hub is not None:
            name = f"sftrl/failure/{getattr(self, '_group', 'readiness')}"
            context = {"callback": self._label(), "error": error or message, **self._failure_context()}
            self.hub.event(self._step, name, detail=detail, alert=self.errors == 1, extra=self.extra_sinks, **context)

    def _failure_context(self) -> dict[str, Any]:
        """What else a failure event names (the sampler, for pass@k)."""
        return {}

    def _summarize_failures(self) -> None:
        """One line at the end of training for a callback that failed: how many measurements, and the last error."""
        if not self.errors:
            return
        other = self.errors - self.failed_measurements
        logger.warning(
            "sftrl: %s: %d of %d measurements failed%s; last: %s",
            self._label(),
            self.failed_measurements,
            self.measurements,
            f", and {other} other step(s) (copies, background jobs, panels)" if other else "",
            self.last_error,
        )


class ScheduledMonitor(MonitorCallback):
    """A callback that measures on a schedule: every N steps, on save steps and at the end.

    Subclasses set `_what` and implement `_measure(state, model, processing_class, shard)`; their config
    has `every_n_steps`, `on_save` and `on_train_end`. A measurement runs at most once per step.
    """

    _what = "measurement"
    _group = ""  # the metric-name group of what it measures ("heldout", "passk")

    def _start_run(self) -> None:
        super()._start_run()
        self._last_step = -1
        self._measure_on_evaluate = self.config.on_evaluate

    def on_train_begin(self, args, state, control, model=None, processing_class=None, optimizer=None, **kwargs):
        self._attach(args, state)
        self._prepare(args, processing_class, model)
        self._check_evaluation(args)
        if self.config.measure_at_start and state.global_step == 0:
            errors = self.errors
            self._measure_once(state, model, processing_class, optimizer)
            if self.errors > errors and not self.config.isolate_from_start:
                raise RuntimeError(
                    f"sftrl: {self._label()}: the step-0 baseline measurement failed, before any training step "
                    f"({self.last_error}); fix the cause, or pass isolate_from_start=True to train on with the "
                    "failures reported"
                )

    def _prepare(self, args: TrainingArguments, processing_class: Any, model: Any) -> None:
        """What a measurement needs from the run (its tokenizer, the SFTConfig, the model), checked at train start."""

    # -- the trainer's best-model selection and early stopping -----------------------------------
    def metric_fields(self) -> set[str]:
        """The fields of `sftrl/<group>/<set>/<field>` this callback logs, as metric_for_best_model may name them."""
        return set()

    def _check_evaluation(self, args: TrainingArguments) -> None:
        """Measure on eval steps when `metric_for_best_model` names one of this callback's metrics (and check it)."""
        wanted = getattr(args, "metric_for_best_model", None) or ""
        parsed = parse_name(wanted.removeprefix("eval_"))
        if parsed is not None and parsed.group == self._group and parsed.dataset in self.source().sets:
            if parsed.field not in self.metric_fields():
                raise ValueError(
                    f"metric_for_best_model={wanted!r}: {type(self).__name__} logs no {parsed.field!r} for set "
                    f"{parsed.dataset!r}; it logs {sorted(self.metric_fields())}."
                )
            higher_is_better = parsed.group == "passk"
            if bool(args.greater_is_better) != higher_is_better:
                raise ValueError(
                    f"metric_for_best_model={wanted!r} is better when {'higher' if higher_is_better else 'lower'}: "
                    f"set greater_is_better={higher_is_better}."
                )
            self._check_best_model_source()
            self._measure_on_evaluate = True
        if self._measure_on_evaluate and args.eval_strategy == "no":
            raise ValueError(
                f"{type(self).__name__}(on_evaluate=True) measures on evaluation steps, but eval_strategy='no': set "
                "eval_strategy (and an eval_dataset), or turn on_evaluate off."
            )

    def _check_best_model_source(self) -> None:
        """Raise when this callback cannot have its value ready at the trainer's evaluation."""

    def _eval_metrics(self, step: int) -> dict[str, float]:
        """This step's values under the evaluation's names (`eval_sftrl/...`)."""
        out = {}
        for name, points in self.history.items():
            if points and points[-1][0] == step and points[-1][1] is not None and math.isfinite(points[-1][1]):
                out[f"eval_{name}"] = float(points[-1][1])
        return out

    def on_log(self, args, state, control, logs=None, **kwargs):
        # The evaluation's metrics dict is the one the trainer logs, then hands to every callback's on_evaluate
        # and to its best-model choice: values put in here reach both, whatever the callback order.
        if logs and any(key.startswith("eval_") for key in logs):
            logs.update(self._eval_metrics(state.global_step))
        super().on_log(args, state, control, logs=logs, **kwargs)

    def export_state(self) -> dict:
        return {**super().export_state(), "last_step": self._last_step}

    def load_state(self, data: Mapping[str, Any]) -> None:
        super().load_state(data)
        self._last_step = int(data.get("last_step", -1))

    def _active(self) -> bool:
        return True

    def _joined(self, hub: RunHub) -> None:
        mine = self.source()
        for other, theirs in hub.sources():
            clash = set(mine.sets) & set(theirs.sets) if other is not self and theirs.group == mine.group else ()
            if clash:
                raise ValueError(
                    f"Two {type(self).__name__}s on one trainer both measure set(s) {sorted(clash)}: their metrics "
                    "would overwrite each other; give the sets different names."
                )

    def _due(self, state: TrainerState, control: TrainerControl) -> bool:
        every = self.config.every_n_steps
        return bool(
            (every and state.global_step % every == 0)
            or (self.config.on_save and control.should_save)
            or (self._measure_on_evaluate and control.should_evaluate)
            or (self.config.on_train_end and control.should_training_stop)
        )

    def _measure_once(self, state: TrainerState, model, processing_class, optimizer) -> bool:
        """Measure unless this step already was; True when a measurement was attempted."""
        if not self._active() or state.global_step == self._last_step:
            return False
        self._last_step = self._step = state.global_step
        errors = self.errors
        self.measurements += 1
        shard = current_shard(optimizer)
        self._safely(self._what, self._bounded_measure, state, model, processing_class, shard)
        self.failed_measurements += self.errors > errors
        return True

    def _bounded_measure(self, state: TrainerState, model, processing_class, shard: Shard) -> None:
        # A rank interrupted alone would leave the others in a collective: across ranks, their timeout bounds it.
        bound = self.config.measurement_timeout_s if shard.world == 1 else None
        try:
            run_with_deadline(self._measure, bound, state, model, processing_class, shard)
        except MeasurementTimeout:
            self._after_timeout()
            raise

    def _after_timeout(self) -> None:
        """A measurement ran past its bound: drop whatever state it may have left half-made."""

    def on_step_end(self, args, state, control, model=None, processing_class=None, optimizer=None, **kwargs):
        if self._due(state, control) and self._measure_once(state, model, processing_class, optimizer):
            self._log_this_step(control)

    def on_epoch_end(self, args, state, control, model=None, processing_class=None, optimizer=None, **kwargs):
        # Epoch-based saves and evaluations are decided in DefaultFlowCallback.on_epoch_end, which runs first.
        due = (self.config.on_save and control.should_save) or (self._measure_on_evaluate and control.should_evaluate)
        if due and self._measure_once(state, model, processing_class, optimizer):
            self._log_this_step(control)

    def on_train_end(self, args, state, control, **kwargs):
        self._end_of_training(args, state, control, **kwargs)
        self._summarize_failures()

    def _end_of_training(self, args, state, control, model=None, processing_class=None, optimizer=None, **kwargs):
        if self.config.on_train_end and self.hub is not None:
            self._measure_once(state, model, processing_class, optimizer)
            self.hub.merge_into_log(state, None)

    def _measure(self, state: TrainerState, model, processing_class, shard: Shard) -> None:
        raise NotImplementedError
