"""Trainer callbacks. They decide *when* to measure; the pure modules decide *what*.

Each callback finds what it needs in the event arguments (`model`, `processing_class`, `args`,
`state`), measures on the step the trainer is on, and sends the result to its sinks: W&B (under
`sftrl/...`, x-axis `train/global_step`), `<output_dir>/sftrl/metrics.jsonl`, and the trainer's own
log (`state.log_history` and every `report_to` integration that comes after W&B).

Measurements that fall on a save step are taken in `on_step_end`, before the trainer's log / eval /
save for that step, so the values sit on the same step as the checkpoint they describe.
"""

from __future__ import annotations

import gc
import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from datasets import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import DefaultFlowCallback

from .heldout import examples_from_trainer_args, heldout_loss
from .sinks import JsonlSink, MetricSink, TrainerLogSink, WandbSink

logger = logging.getLogger("sftrl_callbacks")

Listener = Callable[[int, Mapping[str, float]], None]


def _make_config(config_cls: type, config: Any, overrides: dict) -> Any:
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


def _trainer_callback_list(callback: TrainerCallback) -> list | None:
    """The trainer's callback list that holds `callback` (callbacks are not given the trainer)."""
    for ref in gc.get_referrers(callback):
        if isinstance(ref, list) and any(isinstance(cb, DefaultFlowCallback) for cb in ref):
            return ref
    return None


def _move_after_reporters(callback: TrainerCallback, callbacks: list) -> None:
    """Run right after DefaultFlowCallback and W&B's callback, before the other callbacks.

    After DefaultFlowCallback, so `control.should_save` / `should_training_stop` for this step are
    known in `on_step_end`; after W&B's callback, so metrics merged into the trainer's log in
    `on_log` are not sent to W&B a second time (they go there directly, under their own names);
    before the other integrations and the progress printer, so those see them.
    """
    # The trainer may be iterating over this list right now: only ever move a callback to an
    # earlier index, which leaves the callbacks after it in the iteration unchanged.
    old_index = callbacks.index(callback)
    anchor = 0
    for i, cb in enumerate(callbacks):
        if isinstance(cb, DefaultFlowCallback) or type(cb).__name__ == "WandbCallback":
            anchor = i + 1
    while anchor < old_index and isinstance(callbacks[anchor], _MonitorCallback):
        anchor += 1
    if anchor < old_index:
        callbacks.remove(callback)
        callbacks.insert(anchor, callback)


