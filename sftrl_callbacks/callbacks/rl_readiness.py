"""`RLReadinessCallback`: flags, early stopping and the RL-start checkpoint, from the measurements its run's
sources send (`HeldOutLossCallback`, `PassAtKCallback`); the decisions themselves are `readiness.py`'s."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .. import layout, readiness
from ..checkpoints import protect, saves_only_deepspeed_shards
from ..checks import check_types, require
from ..hub import RunHub, Source
from ..readiness import DEFAULT_SMOOTHING, STOP_POLICIES, Candidate, Flag
from ..records import PassAtKRecord, Record, passk_name, readiness_name
from ..report import run_panels
from ..sinks import MetricSink
from .base import MonitorCallback, ScheduledMonitor, make_config

logger = logging.getLogger("sftrl_callbacks")


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


class RLReadinessCallback(MonitorCallback):
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
        for cb in watch or ():
            if not isinstance(cb, ScheduledMonitor):  # the measuring sftrl callbacks
                raise TypeError(f"watch= takes HeldOutLossCallback / PassAtKCallback objects, got {type(cb).__name__}.")
        self.watch = list(watch) if watch is not None else None
        super().__init__(make_config(RLReadinessConfig, config, config_fields), sinks)

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

    def _sources(self) -> list[tuple[TrainerCallback, Source]]:
        return [(cb, source) for cb, source in self.hub.sources() if self.watch is None or cb in self.watch]

    def _check_sources(self, args: TrainingArguments) -> None:
        sources = self._sources()
        if self.watch is not None:
            missing = [cb for cb in self.watch if cb not in [cb for cb, _ in sources]]
            if missing:
                raise ValueError(
                    f"RLReadinessCallback(watch=...) names {', '.join(type(cb).__name__ for cb in missing)} "
                    "that is not among this trainer's callbacks: pass it to the same trainer."
                )
        loss = [source for _, source in sources if source.group == "heldout"]
        passk = [source for _, source in sources if source.group == "passk"]
        loss_sets = [name for source in loss for name in source.sets]
        passk_sets = {name: source for source in passk for name in source.sets}
        if loss:
            self.found.append("held-out loss (" + ", ".join(loss_sets or ["trainer eval"]) + ")")
        if passk:
            self.found.append("pass@k (" + ", ".join(passk_sets) + ")")
        if self.found:
            logger.warning("sftrl RLReadinessCallback: watching %s", " and ".join(self.found))
        else:
            logger.warning(
                "sftrl RLReadinessCallback: no HeldOutLossCallback or PassAtKCallback on this trainer; "
                "nothing to watch."
            )
        c = self.config
        if c.early_stopping in ("loss", "both") and not loss:
            raise ValueError(f"early_stopping={c.early_stopping!r} needs a HeldOutLossCallback.")
        if c.early_stopping in ("passk", "both") and not passk:
            raise ValueError(f"early_stopping={c.early_stopping!r} needs a PassAtKCallback.")
        # Sets re-logged from the trainer's eval are named only when it evaluates: checked at the first one.
        if c.loss_set is not None and loss and all(source.sets for source in loss) and c.loss_set not in loss_sets:
            raise ValueError(
                f"RLReadinessConfig.loss_set={c.loss_set!r} is not a held-out set of this run: {loss_sets}"
            )
        if c.passk_set is not None and passk and c.passk_set not in passk_sets:
            raise ValueError(
                f"RLReadinessConfig.passk_set={c.passk_set!r} is not a problem set of this run: {list(passk_sets)}"
            )
        if c.passk_k is not None and passk:
            measured = list(passk_sets[c.passk_set or next(iter(passk_sets))].ks)
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
        # The step-0 baseline (measure_at_start) is the model SFT received: a reference for the charts and the
        # report, not a point of the SFT trajectory whose turns the flags and the stop policy watch.
        if record.step == 0:
            return
        if self.watch is None or source in self.watch:
            self._safely("readiness update", self._update, record)

    def _update(self, record: Record) -> None:
        for flag in self.tracker.add(record):
            self._announce(flag)
        if isinstance(record, PassAtKRecord) and record.step in self.checkpoints:  # measured after its save
            self._choose_rl_start(self.hub.state_ref().global_step)

    def _announce(self, flag: Flag) -> None:
        logger.warning("sftrl flag %s: %s", flag.kind, flag.detail)
        self.log_metrics(
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
        self._summarize_failures()

    def _log_panels(self, state: TrainerState) -> None:
        """The run's story for trackers that take media: a timeline table and chart, the rendered report."""
        if not self.hub.takes_media(self.extra_sinks):
            return
        series = {kind: dict(self.tracker.series(kind)) for kind in ("loss", "passk", "pass1")}
        for name, item in run_panels(self.hub.output_dir, series, self.flags):
            self.hub.media(state.global_step, readiness_name(name), item, self.extra_sinks)

    def _missing_signals(self, step: int, loss: Mapping[int, float], passk: Mapping[int, float]) -> dict[str, str]:
        """Why a signal of checkpoint `step` is missing: the failure of what measures it there, or nothing measuring."""
        out = {}
        for signal, group, series, what in (
            ("heldout_loss", "heldout", loss, "held-out loss"),
            ("passk", "passk", passk, "pass@k"),
        ):
            if series.get(step) is not None:
                continue
            measuring = [cb for cb, source in self._sources() if source.group == group]
            failed = [
                f"{cb._label()} failed: {cb.failures[step]}" for cb in measuring if step in getattr(cb, "failures", {})
            ]
            if failed:
                out[signal] = "; ".join(failed)
            elif not measuring:
                out[signal] = f"nothing on this trainer measures the {what}"
            else:
                out[signal] = f"no {what} measured at step {step} (not on its schedule, or not yet reported)"
        return out

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
            path = protect(original, layout.rl_start_copy_dir(hub.output_dir))
        signals = {
            "heldout_loss": loss.get(choice.step),
            "passk": passk.get(choice.step),
            "passk_metric": self._passk_metric(),
            "pass@1": pass1.get(choice.step),
        }
        weights = {"loss": self.config.loss_weight, "passk": self.config.passk_weight}
        for row in choice.ranking:
            row["missing"] = self._missing_signals(row["step"], loss, passk)
        missing = self._missing_signals(choice.step, loss, passk)
        self.rl_start = readiness.rl_start_document(choice, path, original, signals, weights, self.flags, missing)
        hub.write_json(layout.rl_start_path(hub.output_dir), self.rl_start)
        self.log_metrics(
            step, {readiness_name("rl_start_step"): choice.step, readiness_name("rl_start_score"): choice.score}
        )
        hub.summary(
            {
                "sftrl/rl_start/step": choice.step,
                "sftrl/rl_start/path": self.rl_start["path"],
                "sftrl/rl_start/why": choice.why,
            },
            self.extra_sinks,
        )
