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
import json
import logging
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from datasets import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import DefaultFlowCallback

from .heldout import examples_from_trainer_args, heldout_loss
from .measure import PassAtKConfig, PassAtKResult, check_problems, measure_pass_at_k
from .readiness import (
    Candidate,
    Flag,
    detect_gap_widening,
    detect_loss_turn,
    detect_passk_decline,
    readiness_scores,
)
from .sampling import HFSampler, Sampler
from .sinks import JsonlSink, MetricSink, TrainerLogSink, WandbSink
from .verifiers import Verifier, make_verifier

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
        self.wandb = WandbSink()  # also for the objects, alerts and summary only W&B takes
        self.sinks: list[MetricSink] = [self.wandb, *sinks]
        self.jsonl: JsonlSink | None = None
        self._trainer_log = TrainerLogSink()
        self._listeners: list[Listener] = []
        self._is_main = True
        self.siblings: tuple[TrainerCallback, ...] = ()
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.errors = 0
        self.time_spent_s = 0.0  # wall time of this callback's measurements

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
            # A tuple, so this snapshot is never mistaken for the trainer's list by `_trainer_callback_list`.
            self.siblings = tuple(cb for cb in callbacks if cb is not self)

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
        start = time.time()
        try:
            return fn(*args, **kwargs)
        except Exception:
            if self.strict:
                raise
            self.errors += 1
            logger.exception("sftrl: %s failed (training continues; pass strict=True to stop on errors)", what)
            return None
        finally:
            self.time_spent_s += time.time() - start


class _ScheduledMonitor(_MonitorCallback):
    """A callback that measures on a schedule: every N steps, on save steps and at the end.

    Subclasses set `_what` and implement `_measure(state, model, processing_class)`; their config
    has `every_n_steps`, `on_save` and `on_train_end`. A measurement runs at most once per step.
    """

    _what = "measurement"

    def __init__(self, strict: bool = False, sinks: Sequence[MetricSink] = ()) -> None:
        super().__init__(strict=strict, sinks=sinks)
        self._last_step = -1

    def _active(self) -> bool:
        return True

    def _due(self, state: TrainerState, control: TrainerControl) -> bool:
        every = self.config.every_n_steps
        return bool(
            (every and state.global_step % every == 0)
            or (self.config.on_save and control.should_save)
            or (self.config.on_train_end and control.should_training_stop)
        )

    def _measure_once(self, state: TrainerState, model, processing_class) -> bool:
        """Measure unless this step already was; True when a measurement was attempted."""
        if not self._active() or state.global_step == self._last_step:
            return False
        self._last_step = state.global_step
        self._safely(self._what, self._measure, state, model, processing_class)
        return True

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self._due(state, control) and self._measure_once(state, model, processing_class):
            self._flush_now(control)

    def on_epoch_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        # Epoch-based saves are decided in DefaultFlowCallback.on_epoch_end, which runs before this.
        if self.config.on_save and control.should_save and self._measure_once(state, model, processing_class):
            self._flush_now(control)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.config.on_train_end and self._measure_once(state, model, processing_class):
            self.on_log(args, state, control)

    def _measure(self, state: TrainerState, model, processing_class) -> None:
        raise NotImplementedError


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


class HeldOutLossCallback(_ScheduledMonitor):
    _what = "held-out loss"

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

    def _active(self) -> bool:
        return bool(self.datasets)  # with use_trainer_eval the trainer measures, on_evaluate re-logs

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


# ----------------------------------------------------------------------------------------------
@dataclass
class PassAtKCallbackConfig(PassAtKConfig):
    """`PassAtKConfig` (what to sample) plus when to sample."""

    every_n_steps: int | None = field(default=None, metadata={"help": "Also measure every N steps (None: off)."})
    on_save: bool = field(default=True, metadata={"help": "Measure on every step the trainer saves a checkpoint."})
    on_train_end: bool = field(default=True, metadata={"help": "Measure at the end of training."})
    strict: bool = field(default=False, metadata={"help": "Raise on a failed measurement instead of logging it."})


