"""Trainer callbacks. They decide *when* to measure; the pure modules decide *what*.

Each callback finds what it needs in the event arguments (`model`, `processing_class`, `args`,
`state`), measures on the step the trainer is on, and hands typed records (`records.py`) to its
run's hub (`hub.py`), which writes them to W&B (when `report_to` has it; `sftrl/...` on the
`train/global_step` axis), `<output_dir>/sftrl/metrics.jsonl` and the trainer's own log, and passes
them to `RLReadinessCallback`.

Measurements that fall on a save step are taken in `on_step_end`, before the trainer's log / eval /
save for that step, so the values sit on the same step as the checkpoint they describe.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from datasets import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from . import readiness
from .background import BackgroundPassAtK
from .checkpoints import protect, saves_only_deepspeed_shards
from .checks import check_types, require
from .distributed import Shard, current_shard
from .heldout import examples_from_trainer_args, heldout_loss
from .hub import RunHub, hub_for
from .measure import PassAtKConfig, PassAtKResult, check_problems, measure_pass_at_k
from .readiness import DEFAULT_SMOOTHING, SCORE_FORMULA, STOP_POLICIES, Candidate, Flag
from .records import (
    GapRecord,
    LossRecord,
    PassAtKRecord,
    Record,
    file_safe,
    heldout_name,
    passk_name,
    readiness_name,
)
from .sampling import HFSampler, Sampler, pad_token_id
from .sinks import Image, MetricSink, Table
from .verifiers import GuardedVerifier, Verifier, make_verifier, probe_verifier

logger = logging.getLogger("sftrl_callbacks")


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


def _check_schedule(config: Any, owner: str, measures_elsewhere: bool = False) -> None:
    every = config.every_n_steps
    require(config, "every_n_steps", every is None or every >= 0, "must be >= 0 or None (None / 0: off)")
    if not (every or config.on_save or config.on_train_end or measures_elsewhere):
        raise ValueError(
            f"{type(config).__name__}: every_n_steps={every!r}, on_save=False and on_train_end=False: "
            f"{owner} would never measure; turn one of them on."
        )


def _check_sinks(sinks: Sequence[Any]) -> list[Any]:
    for sink in sinks:
        if not callable(getattr(sink, "log", None)):
            raise TypeError(f"{type(sink).__name__} is not a MetricSink: it needs log(step, metrics, **context).")
    return list(sinks)


class _MonitorCallback(TrainerCallback):
    """Plumbing shared by the sftrl callbacks: the run hub, per-run state, failure isolation."""

    def __init__(self, strict: bool = False, sinks: Sequence[MetricSink] = ()) -> None:
        self.strict = strict
        self.extra_sinks = _check_sinks(sinks)
        self.hub: RunHub | None = None
        self.key = type(self).__name__
        self._start_run()

    def _start_run(self) -> None:
        """Forget everything of an earlier run (a callback object reused by a second trainer starts clean)."""
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.errors = 0
        self.time_spent_s = 0.0  # wall time of this callback's measurements

    # -- per-run state ----------------------------------------------------------------------------
    def _label(self) -> str:
        return type(self).__name__

    def export_state(self) -> dict:
        """What this run has accumulated, as JSON (saved with each checkpoint, restored on resume)."""
        return {"history": {k: [[s, v] for s, v in points] for k, points in self.history.items()}}

    def load_state(self, data: Mapping[str, Any]) -> None:
        for name, points in data.get("history", {}).items():
            self.history[name] = [(int(s), math.nan if v is None else v) for s, v in points]

    def _attach(self, args: TrainingArguments, state: TrainerState) -> None:
        hub = hub_for(args, state)
        if hub is self.hub:
            return
        if self.hub is not None:
            self._start_run()
        self.hub = hub
        self.key = hub.join(self, self._label())
        if self.key in hub.restored:
            self.load_state(hub.restored[self.key])
        self._joined(hub)

    def _joined(self, hub: RunHub) -> None:
        """Called once per run, when this callback joins its hub."""

    def on_train_begin(self, args, state, control, **kwargs):
        self._attach(args, state)

    # -- output ---------------------------------------------------------------------------------
    def emit(self, step: int, metrics: Mapping[str, float | None], **context: Any) -> None:
        for name, value in metrics.items():
            self.history[name].append((step, value))
        self.hub.log(step, metrics, context, self.extra_sinks)

    def publish(self, record: Record) -> None:
        self.emit(record.step, record.metrics(), **record.context())
        self.hub.publish(self, record)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.hub is not None:
            self.hub.merge_into_log(state, logs)

    def on_save(self, args, state, control, **kwargs):
        if self.hub is not None:
            self.hub.member_saved(self.key, state)

    def _flush_now(self, control: TrainerControl) -> None:
        """Ask the trainer to log on this step, so queued metrics reach its log at their own step.

        Every rank asks (not only the main one, which holds the queue): the trainer's log gathers the loss
        across ranks, and a rank that skipped it would leave the others waiting."""
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

    Subclasses set `_what` and implement `_measure(state, model, processing_class, shard)`; their config
    has `every_n_steps`, `on_save` and `on_train_end`. A measurement runs at most once per step.
    """

    _what = "measurement"

    def _start_run(self) -> None:
        super()._start_run()
        self._last_step = -1

    def export_state(self) -> dict:
        return {**super().export_state(), "last_step": self._last_step}

    def load_state(self, data: Mapping[str, Any]) -> None:
        super().load_state(data)
        self._last_step = int(data.get("last_step", -1))

    def _active(self) -> bool:
        return True

    def _joined(self, hub: RunHub) -> None:
        for other in hub.members.values():
            if other is self or type(other) is not type(self):
                continue
            clash = set(self.set_names) & set(other.set_names)
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
            or (self.config.on_train_end and control.should_training_stop)
        )

    def _measure_once(self, state: TrainerState, model, processing_class, optimizer) -> bool:
        """Measure unless this step already was; True when a measurement was attempted."""
        if not self._active() or state.global_step == self._last_step:
            return False
        self._last_step = state.global_step
        self._safely(self._what, self._measure, state, model, processing_class, current_shard(optimizer))
        return True

    def on_step_end(self, args, state, control, model=None, processing_class=None, optimizer=None, **kwargs):
        if self._due(state, control) and self._measure_once(state, model, processing_class, optimizer):
            self._flush_now(control)

    def on_epoch_end(self, args, state, control, model=None, processing_class=None, optimizer=None, **kwargs):
        # Epoch-based saves are decided in DefaultFlowCallback.on_epoch_end, which runs before this.
        if (
            self.config.on_save
            and control.should_save
            and self._measure_once(state, model, processing_class, optimizer)
        ):
            self._flush_now(control)

    def on_train_end(self, args, state, control, model=None, processing_class=None, optimizer=None, **kwargs):
        if self.config.on_train_end and self.hub is not None:
            self._measure_once(state, model, processing_class, optimizer)
            self.hub.merge_into_log(state, None)

    def _measure(self, state: TrainerState, model, processing_class, shard: Shard) -> None:
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
        default=DEFAULT_SMOOTHING,
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
        check_types(self)
        _check_schedule(self, "HeldOutLossCallback", self.use_trainer_eval)
        require(self, "batch_size", self.batch_size >= 1, "must be >= 1")
        require(self, "max_examples", self.max_examples is None or self.max_examples >= 1, "must be >= 1 or None")
        require(self, "smoothing", 0.0 <= self.smoothing < 1.0, "must be in [0, 1) (0 = no smoothing)")


