"""What a failing or hung vLLM engine costs an SFT run now. Prints measured numbers. Needs vLLM (`.ci/vllm`):

    /tmp/sftrl-vllm-venv/bin/python benchmarks/engine_failure.py

A 12-step toy SFT run with pass@k every 3 steps through `sampler="vllm"`; vLLM's scheduler is made to raise
(case "raises") or to spin forever (case "hangs", as the issue's engine did) during the step-6 measurement. For each
step with a measurement it prints the time between the end of that training step and the start of the next one:
the measurement itself, a failed one (raise or bound reached, then training goes on) and the next one (which starts
a new engine and pushes the weights again).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from transformers import TrainerCallback
from trl import SFTTrainer
from vllm.v1.core.sched.scheduler import Scheduler

from sftrl_callbacks import PassAtKCallback
from sftrl_callbacks.demo import toy_sft_config
from sftrl_callbacks.toy import build_model, build_tokenizer, make_splits

ENGINE = {"max_model_len": 256, "enforce_eager": True, "kv_cache_memory_bytes": 2**29}


class Gaps(TrainerCallback):
    """Seconds from the end of each step to the start of the next (the callbacks after it run in between)."""

    def __init__(self) -> None:
        self.ended, self.gaps = {}, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.ended[state.global_step] = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step in self.ended:
            self.gaps[state.global_step] = time.perf_counter() - self.ended[state.global_step]


def run(case: str, bound: float) -> None:
    armed = {"step": None}
    schedule = Scheduler.schedule

    def faulty(self, *args, **kwargs):
        if armed["step"] == 6:
            armed["step"] = None
            if case == "raises":
                raise RuntimeError("injected engine failure")
            while True:
                pass
        return schedule(self, *args, **kwargs)

    Scheduler.schedule = faulty

    class Arm(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            armed["step"] = state.global_step

    tokenizer, splits = build_tokenizer(), make_splits(n_train=400, n_heldout_sft=8, n_heldout_problems=16, seed=0)
    gaps = Gaps()
    passk = PassAtKCallback(
        {"p": splits.heldout_problems},
        sampler="vllm",
        sampler_options=ENGINE,
        n=8,
        max_new_tokens=40,
        every_n_steps=3,
        measure_at_start=False,
        on_train_end=False,
        measurement_timeout_s=bound,
    )
    with tempfile.TemporaryDirectory() as out:
        args = toy_sft_config(out, 12, [], save_strategy="no", logging_steps=50)
        trainer = SFTTrainer(
            model=build_model(tokenizer, seed=0),
            args=args,
            train_dataset=splits.train,
            processing_class=tokenizer,
            callbacks=[gaps, Arm(), passk],
        )
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    Scheduler.schedule = schedule
    steps = sorted(s for s in gaps.gaps if s % 3 == 0)
    print(f"case {case!r} (measurement_timeout_s={bound:g}): run {total:.1f} s, {passk.errors} failed measurement(s)")
    for step in steps:
        what = {3: "first (starts the engine)", 6: f"the {case} one", 9: "next (new engine)"}.get(step, "")
        print(f"  step {step:2d}: {gaps.gaps[step]:6.2f} s between steps  {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bound", type=float, default=10.0, help="measurement_timeout_s of the runs")
    ns = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    for case in ("raises", "hangs"):
        run(case, ns.bound)


if __name__ == "__main__":
    main()