class _MonitorCallback(TrainerCallback):
    """Plumbing shared by the sftrl callbacks: sinks, trainer-log merging, failure isolation."""

    def __init__(self, strict: bool = False, sinks: Sequence[MetricSink] = ()) -> None:
        self.strict = strict
        self.sinks: list[MetricSink] = [WandbSink(), *sinks]
        self.jsonl: JsonlSink | None = None
        self._trainer_log = TrainerLogSink()
        self._listeners: list[Listener] = []
        self._is_main = True
        self.siblings: list[TrainerCallback] = []
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.errors = 0

    # -- wiring -------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        """Call `listener(step, metrics)` whenever this callback emits metrics (in process)."""
        self._listeners.append(listener)

    def _attach(self, args: TrainingArguments, state: TrainerState) -> None:
        self._is_main = state.is_world_process_zero
        if self._is_main and self.jsonl is None:
            self.jsonl = JsonlSink(os.path.join(args.output_dir, "sftrl", "metrics.jsonl"))
        callbacks = _trainer_callback_list(self)
        if callbacks is not None:
            _move_after_reporters(self, callbacks)
            self.siblings = [cb for cb in callbacks if cb is not self]

    def on_train_begin(self, args, state, control, **kwargs):
        self._attach(args, state)

    # -- output ---------------------------------------------------------------------------------
    def emit(self, step: int, metrics: Mapping[str, float], **context: Any) -> None:
        for name, value in metrics.items():
            self.history[name].append((step, value))
        if self._is_main:
            sinks = [s for s in (self.jsonl, *self.sinks, self._trainer_log) if s is not None]
            for sink in sinks:
                try:
                    sink.log(step, metrics, **context)
                except Exception:
                    logger.exception("sftrl: sink %s failed; training continues", type(sink).__name__)
        for listener in self._listeners:
            listener(step, metrics)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for step, metrics in self._trainer_log.drain():
            if logs is not None and step == state.global_step:
                logs.update(metrics)
                if state.log_history and state.log_history[-1].get("step") == step:
                    state.log_history[-1].update(metrics)
            else:
                state.log_history.append({**metrics, "step": step})

    def _flush_now(self, control: TrainerControl) -> None:
        """Ask the trainer to log on this step, so queued metrics reach its log at their own step."""
        if self._trainer_log.pending:
            control.should_log = True

    def _safely(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a measurement; a failure is logged loudly and training goes on, unless strict."""
        try:
            return fn(*args, **kwargs)
        except Exception:
            if self.strict:
                raise
            self.errors += 1
            logger.exception("sftrl: %s failed (training continues; pass strict=True to stop on errors)", what)
            return None


# ----------------------------------------------------------------------------------------------
@dataclass
class HeldOutLossConfig:
    """When and how `HeldOutLossCallback` measures the held-out (generalization) loss."""

    every_n_steps: int | None = field(
        default=50, metadata={"help": "Measure every N optimizer steps (None or 0: only at saves and the end)."}
    )
    on_save: bool = field(default=True, metadata={"help": "Also measure on every step the trainer saves."})
    on_train_end: bool = field(default=True, metadata={"help": "Also measure at the end of training."})
    batch_size: int = field(default=32, metadata={"help": "Examples per forward pass."})
    max_examples: int | None = field(
        default=None, metadata={"help": "Use only the first N examples of each set (None: all)."}
    )
    smoothing: float = field(
        default=0.6,
        metadata={"help": "EMA weight of the previous smoothed value (TensorBoard-style); 0 turns smoothing off."},
    )
    use_trainer_eval: bool = field(
        default=False,
        metadata={
            "help": "Do not compute: re-log the trainer's own `eval_loss` / `eval_<name>_loss` under sftrl names "
            "(for users who already evaluate with eval_strategy)."
        },
    )
    strict: bool = field(default=False, metadata={"help": "Raise on a failed measurement instead of logging it."})

    def __post_init__(self) -> None:
        if self.every_n_steps is not None and self.every_n_steps < 0:
            raise ValueError("every_n_steps must be >= 0 or None.")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1.")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError("smoothing must be in [0, 1).")


class HeldOutLossCallback(_MonitorCallback):
    """Tracks the loss on held-out SFT examples: the generalization loss that predicts RL gains.

    `datasets` is one `Dataset` (named "heldout") or a dict name -> Dataset in any format SFTTrainer
    accepts; examples are tokenized and masked as SFTTrainer does with the trainer's `SFTConfig`.
    Per set it logs `sftrl/heldout/<set>/loss` (token-weighted mean NLL over all scored tokens),
    `loss_min` and `loss_min_step`, `loss_smoothed` and `gap` (held-out minus the last logged
    training loss).
    """

    def __init__(
        self,
        datasets: Dataset | Mapping[str, Dataset] | None = None,
        config: HeldOutLossConfig | None = None,
        sinks: Sequence[MetricSink] = (),
        **config_fields: Any,
    ) -> None:
        self.config = _make_config(HeldOutLossConfig, config, config_fields)
        super().__init__(strict=self.config.strict, sinks=sinks)
        if datasets is None and not self.config.use_trainer_eval:
            raise ValueError("Give held-out datasets=, or use_trainer_eval=True to re-log the trainer's eval loss.")
        if datasets is not None and self.config.use_trainer_eval:
            raise ValueError("use_trainer_eval=True re-logs the trainer's eval loss; do not also pass datasets=.")
        if isinstance(datasets, Dataset):
            datasets = {"heldout": datasets}
        self.datasets: dict[str, Dataset] = dict(datasets or {})
        for name, ds in self.datasets.items():
            if not isinstance(ds, Dataset):
                raise TypeError(f"Held-out set {name!r} must be a datasets.Dataset, got {type(ds).__name__}.")
            if len(ds) == 0:
                raise ValueError(f"Held-out set {name!r} is empty: give it at least one example.")
            if self.config.max_examples:
                self.datasets[name] = ds.select(range(min(len(ds), self.config.max_examples)))
        self._examples: dict[str, list] = {}
        self._last_step = -1
        self._train_loss: float | None = None
        self._best: dict[str, tuple[float, int]] = {}
        self._smoothed: dict[str, float] = {}

    @property
    def set_names(self) -> list[str]:
        return list(self.datasets)

    def on_train_begin(self, args, state, control, processing_class=None, **kwargs):
        self._attach(args, state)
        if self.datasets and not self._examples:
            if processing_class is None:
                raise ValueError("HeldOutLossCallback needs the trainer's tokenizer (processing_class).")
            tokenizer = getattr(processing_class, "tokenizer", processing_class)
            for name, ds in self.datasets.items():
                self._examples[name] = examples_from_trainer_args(ds, tokenizer, args, name=f"held-out {name!r}")

    def _due(self, state: TrainerState, control: TrainerControl) -> bool:
        every = self.config.every_n_steps
        return bool(
            (every and state.global_step % every == 0)
            or (self.config.on_save and control.should_save)
            or (self.config.on_train_end and control.should_training_stop)
        )

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.datasets and self._due(state, control) and state.global_step != self._last_step:
            self._safely("held-out loss", self._measure, state, model, processing_class)
            self._flush_now(control)

    def on_epoch_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.datasets and self.config.on_save and control.should_save and state.global_step != self._last_step:
            self._safely("held-out loss", self._measure, state, model, processing_class)
            self._flush_now(control)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.datasets and self.config.on_train_end and state.global_step != self._last_step:
            self._safely("held-out loss", self._measure, state, model, processing_class)
            self.on_log(args, state, control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._train_loss = float(logs["loss"])
        super().on_log(args, state, control, logs=logs, **kwargs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.config.use_trainer_eval or not metrics:
            return
        for key, value in metrics.items():
            if key == "eval_loss":
                self._record(state.global_step, "eval", float(value), {"source": "trainer_eval"})
            elif key.startswith("eval_") and key.endswith("_loss"):
                self._record(
                    state.global_step, key[len("eval_") : -len("_loss")], float(value), {"source": "trainer_eval"}
                )

    def _measure(self, state: TrainerState, model, processing_class) -> None:
        self._last_step = state.global_step
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        for name, examples in self._examples.items():
            result = heldout_loss(model, examples, batch_size=self.config.batch_size, pad_token_id=pad)
            context = {"dataset": name, "n_tokens": result.n_tokens, "n_examples": result.n_examples}
            self._record(state.global_step, name, result.loss, context)

    def _record(self, step: int, name: str, loss: float, context: dict) -> None:
        prefix = f"sftrl/heldout/{name}"
        best_loss, best_step = self._best.get(name, (math.inf, step))
        if loss < best_loss:
            best_loss, best_step = loss, step
        self._best[name] = (best_loss, best_step)
        w = self.config.smoothing
        smoothed = loss if name not in self._smoothed else w * self._smoothed[name] + (1 - w) * loss
        self._smoothed[name] = smoothed
        metrics = {
            f"{prefix}/loss": loss,
            f"{prefix}/loss_min": best_loss,
            f"{prefix}/loss_min_step": best_step,
            f"{prefix}/loss_smoothed": smoothed,
        }
        if self._train_loss is not None:
            metrics[f"{prefix}/gap"] = loss - self._train_loss
        self.emit(step, metrics, **context)