class HeldOutLossCallback(_ScheduledMonitor):
    """Tracks the loss on held-out SFT examples: the generalization loss that predicts RL gains.

    `datasets` is one `Dataset` (named "heldout") or a dict name -> Dataset in any format SFTTrainer
    accepts; examples are tokenized and masked as SFTTrainer does with the trainer's `SFTConfig`.
    Per set it logs `sftrl/heldout/<set>/loss` (token-weighted mean NLL over all scored tokens),
    `loss_min` and `loss_min_step`, `loss_smoothed`, and `gap`: held-out loss minus the training
    loss the trainer logs at the same step.
    """

    _what = "held-out loss"

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
            if len(ds) == 0:  # its format is checked at train start, with the SFTConfig's text field
                raise ValueError(f"Held-out set {name!r} is empty: give it at least one example.")
            if self.config.max_examples:
                self.datasets[name] = ds.select(range(min(len(ds), self.config.max_examples)))

    def _start_run(self) -> None:
        super()._start_run()
        self._examples: dict[str, list] = {}  # tokenized with this run's SFTConfig
        self._train_loss: tuple[int, float] | None = None  # (step, loss) of the trainer's last logged loss
        self._awaiting_gap: dict[str, tuple[int, float]] = {}  # set -> (step, held-out loss) without a gap yet

    def _label(self) -> str:
        return f"HeldOutLossCallback[{','.join(self.set_names) or 'trainer-eval'}]"

    def export_state(self) -> dict:
        return {**super().export_state(), "train_loss": self._train_loss, "awaiting_gap": self._awaiting_gap}

    def load_state(self, data: Mapping[str, Any]) -> None:
        super().load_state(data)
        self._train_loss = tuple(data["train_loss"]) if data.get("train_loss") else None
        self._awaiting_gap = {k: tuple(v) for k, v in data.get("awaiting_gap", {}).items()}

    @property
    def set_names(self) -> list[str]:
        return list(self.datasets)

    def on_train_begin(self, args, state, control, processing_class=None, **kwargs):
        self._attach(args, state)
        if self.config.use_trainer_eval and args.eval_strategy == "no":
            raise ValueError(
                "HeldOutLossCallback(use_trainer_eval=True) re-logs the trainer's eval loss, but eval_strategy='no': "
                "nothing would be logged. Set eval_strategy (and eval_dataset), or pass datasets= instead."
            )
        if self.datasets and not self._examples:
            if processing_class is None:
                raise ValueError(
                    "HeldOutLossCallback needs the trainer's tokenizer to tokenize its held-out sets: pass "
                    "processing_class=<tokenizer> to the trainer."
                )
            tokenizer = getattr(processing_class, "tokenizer", processing_class)
            for name, ds in self.datasets.items():
                self._examples[name] = examples_from_trainer_args(ds, tokenizer, args, name=f"held-out {name!r}")

    def _active(self) -> bool:
        return bool(self.datasets)  # with use_trainer_eval the trainer measures, on_evaluate re-logs

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and self.hub is not None:
            self._train_loss = (state.global_step, float(logs["loss"]))
            for name in list(self._awaiting_gap):
                self._emit_gap(name)
        super().on_log(args, state, control, logs=logs, **kwargs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.config.use_trainer_eval or not metrics or self.hub is None:
            return
        for key, value in metrics.items():
            if key == "eval_loss":
                self._record(state.global_step, "eval", float(value), source="trainer_eval")
            elif key.startswith("eval_") and key.endswith("_loss"):
                self._record(state.global_step, key[len("eval_") : -len("_loss")], float(value), source="trainer_eval")

    def _measure(self, state: TrainerState, model, processing_class, shard: Shard) -> None:
        pad = pad_token_id(getattr(processing_class, "tokenizer", processing_class))
        for name, examples in self._examples.items():
            result = heldout_loss(model, examples, self.config.batch_size, pad, shard)
            self._record(state.global_step, name, result.loss, n_tokens=result.n_tokens, n_examples=result.n_examples)

    def _record(self, step: int, name: str, loss: float, **context: Any) -> None:
        history = [*self.history.get(heldout_name(name, "loss"), []), (step, loss)]
        summary = readiness.running_summary(history, self.config.smoothing)
        if not math.isfinite(loss):
            logger.error("sftrl: held-out loss of %r is %s at step %d (NaN / inf weights?)", name, loss, step)
        self.publish(LossRecord(step, name, loss, summary.minimum, summary.minimum_step, summary.smoothed, **context))
        self._awaiting_gap[name] = (step, loss)
        self._emit_gap(name)

    def _emit_gap(self, name: str) -> None:
        """The gap needs the training loss of the same step, which the trainer logs after `on_step_end`."""
        step, loss = self._awaiting_gap[name]
        if self._train_loss is None or self._train_loss[0] < step:
            return
        del self._awaiting_gap[name]
        if self._train_loss[0] == step:
            train_step, train_loss = self._train_loss
            self.publish(GapRecord(step, name, loss - train_loss, train_loss, train_step))


# ----------------------------------------------------------------------------------------------
@dataclass
class PassAtKCallbackConfig(PassAtKConfig):
    """`PassAtKConfig` (what to sample) plus when to sample."""

    every_n_steps: int | None = field(default=None, metadata={"help": "Also measure every N steps (None: off)."})
    on_save: bool = field(default=True, metadata={"help": "Measure on every step the trainer saves a checkpoint."})
    on_train_end: bool = field(default=True, metadata={"help": "Measure at the end of training."})
    background: bool = field(
        default=False,
        metadata={
            "help": "Measure saved checkpoints in a separate process (same code and config) so training does not "
            "wait; results land at the checkpoint's step. Needs a named verifier and the default sampler; "
            "single-process runs only. At the end of training it waits for the last ones."
        },
    )
    background_device: str = field(
        default="cpu", metadata={"help": "Device of the background process: 'cpu' (one thread), 'cuda:1', ..."}
    )
    strict: bool = field(default=False, metadata={"help": "Raise on a failed measurement instead of logging it."})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_schedule(self, "PassAtKCallback")
        kind = self.background_device.split(":")[0]
        require(self, "background_device", kind in ("cpu", "cuda", "xpu", "mps", "npu"), "use 'cpu', 'cuda:1', ...")


class PassAtKCallback(_ScheduledMonitor):
    """Samples n completions per held-out problem at checkpoints and logs pass@k for each k.

    `problems` is a `Dataset` (named "heldout") or a dict name -> Dataset with a prompt column (text or
    messages) and an answer column. `verifier` is a `Verifier` or a name ("answer", "math-verify",
    "toy-steps"); `sampler` defaults to `HFSampler`. Logs `sftrl/passk/<set>/pass@<k>` per k (unbiased
    estimator), `pass@<K>_extrapolated` for `extrapolate_ks`, plus `mean_completion_tokens`,
    `truncation_rate`, `num_problems` and `samples`; writes the raw per-problem counts and sample
    completions to `<output_dir>/sftrl/passk/step-<step>_<set>.json` and, on saves, to
    `<checkpoint>/sftrl/passk_<set>.json` (a `/` in a set name is written as `%2F` in file names).
    """

    _what = "pass@k"

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
            check_problems(ds, self.config, name)
        self.problems = dict(problems)
        self.verifier = make_verifier(verifier, answer_column=self.config.answer_column)
        self._guarded = GuardedVerifier(self.verifier, self.config.verifier_timeout_s)
        for name, ds in self.problems.items():
            probe_verifier(self._guarded, ds[0], f"problem set {name!r}")
        self.sampler = sampler or HFSampler()
        if not isinstance(self.sampler, Sampler):
            raise TypeError(f"{type(self.sampler).__name__} is not a Sampler: it needs sample(model, tokenizer, ...).")
        if self.config.background and (not isinstance(verifier, str) or sampler is not None):
            raise ValueError(
                "PassAtKCallback(background=True) measures in another process, which rebuilds the verifier from "
                "its name and uses the default sampler: pass verifier='answer' / 'math-verify' / 'toy-steps' and "
                "no sampler."
            )
        self.verifier_name = verifier if isinstance(verifier, str) else None

    def on_train_begin(self, args, state, control, processing_class=None, **kwargs):
        self._attach(args, state)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if tokenizer is None:
            raise ValueError(
                "PassAtKCallback needs the trainer's tokenizer to sample: "
                "pass processing_class=<tokenizer> to the trainer."
            )
        for name, ds in self.problems.items():
            prompts = ds[: self.config.num_problems or len(ds)][self.config.prompt_column]
            if any(not isinstance(p, str) for p in prompts) and not getattr(tokenizer, "chat_template", None):
                raise ValueError(
                    f"Problem set {name!r} has chat-message prompts but the tokenizer has no chat_template: "
                    "set tokenizer.chat_template or give plain-text prompts."
                )
        if self.config.background and args.world_size > 1:
            raise ValueError(
                "PassAtKCallback(background=True) is for single-process runs; under DDP / FSDP measure on the ranks "
                "(the default) or run `sftrl eval --watch` beside the training."
            )
        if self.config.background and saves_only_deepspeed_shards(args):
            raise ValueError(
                "PassAtKCallback(background=True) loads each saved checkpoint's weights, but under DeepSpeed ZeRO-3 "
                "without stage3_gather_16bit_weights_on_model_save the checkpoints hold only DeepSpeed's shards: set "
                "it to true in the DeepSpeed config, or measure in the training process (background=False)."
            )
        if self.config.background and self.background is None:
            workdir = os.path.join(self.hub.output_dir, "sftrl", "background")
            self.background = BackgroundPassAtK(
                workdir, self.problems, self.verifier_name, self.config, tokenizer, self.config.background_device
            )
        if not (self.config.every_n_steps or self.config.on_train_end) and args.save_strategy == "no":
            raise ValueError(
                "PassAtKCallback measures only on saves (on_save=True, every_n_steps=None, on_train_end=False), but "
                "save_strategy='no': it would never run. Set every_n_steps or on_train_end, or save checkpoints."
            )
        if self._unfinished:
            self._safely("background pass@k resubmission", self._resubmit_unfinished)

    def _start_run(self) -> None:
        super()._start_run()
        self.results: dict[str, list[PassAtKResult]] = defaultdict(list)  # this process's results, in memory
        self.background: BackgroundPassAtK | None = None
        self._unfinished: list[int] = []  # background steps a resumed checkpoint had not seen measured

    def export_state(self) -> dict:
        state = super().export_state()
        if self.background is not None and self.background.pending:
            state["background_pending"] = self.background.pending_steps
        return state

    def load_state(self, data: Mapping[str, Any]) -> None:
        super().load_state(data)
        self._unfinished = [int(step) for step in data.get("background_pending", [])]

    def _resubmit_unfinished(self) -> None:
        """A resumed run measures again the checkpoints whose background jobs had not reported by its checkpoint."""
        steps, self._unfinished = self._unfinished, []
        for step in steps:
            left = self.background.copy_path(step)  # the stopped run's own copy, if still there
            source = left if os.path.isdir(left) else self.hub.checkpoint_dir(step)
            if not os.path.isdir(source):
                self.errors += 1
                logger.error(
                    "sftrl: the background pass@k of step %d had not finished when the run stopped, and neither "
                    "%s nor %s exists any more: step %d stays unmeasured",
                    step,
                    left,
                    self.hub.checkpoint_dir(step),
                    step,
                )
                continue
            logger.warning("sftrl: measuring step %d again: its background pass@k had not reported at resume", step)
            self._submit(step, source)

    def _due(self, state: TrainerState, control: TrainerControl) -> bool:
        if not self.config.background:
            return super()._due(state, control)
        # Saved checkpoints go to the background process (on_save); what is not saved is measured here.
        every = self.config.every_n_steps
        end = self.config.on_train_end and control.should_training_stop and not control.should_save
        return bool((every and state.global_step % every == 0) or end)

    def on_epoch_end(self, args, state, control, **kwargs):
        if not self.config.background:
            super().on_epoch_end(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        if self.background is not None:
            self._safely("background pass@k", self._collect, self.background.collect)

    def _label(self) -> str:
        return f"PassAtKCallback[{','.join(self.set_names)}]"

    @property
    def set_names(self) -> list[str]:
        return list(self.problems)

    def on_save(self, args, state, control, **kwargs):
        if self.config.background and self.config.on_save and state.global_step != self._last_step:
            self._last_step = state.global_step  # measured by the background job: not again at the end
            self._safely("background pass@k submission", self._submit, state.global_step)
        elif self.hub.is_main:
            self._safely("pass@k checkpoint copy", self._copy_to_checkpoint, state.global_step)
        super().on_save(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)
        if self.background is not None and self.background.pending:
            logger.warning("sftrl: waiting for %d background pass@k job(s)", self.background.pending)
            self._safely("background pass@k", self._collect, self.background.wait)
            self.hub.merge_into_log(state, None)

    def _submit(self, step: int, checkpoint: str | None = None) -> None:
        self.background.submit(step, checkpoint or self.hub.checkpoint_dir(step))

    def _collect(self, finished: Callable[[], list]) -> None:
        """Publish the jobs `finished()` returns, each at its checkpoint's step."""
        for step, results in finished():
            if isinstance(results, str):
                if self.strict:
                    raise RuntimeError(results)
                self.errors += 1
                logger.error("sftrl: %s", results)
                continue
            for name, result in results.items():
                self._publish(step, name, result)
            if self.hub.is_main:
                self._copy_to_checkpoint(step)

    def _measure(self, state: TrainerState, model, processing_class, shard: Shard) -> None:
        tokenizer = getattr(processing_class, "tokenizer", processing_class)  # a processor wraps one
        step = state.global_step
        for name, problems in self.problems.items():
            result = measure_pass_at_k(
                model, tokenizer, problems, self._guarded, self.config, self.sampler, name, step, shard
            )
            self._publish(step, name, result)

    def _publish(self, step: int, name: str, result: PassAtKResult) -> None:
        self.results[name].append(result)
        self.hub.write_json(self._step_path(step, name), result.to_json())
        self.publish(result.to_record(step))
        points = {**result.pass_at_k, **{k: v["estimate"] for k, v in result.extrapolated.items()}}
        rows = [[k, v, step] for k, v in sorted(points.items())]
        curve = Table(["k", "pass@k", "step"], rows, ("k", "pass@k"), f"{name}: pass@k vs k at step {step}")
        self.hub.media(step, passk_name(name, f"curve_step_{step}"), curve, self.extra_sinks)

    def _step_path(self, step: int, name: str) -> str:
        return os.path.join(self.hub.output_dir, "sftrl", "passk", f"step-{step}_{file_safe(name)}.json")

    def _copy_to_checkpoint(self, step: int) -> None:
        checkpoint = self.hub.checkpoint_dir(step)
        for name in self.problems:
            source = self._step_path(step, name)
            if os.path.isdir(checkpoint) and os.path.exists(source):
                os.makedirs(os.path.join(checkpoint, "sftrl"), exist_ok=True)
                shutil.copyfile(source, os.path.join(checkpoint, "sftrl", f"passk_{file_safe(name)}.json"))


# ----------------------------------------------------------------------------------------------
@dataclass
class RLReadinessConfig:
    """How `RLReadinessCallback` flags overfitting, stops training and picks the RL-start checkpoint."""

    loss_set: str | None = field(default=None, metadata={"help": "Held-out set to watch (default: the first)."})
    passk_set: str | None = field(default=None, metadata={"help": "Pass@k problem set to watch (default: the first)."})
    passk_k: int | None = field(
        default=None, metadata={"help": "The 'large k' to watch (default: the largest measured, not extrapolated)."}
    )
    smoothing: float = field(
        default=DEFAULT_SMOOTHING, metadata={"help": "EMA weight for the loss turn detector (0 = none)."}
    )
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
        check_types(self)
        for name in ("loss_set", "passk_set"):
            require(self, name, getattr(self, name) is None or bool(getattr(self, name)), "name a set or leave None")
        require(self, "passk_k", self.passk_k is None or self.passk_k >= 1, "must be >= 1 or None")
        require(self, "smoothing", 0.0 <= self.smoothing < 1.0, "must be in [0, 1) (0 = no smoothing)")
        for name in ("loss_patience", "passk_patience", "gap_patience"):
            require(self, name, getattr(self, name) >= 1, "must be >= 1")
        require(self, "stop_patience", self.stop_patience >= 0, "must be >= 0")
        require(self, "loss_min_delta", 0 <= self.loss_min_delta < 1, "a relative rise in [0, 1)")
        require(self, "passk_min_delta", 0 <= self.passk_min_delta <= 1, "an absolute drop in [0, 1]")
        require(self, "gap_min_delta", self.gap_min_delta >= 0, "must be >= 0")
        require(self, "early_stopping", self.early_stopping in STOP_POLICIES, f"use one of {list(STOP_POLICIES)}")
        for name in ("loss_weight", "passk_weight"):
            require(self, name, math.isfinite(getattr(self, name)) and getattr(self, name) >= 0, "must be >= 0")
        require(self, "passk_weight", self.loss_weight + self.passk_weight > 0, "it and loss_weight are both 0")


class RLReadinessCallback(_MonitorCallback):
    """Turns the held-out loss and pass@k signals into decisions.

    Constructed with no arguments it listens to every `HeldOutLossCallback` and `PassAtKCallback` of
    the same training run (either or both, in any order); `watch=[...]` names the ones to listen to.
    It:
    - flags the generalization-loss turning point, pass@large-k falling while pass@1 rises, a
      widening train/held-out gap, and NaN / inf measurements (`sftrl/readiness/<flag>_step`
      metrics, metrics.jsonl events, W&B alerts);
    - stops training on a flag if `early_stopping` asks for it (via `control.should_training_stop`,
      no `metric_for_best_model` needed, compatible with `load_best_model_at_end`);
    - ranks saved checkpoints by the readiness score (`readiness.choose_rl_start`) and writes the best
      to `<output_dir>/sftrl/rl_start.json`, protected from checkpoint rotation.
    """

    def __init__(
        self,
        config: RLReadinessConfig | None = None,
        sinks: Sequence[MetricSink] = (),
        watch: Sequence[TrainerCallback] | None = None,
        **config_fields: Any,
    ) -> None:
        self.config = _make_config(RLReadinessConfig, config, config_fields)
        for cb in watch or ():
            if not isinstance(cb, (HeldOutLossCallback, PassAtKCallback)):
                raise TypeError(f"watch= takes HeldOutLossCallback / PassAtKCallback objects, got {type(cb).__name__}.")
        self.watch = list(watch) if watch is not None else None
        super().__init__(strict=self.config.strict, sinks=sinks)

    def _start_run(self) -> None:
        super()._start_run()
        self.tracker = readiness.ReadinessTracker(self.config)
        self.checkpoints: list[int] = []
        self.rl_start: dict | None = None
        self.found: list[str] = []
        self._checked = False
        self._reported: set[str] = set()

    @property
    def flags(self) -> list[Flag]:
        return self.tracker.flags

    def export_state(self) -> dict:
        return {
            **super().export_state(),
            "tracker": self.tracker.to_json(),
            "checkpoints": self.checkpoints,
            "rl_start": self.rl_start,
        }

    def load_state(self, data: Mapping[str, Any]) -> None:
        super().load_state(data)
        self.tracker.load_json(data["tracker"])
        self.checkpoints = list(data["checkpoints"])
        self.rl_start = data["rl_start"]

    # -- wiring ---------------------------------------------------------------------------------
    def _joined(self, hub: RunHub) -> None:
        hub.subscribe(self._on_record)

    def on_step_begin(self, args, state, control, **kwargs):
        if not self._checked:  # every callback's on_train_begin has run: the run's members are known
            self._checked = True
            self._check_sources(args)
        self._check_unmatched(state)

    def _check_unmatched(self, state: TrainerState) -> None:
        """A step begins after the previous step's measurements are all in: check what only they can tell
        (e.g. the set names of the trainer's own eval). Cheap dict lookups; each problem is reported once."""
        unmatched = [u for u in self.tracker.unmatched() if u not in self._reported]
        if unmatched:
            self._reported.update(unmatched)
            self._safely("readiness signal check", self._report_unmatched, state, unmatched)

    def _report_unmatched(self, state: TrainerState, unmatched: list[str]) -> None:
        detail = (
            f"RLReadinessConfig {'; '.join(unmatched)}: not among the measurements, so it is not watched "
            f"(early_stopping={self.config.early_stopping!r} cannot act on it, rl_start.json lacks it)"
        )
        self.hub.event(state.global_step, readiness_name("config_error"), detail=detail, alert=True)
        raise ValueError(detail)

    def _sources(self) -> list[TrainerCallback]:
        members = [cb for cb in self.hub.members.values() if isinstance(cb, (HeldOutLossCallback, PassAtKCallback))]
        return [cb for cb in members if self.watch is None or cb in self.watch]

    def _check_sources(self, args: TrainingArguments) -> None:
        sources = self._sources()
        if self.watch is not None:
            missing = [cb for cb in self.watch if cb not in sources]
            if missing:
                raise ValueError(
                    f"RLReadinessCallback(watch=...) names {', '.join(type(cb).__name__ for cb in missing)} "
                    "that is not among this trainer's callbacks: pass it to the same trainer."
                )
        loss_cbs = [cb for cb in sources if isinstance(cb, HeldOutLossCallback)]
        passk_cbs = [cb for cb in sources if isinstance(cb, PassAtKCallback)]
        if loss_cbs:
            names = [n for cb in loss_cbs for n in cb.set_names] or ["trainer eval"]
            self.found.append("held-out loss (" + ", ".join(names) + ")")
        if passk_cbs:
            self.found.append("pass@k (" + ", ".join(n for cb in passk_cbs for n in cb.set_names) + ")")
        if self.found:
            logger.warning("sftrl RLReadinessCallback: watching %s", " and ".join(self.found))
        else:
            logger.warning(
                "sftrl RLReadinessCallback: no HeldOutLossCallback or PassAtKCallback on this trainer; "
                "nothing to watch."
            )
        c = self.config
        if c.early_stopping in ("loss", "both") and not loss_cbs:
            raise ValueError(f"early_stopping={c.early_stopping!r} needs a HeldOutLossCallback.")
        if c.early_stopping in ("passk", "both") and not passk_cbs:
            raise ValueError(f"early_stopping={c.early_stopping!r} needs a PassAtKCallback.")
        loss_sets = [n for cb in loss_cbs for n in cb.set_names]
        if c.loss_set is not None and loss_cbs and all(cb.datasets for cb in loss_cbs) and c.loss_set not in loss_sets:
            raise ValueError(
                f"RLReadinessConfig.loss_set={c.loss_set!r} is not a held-out set of this run: {loss_sets}"
            )
        passk_sets = {n: cb for cb in passk_cbs for n in cb.set_names}
        if c.passk_set is not None and passk_cbs and c.passk_set not in passk_sets:
            raise ValueError(
                f"RLReadinessConfig.passk_set={c.passk_set!r} is not a problem set of this run: {list(passk_sets)}"
            )
        if c.passk_k is not None and passk_cbs:
            measured = passk_sets[c.passk_set or next(iter(passk_sets))].config.measured_ks()
            if c.passk_k not in measured:
                raise ValueError(
                    f"RLReadinessConfig.passk_k={c.passk_k} is not a k the watched PassAtKCallback measures: "
                    f"{measured} (extrapolated ks are not watched); pick one of those or change its ks / n."
                )
        if args.save_strategy == "no":
            logger.warning("sftrl RLReadinessCallback: save_strategy='no': no checkpoint to rank, no rl_start.json.")
        elif saves_only_deepspeed_shards(args):
            logger.warning(
                "sftrl RLReadinessCallback: DeepSpeed ZeRO-3 without stage3_gather_16bit_weights_on_model_save: the "
                "checkpoints (and the RL-start one) will hold DeepSpeed's shards, not model weights; an RL trainer "
                "needs them converted with the zero_to_fp32.py saved beside them. Set it to true in the DeepSpeed "
                "config to save loadable weights."
            )

    def _on_record(self, source: TrainerCallback, record: Record) -> None:
        if self.watch is None or source in self.watch:
            self._safely("readiness update", self._update, record)

    def _update(self, record: Record) -> None:
        for flag in self.tracker.add(record):
            self._announce(flag)
        if isinstance(record, PassAtKRecord) and record.step in self.checkpoints:  # measured after its save
            self._choose_rl_start(self.hub.state_ref().global_step)

    def _announce(self, flag: Flag) -> None:
        logger.warning("sftrl flag %s: %s", flag.kind, flag.detail)
        self.emit(
            flag.confirmed_step,
            {readiness_name(f"{flag.kind}_step"): flag.began_step},
            began_step=flag.began_step,
            confirmed_step=flag.confirmed_step,
            detail=flag.detail,
        )
        self.hub.event(
            flag.confirmed_step,
            readiness_name(f"flag/{flag.kind}"),
            detail=flag.detail,
            alert=True,
            extra=self.extra_sinks,
            title=f"sftrl: {flag.kind.replace('_', ' ')} at step {flag.began_step}",
            began_step=flag.began_step,
        )

    def _passk_metric(self) -> str | None:
        """The metric name of the watched pass@large-k (None before any pass@k arrived)."""
        _, name, k = self.tracker.watched()
        return passk_name(name, k) if name and k else None

    # -- decisions --------------------------------------------------------------------------------
    def _apply(self, control: TrainerControl, state: TrainerState) -> None:
        if self.tracker.pending_save:
            control.should_save = True
            self.tracker.pending_save = False
        if self.tracker.pending_stop and not control.should_training_stop:
            control.should_training_stop = True
            control.should_save = True  # keep the last state too
            logger.warning(
                "sftrl: stopping training at step %d (early_stopping=%r)", state.global_step, self.config.early_stopping
            )
            self.hub.event(
                state.global_step, readiness_name("stop"), extra=self.extra_sinks, policy=self.config.early_stopping
            )

    def on_step_end(self, args, state, control, **kwargs):
        self._apply(control, state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=logs, **kwargs)
        self._apply(control, state)  # the log of a measurement step comes before its save and stop check

    def on_save(self, args, state, control, **kwargs):
        if state.global_step not in self.checkpoints:
            self.checkpoints.append(state.global_step)
        self._safely("RL-start choice", self._choose_rl_start, state.global_step)
        super().on_save(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.hub is None:
            return
        self._check_unmatched(state)
        self.hub.merge_into_log(state, None)
        self._safely("W&B panels", self._log_panels, state)

    def _log_panels(self, state: TrainerState) -> None:
        """The run's story: a timeline table and chart, the rendered report (for sinks that take media)."""
        takes_media = self.hub.wandb.run is not None or any(hasattr(s, "media") for s in self.extra_sinks)
        if not (self.hub.is_main and takes_media):
            return
        from .report import render_report

        loss, passk, pass1 = (dict(self.tracker.series(k)) for k in ("loss", "passk", "pass1"))
        flagged = {f.began_step: f.kind for f in self.flags}
        rows = [
            [s, loss.get(s), passk.get(s), pass1.get(s), flagged.get(s, "")] for s in sorted(set(loss) | set(passk))
        ]
        columns = ["step", "heldout_loss", "pass@large_k", "pass@1", "flag"]
        step, extra = state.global_step, self.extra_sinks
        self.hub.media(step, readiness_name("timeline"), Table(columns, rows), extra)
        if loss:
            chart = Table(
                columns, rows, ("step", "heldout_loss"), "held-out loss vs step (flags in the timeline table)"
            )
            self.hub.media(step, readiness_name("heldout_loss_chart"), chart, extra)
        png, _ = render_report(self.hub.output_dir)
        self.hub.media(step, readiness_name("report"), Image(png, "sftrl report: flags red, RL start green"), extra)

    def _choose_rl_start(self, step: int) -> None:
        if not self.hub.is_main:
            return
        hub = self.hub
        loss, passk, pass1 = (dict(self.tracker.series(k)) for k in ("loss", "passk", "pass1"))
        protected = self.rl_start["step"] if self.rl_start and os.path.isdir(self.rl_start["path"]) else None
        steps = {s for s in self.checkpoints if os.path.isdir(hub.checkpoint_dir(s))}
        steps = sorted(steps | ({protected} if protected is not None else set()))
        candidates = [Candidate(s, loss.get(s), passk.get(s)) for s in steps]
        choice = readiness.choose_rl_start(
            candidates, self.config.loss_weight, self.config.passk_weight, self.flags, self._passk_metric() or "pass@k"
        )
        if choice is None:
            if steps:
                logger.error("sftrl: no RL-start checkpoint: every saved checkpoint has a NaN / inf signal")
            return
        original = hub.checkpoint_dir(choice.step)
        path = original
        if self.config.protect_rl_start:
            path = protect(original, os.path.join(hub.output_dir, "sftrl", "rl_start"))
        self.rl_start = {
            "path": os.path.abspath(path),
            "checkpoint": os.path.abspath(original),
            "step": choice.step,
            "score": choice.score,
            "metrics": {
                "heldout_loss": loss.get(choice.step),
                "passk": passk.get(choice.step),
                "passk_metric": self._passk_metric(),
                "pass@1": pass1.get(choice.step),
            },
            "why": choice.why,
            "score_formula": SCORE_FORMULA,
            "weights": {"loss": self.config.loss_weight, "passk": self.config.passk_weight},
            "flags": [asdict(f) for f in self.flags],
            "ranking": choice.ranking,
            "excluded": choice.excluded,
        }
        hub.write_json(os.path.join(hub.output_dir, "sftrl", "rl_start.json"), self.rl_start)
        self.emit(step, {readiness_name("rl_start_step"): choice.step, readiness_name("rl_start_score"): choice.score})
        hub.summary(
            {
                "sftrl/rl_start/step": choice.step,
                "sftrl/rl_start/path": self.rl_start["path"],
                "sftrl/rl_start/why": choice.why,
            },
            self.extra_sinks,
        )
