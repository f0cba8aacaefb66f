"""The callbacks' share of SFT wall time, and what each measurement costs. Prints measured numbers.

    python benchmarks/monitor_share.py                                   # CPU: the toy model, short run
    python benchmarks/monitor_share.py --model 33m --device cuda         # ../shared/GPU.md part A (bf16)
    python benchmarks/monitor_share.py --model 403m --device cuda --steps 300 --save-steps 150

The toy task with the three callbacks at the library's defaults, except for the pass@k budget: held-out
loss of 256 examples every 50 steps (the default schedule), pass@k with n = 64 on 64 problems (at most 48
new tokens, strict step verifier) at every save, `RLReadinessCallback()`. The share is the callbacks'
blocking time over the time `trainer.train()` took. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from sftrl_callbacks import HeldOutLossCallback, PassAtKCallback, RLReadinessCallback
from sftrl_callbacks.demo import machine_summary, toy_sft_config
from sftrl_callbacks.toy import build_model, build_tokenizer, make_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", choices=["toy", "33m", "403m"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="default: 600 on CUDA, 200 on CPU")
    parser.add_argument("--save-steps", type=int, default=None, help="default: a third of the steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--n", type=int, default=64)
    ns = parser.parse_args()
    cuda = ns.device == "cuda"
    if not cuda:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    steps = ns.steps or (600 if cuda else 200)
    save_steps = ns.save_steps or max(1, steps // 3)

    tokenizer = build_tokenizer()
    splits = make_splits(n_train=steps * ns.batch_size, n_heldout_sft=256, n_heldout_problems=ns.problems, seed=0)
    if ns.model == "toy":
        model = build_model(tokenizer, seed=0)
    else:
        from bench_sampler import random_model  # the same Llama sizes as the sampler benchmark

        model = random_model(tokenizer, *{"33m": (512, 8), "403m": (1024, 24)}[ns.model])
    callbacks = [
        HeldOutLossCallback({"mixed": splits.heldout_sft}),
        PassAtKCallback(
            {"mixed": splits.heldout_problems},
            verifier="toy-steps",
            n=ns.n,
            num_problems=ns.problems,
            max_new_tokens=48,
        ),
        RLReadinessCallback(),
    ]
    with tempfile.TemporaryDirectory() as out:
        args = toy_sft_config(
            out,
            steps,
            [],
            per_device_train_batch_size=ns.batch_size,
            learning_rate=1e-3 if ns.model != "403m" else 3e-4,
            warmup_steps=30,
            save_steps=save_steps,
            logging_steps=50,
            bf16=cuda,
            use_cpu=not cuda,
        )
        from trl import SFTTrainer

        trainer = SFTTrainer(
            model=model, args=args, train_dataset=splits.train, processing_class=tokenizer, callbacks=callbacks
        )
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start

    loss, passk, readiness = callbacks
    blocking = sum(c.time_spent_s for c in callbacks)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    hardware = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}" if cuda else machine_summary()
    print(
        f"{hardware}; {ns.model} model ({params:.1f}M params, "
        f"{'bf16' if cuda else 'fp32'}); {steps} steps of batch {ns.batch_size}, saves every {save_steps}"
    )
    print(f"  train() wall time {wall:.1f} s; callbacks {blocking:.1f} s = {blocking / wall:.1%} of it")
    n_loss = len(loss.history.get("sftrl/heldout/mixed/loss", []))
    n_passk = len(passk.results["mixed"])
    print(
        f"  HeldOutLossCallback  {loss.time_spent_s:6.1f} s: {n_loss} measurements of 256 examples, "
        f"{loss.time_spent_s / max(n_loss, 1):.2f} s each"
    )
    print(
        f"  PassAtKCallback      {passk.time_spent_s:6.1f} s: {n_passk} measurements of {ns.problems} problems x "
        f"{ns.n} samples, {passk.time_spent_s / max(n_passk, 1):.2f} s each"
    )
    print(f"  RLReadinessCallback  {readiness.time_spent_s:6.1f} s")
    print(f"  monitor errors: {sum(c.errors for c in callbacks)}")


if __name__ == "__main__":
    main()