class PassAtKCallback(_ScheduledMonitor):
    _what = "pass@k"

    """Samples n completions per held-out problem at checkpoints and logs pass@k for each k.

    `problems` is a `Dataset` (named "heldout") or a dict name -> Dataset with a prompt column (text or
    messages) and an answer column. `verifier` is a `Verifier` or a name ("answer", "math-verify",
    "toy-steps"); `sampler` defaults to `HFSampler`. Logs `sftrl/passk/<set>/pass@<k>` per k, plus
    `mean_completion_tokens`, `truncation_rate`, `num_problems` and `samples`; writes the raw
    per-problem counts and sample completions to `<output_dir>/sftrl/passk/step-<step>_<set>.json`
    and, on saves, to `<checkpoint>/sftrl/passk_<set>.json`.
    """

    def __init__(
        self,
        problems: Dataset | Mapping[str, Dataset],
        verifier: Verifier | str = "answer",
        config: PassAtKCallbackConfig | None = None,
        sampler: Sampler | None = None,
        sinks: Sequence[MetricSink] = (),
        **config_fields: Any,
    ) -> None:
        self.config = _make_config(PassAtKCallbackConfig, config, config_fields)
        super().__init__(strict=self.config.strict, sinks=sinks)
        if isinstance(problems, Dataset):
            problems = {"heldout": problems}
        if not isinstance(problems, Mapping) or not problems:
            raise TypeError("problems must be a datasets.Dataset or a non-empty dict name -> Dataset.")
        for name, ds in problems.items():
            if not isinstance(ds, Dataset):
                raise TypeError(f"Problem set {name!r} must be a datasets.Dataset, got {type(ds).__name__}.")
            check_problems(ds, self.config, f"problem set {name!r}")
        self.problems = dict(problems)
        self.verifier = make_verifier(verifier)
        self.sampler = sampler or HFSampler()
        if not isinstance(self.sampler, Sampler):
            raise TypeError(f"{type(self.sampler).__name__} is not a Sampler: it needs sample(model, tokenizer, ...).")
        self.results: dict[str, list[PassAtKResult]] = defaultdict(list)
        self._output_dir = "."

    @property
    def set_names(self) -> list[str]:
        return list(self.problems)

    def on_train_begin(self, args, state, control, **kwargs):
        self._attach(args, state)
        self._output_dir = args.output_dir

    def on_save(self, args, state, control, **kwargs):
        if self._is_main:
            self._safely("pass@k checkpoint copy", self._copy_to_checkpoint, args, state)

    def _measure(self, state: TrainerState, model, processing_class) -> None:
        tokenizer = getattr(processing_class, "tokenizer", processing_class)  # a processor wraps one
        for name, problems in self.problems.items():
            result = measure_pass_at_k(
                model, tokenizer, problems, self.verifier, self.config, self.sampler, name, state.global_step
            )
            self.results[name].append(result)
            if self._is_main:
                result.save(self._step_path(state.global_step, name))
            self.emit(state.global_step, result.metrics(f"sftrl/passk/{name}"), **result.context())
            self._log_curve(state.global_step, name, result)

    def _step_path(self, step: int, name: str) -> str:
        return os.path.join(self._output_dir, "sftrl", "passk", f"step-{step}_{name}.json")

    def _copy_to_checkpoint(self, args, state) -> None:
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        for name in self.problems:
            source = self._step_path(state.global_step, name)
            if os.path.isdir(checkpoint) and os.path.exists(source):
                os.makedirs(os.path.join(checkpoint, "sftrl"), exist_ok=True)
                shutil.copyfile(source, os.path.join(checkpoint, "sftrl", f"passk_{name}.json"))

    def _log_curve(self, step: int, name: str, result: PassAtKResult) -> None:
        """A small pass@k-vs-k table and chart for this checkpoint only (nothing earlier is re-uploaded)."""
        if not self._is_main or self.wandb.run is None:
            return
        import wandb

        points = {**result.pass_at_k, **{k: v["estimate"] for k, v in result.extrapolated.items()}}
        table = wandb.Table(columns=["k", "pass@k", "step"], data=[[k, v, step] for k, v in sorted(points.items())])
        chart = wandb.plot.line(table, "k", "pass@k", title=f"{name}: pass@k vs k at step {step}")
        self.wandb.log_objects(step, {f"sftrl/passk/{name}/curve_step_{step}": chart})


