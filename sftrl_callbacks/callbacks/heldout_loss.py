"""`HeldOutLossCallback`: the loss on held-out SFT examples (the generalization loss), on a schedule."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset
from transformers import TrainerState

from .. import readiness
from ..checks import check_types, require
from ..distributed import Shard
from ..heldout import examples_from_trainer_args, heldout_loss
from ..hub import Source
from ..prompts import pad_token_id
from ..readiness import DEFAULT_SMOOTHING
from ..records import GapRecord, LossRecord, heldout_name
from ..sinks import MetricSink
from ..verifiers.reasoning import DEFAULT_DELIMITERS, ReasoningFormat
from .base import ScheduleConfig, ScheduledMonitor, make_config, named_sets, text_tokenizer

logger = logging.getLogger("sftrl_callbacks")


@dataclass
class HeldOutLossConfig(ScheduleConfig):
    """When and how `HeldOutLossCallback` measures the held-out (generalization) loss."""

    every_n_steps: int | None = field(
        default=50, metadata={"help": "Measure every N optimizer steps (None or 0: only at saves and the end)."}
    )
    batch_size: int = field(default=32, metadata={"help": "Examples per forward pass."})
    max_examples: int | None = field(
        default=None, metadata={"help": "Use only the first N examples of each set (None: all)."}
    )
    smoothing: float = field(
        default=DEFAULT_SMOOTHING,
        metadata={"help": "EMA weight of the previous smoothed value (TensorBoard-style); 0 turns smoothing off."},
    )
    reasoning_delimiters: list[str] | None = field(
        default_factory=lambda: list(DEFAULT_DELIMITERS),
        metadata={
            "help": "The thinking block's delimiters: when the held-out rows hold such blocks, also log loss_thinking "
            "(scored tokens inside them, delimiters included) and loss_answer (the other scored tokens). None: "
            "only the whole loss."
        },
    )
    use_trainer_eval: bool = field(
        default=False,
        metadata={
            "help": "Do not compute: re-log the trainer's own `eval_loss` / `eval_<name>_loss` under sftrl names "
            "(for users who already evaluate with eval_strategy)."
        },
    )

    def __post_init__(self) -> None:
        check_types(self)
        self.check_schedule("HeldOutLossCallback", self.use_trainer_eval)
        require(self, "batch_size", self.batch_size >= 1, "must be >= 1")
        require(self, "max_examples", self.max_examples is None or self.max_examples >= 1, "must be >= 1 or None")
        require(self, "smoothing", 0.0 <= self.smoothing < 1.0, "must be in [0, 1) (0 = no smoothing)")
        ReasoningFormat.check_config(self)


class HeldOutLossCallback(ScheduledMonitor):
    """Tracks the loss on held-out SFT examples: the generalization loss that predicts RL gains.

    `datasets` is one `Dataset` (named "heldout") or a dict name -> Dataset in any format SFTTrainer
    accepts; examples are tokenized and masked as SFTTrainer does with the trainer's `SFTConfig`.
    Per set it logs `sftrl/heldout/<set>/loss` (token-weighted mean NLL over all scored tokens),
    `loss_min` and `loss_min_step`, `loss_smoothed`, and `gap`: held-out loss minus the training
    loss the trainer logs at the same step. When the rows hold thinking blocks (`reasoning_delimiters`), also
    `loss_thinking` and `loss_answer`: the same token-weighted loss over the scored tokens inside the blocks and
    over the rest.
    """

    _what = "held-out loss"
    _group = "heldout"

    def __init__(
        self,
        datasets: Dataset | Mapping[str, Dataset] | None = None,
        config: HeldOutLossConfig | None = None,
        sinks: Sequence[MetricSink] = (),
        **config_fields: Any,
    ) -> None:
        super().__init__(make_config(HeldOutLossConfig, config, config_fields), sinks)
        if datasets is None and not self.config.use_trainer_eval:
            raise ValueError("Give held-out datasets=, or use_trainer_eval=True to re-log the trainer's eval loss.")
        if datasets is not None and self.config.use_trainer_eval:
            raise ValueError("use_trainer_eval=True re-logs the trainer's eval loss; do not also pass datasets=.")
        self.datasets = named_sets(datasets, "datasets", "Held-out set") if datasets is not None else {}
        for name, ds in self.datasets.items():
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

    def source(self) -> Source:
        return Source(self._group, tuple(self.datasets))  # no sets: the trainer's eval names them

    def metric_fields(self) -> set[str]:
        return {"loss", "loss_min", "loss_min_step", "loss_smoothed", "gap", "loss_thinking", "loss_answer"}

    def _prepare(self, args, processing_class, model) -> None:
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
            tokenizer = text_tokenizer(processing_class)
            reasoning = ReasoningFormat.from_delimiters(self.config.reasoning_delimiters)
            for name, ds in self.datasets.items():
                where = f"held-out {name!r}"
                self._examples[name] = examples_from_trainer_args(ds, tokenizer, args, where, reasoning)

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
        pad = pad_token_id(text_tokenizer(processing_class))
        for name, examples in self._examples.items():
            result = heldout_loss(model, examples, self.config.batch_size, pad, shard)
            by_class = {}
            if result.thinking_loss is not None:
                by_class = dict(
                    loss_thinking=result.thinking_loss,
                    loss_answer=result.answer_loss,
                    thinking_tokens=result.thinking_tokens,
                )
            self._record(
                state.global_step, name, result.loss, n_tokens=result.n_tokens, n_examples=result.n_examples, **by_class
            )

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
