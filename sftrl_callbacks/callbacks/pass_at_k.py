"""`PassAtKCallback`: pass@k of held-out problems at checkpoints, sampled in the training process or, with
`background=True`, in background processes (`background_jobs`, set up at train start)."""

from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from datasets import Dataset
from transformers import TrainerControl, TrainerState

from .. import layout
from ..background import BackgroundPassAtK
from ..checkpoints import saves_only_deepspeed_shards
from ..checks import require
from ..contracts import PassAtKConfig, PassAtKResult, Sampler, describe_sampler, make_sampler, sampler_hook
from ..distributed import Shard
from ..hub import Source
from ..measure import check_problems, check_prompts_fit, explain_reasoning_format, measure_pass_at_k
from ..records import passk_name
from ..report import completions_table, passk_curve_table
from ..sinks import MetricSink
from ..verifiers import GuardedVerifier, Verifier, make_verifier, probe_verifier
from .base import ScheduleConfig, ScheduledMonitor, make_config, named_sets, text_tokenizer

logger = logging.getLogger("sftrl_callbacks")


@dataclass
class PassAtKCallbackConfig(ScheduleConfig, PassAtKConfig):
    """`PassAtKConfig` (what to sample) plus when, and where: in training or in a background process."""

    background: bool = field(
        default=False,
        metadata={
            "help": "Measure saved checkpoints in a separate process (same code and config, the trainer's tokenizer) "
            "so training does not wait; results land at the checkpoint's step. Needs a named verifier and a named "
            "sampler; single-process runs only. At the end of training it waits for the last ones."
        },
    )
    background_device: str = field(
        default="cpu",
        metadata={
            "help": "Device of the background process: 'cpu' (one thread while training runs; all of them for the "
            "last save, measured after training), 'cuda:1', ..."
        },
    )

    def __post_init__(self) -> None:
        PassAtKConfig.__post_init__(self)
        self.check_schedule("PassAtKCallback")
        kind = self.background_device.split(":")[0]
        require(self, "background_device", kind in ("cpu", "cuda", "xpu", "mps", "npu"), "use 'cpu', 'cuda:1', ...")