# ----------------------------------------------------------------------------------------------
STOP_POLICIES = ("off", "loss", "passk", "either", "both")


@dataclass
class RLReadinessConfig:
    """How `RLReadinessCallback` flags overfitting, stops training and picks the RL-start checkpoint."""

    loss_set: str | None = field(default=None, metadata={"help": "Held-out set to watch (default: the first)."})
    passk_set: str | None = field(default=None, metadata={"help": "Pass@k problem set to watch (default: the first)."})
    passk_k: int | None = field(
        default=None, metadata={"help": "The 'large k' to watch (default: the largest logged)."}
    )
    smoothing: float = field(default=0.3, metadata={"help": "EMA weight for the loss turn detector (0 = none)."})
    loss_patience: int = field(default=3, metadata={"help": "Measurements above the minimum that confirm a turn."})
    loss_min_delta: float = field(default=0.01, metadata={"help": "Relative rise over the minimum that counts."})
    passk_patience: int = field(default=2, metadata={"help": "Measurements of decline that confirm it."})
    passk_min_delta: float = field(default=0.02, metadata={"help": "Absolute pass@k drop that counts."})
    gap_patience: int = field(default=3, metadata={"help": "Consecutive rises of the held-out/train gap."})
    gap_min_delta: float = field(default=0.02, metadata={"help": "Total gap rise that counts."})
    early_stopping: str = field(
        default="off",
        metadata={
            "help": "'off' (flag only), 'loss', 'passk', 'either' (first of the two) or 'both' (once both flag)."
        },
    )
    stop_patience: int = field(
        default=0, metadata={"help": "Extra measurements to wait after the flag before stopping."}
    )
    loss_weight: float = field(default=0.5, metadata={"help": "Weight of the normalised held-out loss in the score."})
    passk_weight: float = field(default=0.5, metadata={"help": "Weight of the normalised pass@large-k in the score."})
    save_loss_minimum: bool = field(
        default=False,
        metadata={
            "help": "Ask the trainer to save a checkpoint whenever the held-out loss reaches a new minimum "
            "between regular saves, so the turning point exists as a checkpoint."
        },
    )
    protect_rl_start: bool = field(
        default=True,
        metadata={
            "help": "Keep a hard-linked copy of the chosen checkpoint under <output_dir>/sftrl/rl_start/ so "
            "save_total_limit rotation cannot delete it."
        },
    )
    strict: bool = field(default=False, metadata={"help": "Raise on an internal failure instead of logging it."})

    def __post_init__(self) -> None:
        if self.early_stopping not in STOP_POLICIES:
            raise ValueError(f"early_stopping must be one of {STOP_POLICIES}, got {self.early_stopping!r}.")
        if min(self.loss_patience, self.passk_patience, self.gap_patience) < 1 or self.stop_patience < 0:
            raise ValueError("patience values must be >= 1 (stop_patience >= 0).")
        if self.loss_weight < 0 or self.passk_weight < 0 or self.loss_weight + self.passk_weight == 0:
            raise ValueError("loss_weight and passk_weight must be >= 0 and not both 0.")


