"""A toy SFT run with the three callbacks that can kill itself (SIGKILL) at a step, or resume.

Used by test_resume.py as a subprocess: `python -m tests.resume_run OUT [--kill-at STEP] [--resume]`.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from sftrl_callbacks import HeldOutLossCallback, PassAtKCallback, RLReadinessCallback
from sftrl_callbacks.demo import toy_sft_config
from sftrl_callbacks.toy import StepVerifier, build_model, build_tokenizer, make_splits


class KillAt(TrainerCallback):
    """Hard-kills this process at the end of a step, after everything else on that step ran."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--max-steps", type=int, default=100)
    ns = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    # 32 unique rows, a whole epoch a step: the held-out loss bottoms out near step 40 and rises, so the RL start is
    # an early checkpoint that save_total_limit rotates away (only its protected copy keeps it).
    data = make_splits(n_train=32, n_heldout_sft=64, n_heldout_problems=6, seed=0, unique_train=True)
    callbacks = [
        HeldOutLossCallback({"math/val": data.heldout_sft}, every_n_steps=10),
        PassAtKCallback({"math/val": data.heldout_problems}, verifier=StepVerifier(), n=4, max_new_tokens=40),
        RLReadinessCallback(),
    ]
    if ns.kill_at:
        callbacks.append(KillAt(ns.kill_at))
    args = toy_sft_config(
        ns.output_dir,
        ns.max_steps,
        [],
        save_steps=20,
        save_total_limit=2,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        logging_steps=10,
    )
    trainer = SFTTrainer(
        model=build_model(tokenizer, seed=0),
        args=args,
        train_dataset=data.train,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=True if ns.resume else None)


if __name__ == "__main__":
    main()