class PassAtKCallback(ScheduledMonitor):
    """Samples n completions per held-out problem at checkpoints and logs pass@k for each k.

    `problems` is a `Dataset` (named "heldout") or a dict name -> Dataset with a prompt column (text or
    messages) and an answer column. `verifier` is a `Verifier` or a name ("answer", "math-verify",
    "toy-steps"); `sampler` is a `Sampler` or a built-in sampler's name ("hf": `HFSampler`, the default; "vllm":
    `VLLMSampler`), which sets the config's `sampler` field. Logs `sftrl/passk/<set>/pass@<k>` per k (unbiased
    estimator), `pass@<K>_extrapolated` for `extrapolate_ks`, plus `mean_completion_tokens`,
    `truncation_rate`, `num_problems` and `samples`; writes the raw per-problem counts and sample
    completions to `<output_dir>/sftrl/passk/step-<step>_<set>.json` and, on saves, to
    `<checkpoint>/sftrl/passk_<set>.json` (a `/` in a set name is written as `%2F` in file names).
    """

    _what = "pass@k"
    _group = "passk"

    def __init__(
        self,
        problems: Dataset | Mapping[str, Dataset],
        verifier: Verifier | str = "answer",
        config: PassAtKCallbackConfig | None = None,
        sampler: Sampler | str | None = None,
        sinks: Sequence[MetricSink] = (),
        **config_fields: Any,
    ) -> None:
        if isinstance(sampler, str):  # a built-in sampler by name: the config's own field
            if config is None:
                config_fields["sampler"] = sampler
            else:
                config = replace(config, sampler=sampler)
            sampler = None
        super().__init__(make_config(PassAtKCallbackConfig, config, config_fields), sinks)
        self.problems = named_sets(problems, "problems", "Problem set")
        for name, ds in self.problems.items():
            check_problems(ds, self.config, name)
        self.verifier = make_verifier(verifier, self.config.verifier_options, self.config.answer_column)
        self._guarded = GuardedVerifier(self.verifier, self.config.verifier_timeout_s)
        for name, ds in self.problems.items():
            used = ds.select(range(self.config.num_used(len(ds))))
            probe_verifier(self._guarded, ds[0], f"problem set {name!r}", self.config.score_threshold, used)
        # Made now, so that a missing engine (vLLM) or a bad option fails here rather than at the first measurement.
        self.sampler = sampler or make_sampler(self.config.sampler, self.config.sampler_options)
        if not isinstance(self.sampler, Sampler):
            raise TypeError(f"{type(self.sampler).__name__} is not a Sampler: it needs sample(model, tokenizer, ...).")
        if self.config.background and (not isinstance(verifier, str) or sampler is not None):
            raise ValueError(
                "PassAtKCallback(background=True) measures in another process, which rebuilds the verifier and the "
                "sampler from their names: pass verifier='answer' / 'math-verify' / 'toy-steps' and a sampler name "
                "('hf', 'vllm'), not objects."
            )
        self.verifier_name = verifier if isinstance(verifier, str) else None

    def metric_fields(self) -> set[str]:
        return {f"pass@{k}" for k in self.config.measured_ks()} | {
            f"pass@{k}_extrapolated" for k in self.config.extrapolated_ks()
        }

    def _check_best_model_source(self) -> None:
        if self.config.background:
            raise ValueError(
                "metric_for_best_model names a pass@k that PassAtKCallback(background=True) measures in another "
                "process: its value arrives after the trainer's evaluation has chosen. Set background=False."
            )

    def _prepare(self, args, processing_class, model) -> None:
        tokenizer = text_tokenizer(processing_class)
        if tokenizer is None:
            raise ValueError(
                "PassAtKCallback needs the trainer's tokenizer to sample: "
                "pass processing_class=<tokenizer> to the trainer."
            )
        for name, ds in self.problems.items():
            check_prompts_fit(model, tokenizer, ds, self.config, name, self.sampler)
        explain_reasoning_format(tokenizer, self.problems, self.config)
        sampler_hook(self.sampler, "check_model")(model)  # e.g. a head size the engine cannot run: before step 1
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
        if not (self.config.every_n_steps or self.config.on_train_end) and args.save_strategy == "no":
            raise ValueError(
                "PassAtKCallback measures only on saves (on_save=True, every_n_steps=None, on_train_end=False), but "
                "save_strategy='no': it would never run. Set every_n_steps or on_train_end, or save checkpoints."
            )
        if self.config.background and self.background_jobs is None:  # last: it starts the worker process
            self.background_jobs = BackgroundPassAtK(
                self.hub.output_dir,
                self.problems,
                self.verifier_name,
                self.config,
                tokenizer,
                self.config.background_device,
            )
        if self._unfinished:
            self._safely("background pass@k resubmission", self._resubmit_unfinished)

    def _start_run(self) -> None:
        super()._start_run()
        self.results: dict[str, list[PassAtKResult]] = defaultdict(list)  # this process's results, in memory
        # Who measures saved checkpoints: None, this process (on their save step); else these background jobs.
        self.background_jobs: BackgroundPassAtK | None = None
        self._unfinished: list[int] = []  # background steps a resumed checkpoint had not seen measured

    def export_state(self) -> dict:
        state = super().export_state()
        if self.background_jobs is not None and self.background_jobs.pending_steps:
            state["background_pending"] = self.background_jobs.pending_steps
        return state

    def load_state(self, data: Mapping[str, Any]) -> None:
        super().load_state(data)
        self._unfinished = [int(step) for step in data.get("background_pending", [])]

    def _resubmit_unfinished(self) -> None:
        """A resumed run measures again the checkpoints whose background jobs had not reported by its checkpoint."""
        steps, self._unfinished = self._unfinished, []
        if self.background_jobs is None:
            self._fail(f"steps {steps} had background pass@k pending; without background=True they stay unmeasured")
            return
        for step in steps:
            left = self.background_jobs.copy_path(step)  # the stopped run's own copy, if still there
            source = left if os.path.isdir(left) else self.hub.checkpoint_dir(step)
            if not os.path.isdir(source):
                self._fail(
                    f"the background pass@k of step {step} had not finished when the run stopped, and neither {left} "
                    f"nor {self.hub.checkpoint_dir(step)} exists any more: step {step} stays unmeasured"
                )
                continue
            logger.warning("sftrl: measuring step %d again: its background pass@k had not reported at resume", step)
            self.background_jobs.submit(step, source)

    def _due(self, state: TrainerState, control: TrainerControl) -> bool:
        if self.background_jobs is None:
            return super()._due(state, control)
        # Saved checkpoints go to the background process (on_save); what is not saved is measured here.
        every = self.config.every_n_steps
        end = self.config.on_train_end and control.should_training_stop and not control.should_save
        return bool((every and state.global_step % every == 0) or end)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.background_jobs is None:
            super().on_epoch_end(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        if self.background_jobs is not None and self.background_jobs.pending_steps:
            self._safely("background pass@k", self._collect, self.background_jobs.collect)

    def _label(self) -> str:
        return f"PassAtKCallback[{','.join(self.set_names)}]"

    @property
    def set_names(self) -> list[str]:
        return list(self.problems)

    def source(self) -> Source:
        return Source(self._group, tuple(self.problems), tuple(self.config.measured_ks()))

    def on_save(self, args, state, control, **kwargs):
        if self.background_jobs is not None and self.config.on_save and state.global_step != self._last_step:
            self._last_step = state.global_step  # measured by the background job: not again at the end
            checkpoint = self.hub.checkpoint_dir(state.global_step)
            submit = self.background_jobs.submit
            # the run's last save: training is over by the time it runs, so it may use every CPU thread
            self._safely(
                "background pass@k submission", submit, state.global_step, checkpoint, control.should_training_stop
            )
        elif self.hub.is_main:
            self._safely("pass@k checkpoint copy", self._copy_to_checkpoint, state.global_step)
        super().on_save(args, state, control, **kwargs)

    def _after_timeout(self) -> None:
        bound = self.config.measurement_timeout_s
        sampler_hook(self.sampler, "reset")(f"the measurement ran past its {bound:g} s bound")

    def _failure_context(self) -> dict[str, Any]:
        return {"sampler": describe_sampler(self.sampler), "sets": list(self.problems)}

    def _end_of_training(self, args, state, control, **kwargs):
        super()._end_of_training(args, state, control, **kwargs)
        if self.background_jobs is not None and self.background_jobs.pending_steps:
            logger.warning("sftrl: waiting for %d background pass@k job(s)", len(self.background_jobs.pending_steps))
            self._safely("background pass@k", self._collect, self.background_jobs.wait)
            self.hub.merge_into_log(state, None)
        if self.background_jobs is not None:
            self._safely("background pass@k worker shutdown", self.background_jobs.close)

    def _collect(self, finished: Callable[[], list]) -> None:
        """Publish the jobs `finished()` returns, each at its checkpoint's step."""
        for step, results in finished():
            if isinstance(results, str):
                self._fail(results)
                continue
            for name, result in results.items():
                self._record_result(step, name, result)
            if self.hub.is_main:
                self._copy_to_checkpoint(step)

    def _measure(self, state: TrainerState, model, processing_class, shard: Shard) -> None:
        tokenizer, step = text_tokenizer(processing_class), state.global_step
        for name, problems in self.problems.items():
            result = measure_pass_at_k(
                model, tokenizer, problems, self._guarded, self.config, self.sampler, name, step, shard, checked=True
            )
            self._record_result(step, name, result)

    def _record_result(self, step: int, name: str, result: PassAtKResult) -> None:
        self.results[name].append(result)
        self.hub.write_json(self._step_path(step, name), result.to_json())
        if result.completions is not None and self.hub.is_main:  # measured here (a background job writes its own)
            path = layout.completions_path(self.hub.output_dir, step, name)
            self._safely("writing the completions", result.write_completions, path)
            result.completions = None  # on disk now; the results kept in memory stay small
        self.publish(result.to_record(step))
        if self.hub.takes_media(self.extra_sinks):
            curve, completions = passk_curve_table(result, step), completions_table(result, step)
            self.hub.media(step, passk_name(name, f"curve_step_{step}"), curve, self.extra_sinks)
            self.hub.media(step, passk_name(name, "completions"), completions, self.extra_sinks)

    def _step_path(self, step: int, name: str) -> str:
        return layout.passk_step_path(self.hub.output_dir, step, name)

    def _copy_to_checkpoint(self, step: int) -> None:
        checkpoint = self.hub.checkpoint_dir(step)
        for name in self.problems:
            source = self._step_path(step, name)
            if os.path.isdir(checkpoint) and os.path.exists(source):
                target = layout.checkpoint_passk_path(checkpoint, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(source, target)