class RLReadinessCallback(_MonitorCallback):
    """Turns the held-out loss and pass@k signals into decisions.

    Constructed with no arguments it listens, in process, to the `HeldOutLossCallback` and
    `PassAtKCallback` on the same trainer (either or both) and:
    - flags the generalization-loss turning point, pass@large-k falling while pass@1 rises, and a
      widening train/held-out gap (`sftrl/readiness/<flag>_step` metrics, metrics.jsonl events,
      W&B alerts);
    - stops training on a flag if `early_stopping` asks for it (via `control.should_training_stop`,
      no `metric_for_best_model` needed, compatible with `load_best_model_at_end`);
    - ranks saved checkpoints by the readiness score (see `readiness.readiness_scores`) and writes
      the best to `<output_dir>/sftrl/rl_start.json`, protected from checkpoint rotation.
    """

    def __init__(
        self, config: RLReadinessConfig | None = None, sinks: Sequence[MetricSink] = (), **config_fields: Any
    ) -> None:
        self.config = _make_config(RLReadinessConfig, config, config_fields)
        super().__init__(strict=self.config.strict, sinks=sinks)
        self.signals: dict[str, dict[int, float]] = defaultdict(dict)  # metric name -> step -> value
        self.flags: list[Flag] = []
        self.checkpoints: list[int] = []
        self.rl_start: dict | None = None
        self._stop_after: int | None = None  # measurement steps left before stopping
        self._counted_step = -1  # the last step counted towards it
        self._pending_stop = False
        self._pending_save = False
        self._listening = False
        self._choice_stale = False  # new signals or checkpoints since rl_start was last chosen
        self.found: list[str] = []

    # -- wiring ---------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._attach(args, state)
        if self._listening:
            return
        loss_cbs = [cb for cb in self.siblings if isinstance(cb, HeldOutLossCallback)]
        passk_cbs = [cb for cb in self.siblings if isinstance(cb, PassAtKCallback)]
        for cb in loss_cbs + passk_cbs:
            cb.subscribe(self._on_metrics)
        self._listening = True
        if loss_cbs:
            self.found.append("held-out loss (" + ", ".join(n for cb in loss_cbs for n in cb.set_names) + ")")
        if passk_cbs:
            self.found.append("pass@k (" + ", ".join(n for cb in passk_cbs for n in cb.set_names) + ")")
        if self.found:
            logger.warning("sftrl RLReadinessCallback: watching %s", " and ".join(self.found))
        else:
            logger.warning(
                "sftrl RLReadinessCallback: no HeldOutLossCallback or PassAtKCallback on this trainer; "
                "nothing to watch."
            )
        if self.config.early_stopping in ("loss", "both") and not loss_cbs:
            raise ValueError(f"early_stopping={self.config.early_stopping!r} needs a HeldOutLossCallback.")
        if self.config.early_stopping in ("passk", "both") and not passk_cbs:
            raise ValueError(f"early_stopping={self.config.early_stopping!r} needs a PassAtKCallback.")

    def _on_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._safely("readiness update", self._update, step, metrics)

    # -- signals --------------------------------------------------------------------------------
    def _series(self, kind: str) -> list[tuple[int, float]]:
        name = self._signal_name(kind)
        return sorted(self.signals.get(name, {}).items()) if name else []

    def _signal_name(self, kind: str) -> str | None:
        names = list(self.signals)
        if kind in ("loss", "gap"):
            sets = [n.split("/")[2] for n in names if n.startswith("sftrl/heldout/") and n.endswith("/loss")]
            chosen = self.config.loss_set or (sets[0] if sets else None)
            return f"sftrl/heldout/{chosen}/{kind}" if chosen else None
        sets = [n.split("/")[2] for n in names if n.startswith("sftrl/passk/")]
        chosen = self.config.passk_set or (sets[0] if sets else None)
        if chosen is None:
            return None
        if kind == "pass1":
            return f"sftrl/passk/{chosen}/pass@1"
        ks = [int(n.rsplit("@", 1)[1]) for n in names if n.startswith(f"sftrl/passk/{chosen}/pass@")]
        k = self.config.passk_k or (max(ks) if ks else None)
        return f"sftrl/passk/{chosen}/pass@{k}" if k else None

    def _update(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            if (name.startswith("sftrl/heldout/") and name.endswith(("/loss", "/gap"))) or "/pass@" in name:
                if value is not None:
                    self.signals[name][step] = float(value)
                    self._choice_stale = True
        loss = self._series("loss")
        if self.config.save_loss_minimum and loss and loss[-1][0] == step and loss[-1][1] <= min(v for _, v in loss):
            self._pending_save = True
        known = {f.kind for f in self.flags}
        c = self.config
        candidates = {
            "loss_turn": lambda: detect_loss_turn(loss, c.smoothing, c.loss_patience, c.loss_min_delta),
            "passk_decline": lambda: detect_passk_decline(
                self._series("passk"), self._series("pass1"), c.passk_patience, c.passk_min_delta
            ),
            "gap_widening": lambda: detect_gap_widening(self._series("gap"), c.gap_patience, c.gap_min_delta),
        }
        for kind, detect in candidates.items():
            if kind in known:
                continue
            flag = detect()
            if flag is not None:
                self._raise_flag(flag)
        self._count_down_to_stop(step)

    def _raise_flag(self, flag: Flag) -> None:
        self.flags.append(flag)
        self.emit(
            flag.confirmed_step,
            {f"sftrl/readiness/{flag.kind}_step": flag.began_step},
            began_step=flag.began_step,
            confirmed_step=flag.confirmed_step,
            detail=flag.detail,
        )
        if self._is_main:
            if self.jsonl is not None:
                self.jsonl.event(
                    flag.confirmed_step,
                    f"sftrl/readiness/flag/{flag.kind}",
                    began_step=flag.began_step,
                    detail=flag.detail,
                )
            self.wandb.alert(f"sftrl: {flag.kind.replace('_', ' ')} at step {flag.began_step}", flag.detail)
        logger.warning("sftrl flag %s: %s", flag.kind, flag.detail)
        policy = self.config.early_stopping
        kinds = {f.kind for f in self.flags}
        wanted = {
            "loss": "loss_turn" in kinds,
            "passk": "passk_decline" in kinds,
            "either": bool(kinds & {"loss_turn", "passk_decline"}),
            "both": {"loss_turn", "passk_decline"} <= kinds,
        }.get(policy, False)
        if wanted and self._stop_after is None:
            self._stop_after = self.config.stop_patience + 1

    def _count_down_to_stop(self, step: int) -> None:
        # Count measurement steps, not emissions: loss and pass@k both report on a save step.
        if self._stop_after is not None and not self._pending_stop and step != self._counted_step:
            self._counted_step = step
            self._stop_after -= 1
            if self._stop_after <= 0:
                self._pending_stop = True

    # -- decisions --------------------------------------------------------------------------------
    def _apply(self, control: TrainerControl, state: TrainerState) -> None:
        if self._pending_save:
            control.should_save = True
            self._pending_save = False
        if self._pending_stop and not control.should_training_stop:
            control.should_training_stop = True
            control.should_save = True  # keep the last state too
            logger.warning(
                "sftrl: stopping training at step %d (early_stopping=%r)", state.global_step, self.config.early_stopping
            )
            if self.jsonl is not None and self._is_main:
                self.jsonl.event(state.global_step, "sftrl/readiness/stop", policy=self.config.early_stopping)

    def on_step_end(self, args, state, control, **kwargs):
        self._apply(control, state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=logs, **kwargs)
        self._apply(control, state)  # the log of a measurement step comes before its save and stop check

    def on_save(self, args, state, control, **kwargs):
        if state.global_step not in self.checkpoints:
            self.checkpoints.append(state.global_step)
        self._choice_stale = True
        self._safely("RL-start choice", self._choose_rl_start, args, state)

    def on_train_end(self, args, state, control, **kwargs):
        if self._choice_stale:  # the last save usually decided it already
            self._safely("RL-start choice", self._choose_rl_start, args, state)
        self.on_log(args, state, control)
        self._safely("W&B panels", self._log_panels, args, state)

    def _log_panels(self, args, state) -> None:
        """The run's story for W&B: a timeline table and chart, the rendered report, the choice in the summary."""
        if not self._is_main or self.wandb.run is None:
            return
        import wandb

        from .report import render_report

        loss, passk, pass1 = (dict(self._series(k)) for k in ("loss", "passk", "pass1"))
        flagged = {f.began_step: f.kind for f in self.flags}
        rows = [
            [s, loss.get(s), passk.get(s), pass1.get(s), flagged.get(s, "")] for s in sorted(set(loss) | set(passk))
        ]
        table = wandb.Table(columns=["step", "heldout_loss", "pass@large_k", "pass@1", "flag"], data=rows)
        objects = {"sftrl/readiness/timeline": table}
        if loss:
            objects["sftrl/readiness/heldout_loss_chart"] = wandb.plot.line(
                table, "step", "heldout_loss", title="held-out loss vs step (flags in the timeline table)"
            )
        png, _ = render_report(args.output_dir)
        objects["sftrl/readiness/report"] = wandb.Image(png, caption="sftrl report: flags red, RL start green")
        self.wandb.log_objects(state.global_step, objects)

    def _choose_rl_start(self, args, state) -> None:
        if not self._is_main:
            return
        self._choice_stale = False
        loss, passk, pass1 = (dict(self._series(k)) for k in ("loss", "passk", "pass1"))
        base = args.output_dir
        snapshot_dir = os.path.join(base, "sftrl", "rl_start")
        existing = {s for s in self.checkpoints if os.path.isdir(os.path.join(base, f"checkpoint-{s}"))}
        protected = self.rl_start["step"] if self.rl_start and os.path.isdir(self.rl_start.get("path") or "") else None
        steps = sorted(existing | ({protected} if protected is not None else set()))
        if not steps:
            return
        candidates = [Candidate(s, loss.get(s), passk.get(s)) for s in steps]
        scores = readiness_scores(candidates, self.config.loss_weight, self.config.passk_weight)
        best = max(steps, key=lambda s: (scores[s], s))
        original = os.path.join(base, f"checkpoint-{best}")
        path = original
        if self.config.protect_rl_start:
            target = os.path.join(snapshot_dir, f"checkpoint-{best}")
            if not os.path.isdir(target) and os.path.isdir(original):
                _link_copy(original, target)
            for old in os.listdir(snapshot_dir) if os.path.isdir(snapshot_dir) else []:
                if old != f"checkpoint-{best}":
                    shutil.rmtree(os.path.join(snapshot_dir, old), ignore_errors=True)
            path = target
        passk_name = self._signal_name("passk")
        why = [f"highest readiness score {scores[best]:.3f} among {len(steps)} saved checkpoints"]
        if loss.get(best) is not None:
            why.append(
                f"held-out loss {loss[best]:.4f} (min over checkpoints {min(loss.get(s, math.inf) for s in steps):.4f})"
            )
        if passk.get(best) is not None:
            why.append(f"{passk_name.rsplit('/', 1)[1]} {passk[best]:.3f}")
        why += [f"flag {f.kind}: {f.detail}" for f in self.flags]
        self.rl_start = {
            "path": path,
            "checkpoint": original,
            "step": best,
            "score": scores[best],
            "metrics": {
                "heldout_loss": loss.get(best),
                "passk": passk.get(best),
                "passk_metric": passk_name,
                "pass@1": pass1.get(best),
            },
            "why": "; ".join(why),
            "score_formula": "(w_loss*(L_max-L)/(L_max-L_min) + w_passk*(P-P_min)/(P_max-P_min)) / (w_loss+w_passk)",
            "weights": {"loss": self.config.loss_weight, "passk": self.config.passk_weight},
            "flags": [vars(f) for f in self.flags],
            "ranking": [
                {"step": s, "score": scores[s], "heldout_loss": loss.get(s), "passk": passk.get(s)}
                for s in sorted(steps, key=lambda s: -scores[s])
            ],
        }
        os.makedirs(os.path.join(base, "sftrl"), exist_ok=True)
        with open(os.path.join(base, "sftrl", "rl_start.json"), "w", encoding="utf-8") as f:
            json.dump(self.rl_start, f, indent=1)
        self.emit(
            state.global_step, {"sftrl/readiness/rl_start_step": best, "sftrl/readiness/rl_start_score": scores[best]}
        )
        self.wandb.summary(
            {"sftrl/rl_start/step": best, "sftrl/rl_start/path": path, "sftrl/rl_start/why": self.rl_start["why"]}
        )


def _link_copy(source: str, target: str) -> None:
    """Copy a checkpoint with hard links (no extra disk) where the filesystem allows, else a real copy."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy)
