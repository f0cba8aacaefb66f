"""A miniature SFT -> RL grid on the toy world: do the SFT-time signals pick the best RL start?

For each SFT variant (unique examples x epochs x short-only/mixed x learning rate):
  1. SFT of the tiny Llama with HeldOutLossCallback + PassAtKCallback (the library's own measurements);
  2. GRPO (TRL GRPOTrainer) from the final SFT model, same budget for all, reward = the strict
     step verifier (the library's `toy.StepVerifier` through `RewardFunctionVerifier`'s contract);
  3. post-RL pass@1 on the same held-out problems.
Each variant appends one row to `results.jsonl` (a table `sftrl fit` reads). Then:

    sftrl fit examples/sft_rl_study/results.jsonl --target post_rl_pass@1
    sftrl fit examples/sft_rl_study/results.jsonl --target rl_gain

Usage:  python examples/sft_rl_study/run_study.py [--quick] [--out DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import torch

from sftrl_callbacks import HeldOutLossCallback, PassAtKCallback
from sftrl_callbacks.demo import toy_sft_config
from sftrl_callbacks.measure import PassAtKConfig, measure_pass_at_k
from sftrl_callbacks.toy import (
    StepVerifier,
    build_model,
    build_tokenizer,
    make_splits,
    problem_from_row,
    steps_are_correct,
)

# name, unique rows, SFT steps (batch 32), learning rate, weights of 1/2/3-step problems in the SFT data.
# The steps are chosen so that most variants land at a post-SFT pass@1 of 0.1-0.6 on 2-3-step problems,
# where RL on this toy world still gains (above ~0.6 it gains ~0, see the project notes).
MIXED, SHORT, MOSTLY_SHORT = (1, 1, 1), (1, 1, 0), (0.45, 0.45, 0.1)
GRID = [
    ("mixed-19.2k-1ep", 19_200, 600, 2e-3, MIXED),  # fixed compute (600 steps), unique data varied ...
    ("mixed-9.6k-2ep", 9_600, 600, 2e-3, MIXED),  # ... the paper's "half the data, two epochs"
    ("mixed-4.8k-4ep", 4_800, 600, 2e-3, MIXED),
    ("mixed-2.4k-8ep", 2_400, 600, 2e-3, MIXED),
    ("mixed-9.6k-1ep", 9_600, 300, 2e-3, MIXED),  # half the compute
    ("mixed-4.8k-2ep", 4_800, 300, 2e-3, MIXED),
    ("mixed-1.2k-8ep", 1_200, 300, 2e-3, MIXED),
    ("mixed-19.2k-1ep-lr1e-3", 19_200, 600, 1e-3, MIXED),  # learning rate
    ("mixed-19.2k-1ep-lr4e-3", 19_200, 600, 4e-3, MIXED),
    ("short-19.2k-1ep", 19_200, 600, 2e-3, SHORT),  # short-only (1-2-step) data
    ("short-4.8k-4ep", 4_800, 600, 2e-3, SHORT),
    ("mostly-short-19.2k-1ep", 19_200, 600, 2e-3, MOSTLY_SHORT),  # 10 % 3-step
]
QUICK = [
    ("quick-mixed-a", 256, 12, 2e-3, MIXED),
    ("quick-mixed-b", 64, 12, 2e-3, MIXED),
    ("quick-short", 256, 12, 2e-3, SHORT),
]


def step_reward(prompts, completions, operands, operators, **kwargs) -> list[float]:
    """TRL reward function: 1.0 when every step and the answer are right (see toy.steps_are_correct)."""
    rows = [{"operands": o, "operators": p} for o, p in zip(operands, operators)]
    return [float(steps_are_correct(c, problem_from_row(r))) for c, r in zip(completions, rows)]


def pass1_by_steps(result, problems) -> dict[str, float]:
    """Sampled pass@1 (mean of c/n) per problem difficulty."""
    out = {}
    for k in sorted(set(problems["steps"])):
        idx = [i for i, s in enumerate(problems["steps"][: len(result.c)]) if s == k]
        out[f"{k}-step"] = sum(result.c[i] / result.n[i] for i in idx) / len(idx)
    return out


def grpo(model, tokenizer, prompts, ns, out_dir, steps, seed):
    """The GRPO recipe that learns on the toy world (project notes): strict reward, group size 16, dapo."""
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=out_dir,
        max_steps=steps,
        per_device_train_batch_size=128 if not ns.quick else 16,
        num_generations=16 if not ns.quick else 4,
        max_completion_length=64,
        temperature=1.0,
        top_k=0,
        learning_rate=5e-5,
        lr_scheduler_type="constant",
        beta=0.0,
        loss_type="dapo",
        scale_rewards="group",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        seed=seed,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=step_reward, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    trainer.train()
    return [(h["step"], h["reward"]) for h in trainer.state.log_history if "reward" in h]


def rl_check(ns, splits, tokenizer) -> None:
    """Item 0: does GRPO raise held-out sampled pass@1 from a mid-accuracy SFT start, on two seeds?"""
    from trl import SFTTrainer

    data = make_splits(
        n_train=20_000,
        n_heldout_sft=0,
        n_heldout_problems=0,
        seed=ns.seed + 1,
        exclude=set(splits.heldout_sft["prompt"]) | set(splits.heldout_problems["prompt"]),
    )
    config = PassAtKConfig(n=ns.n, ks=[1], max_new_tokens=64, seed=ns.seed + 100)
    path = os.path.join(ns.out, "rl_check.jsonl")
    for seed in (0, 1):
        t0 = time.time()
        model = build_model(tokenizer, seed=ns.seed)
        args = toy_sft_config(
            os.path.join(ns.out, "rl_check_sft"),
            20 if ns.quick else 400,
            [],
            seed=ns.seed,
            save_strategy="no",
            logging_steps=100,
        )
        SFTTrainer(model=model, args=args, train_dataset=data.train, processing_class=tokenizer).train()
        before = measure_pass_at_k(model, tokenizer, splits.heldout_problems, StepVerifier(), config)
        rewards = grpo(
            model, tokenizer, splits.rl_prompts, ns, os.path.join(ns.out, "rl_check_grpo"), ns.rl_check_steps, seed
        )
        after = measure_pass_at_k(model, tokenizer, splits.heldout_problems, StepVerifier(), config)
        row = {
            "rl_seed": seed,
            "rl_steps": ns.rl_check_steps,
            "post_sft": pass1_by_steps(before, splits.heldout_problems),
            "post_rl": pass1_by_steps(after, splits.heldout_problems),
            "post_sft_pass@1": before.pass_at_k[1],
            "post_rl_pass@1": after.pass_at_k[1],
            "rewards": rewards,
            "seconds": round(time.time() - t0, 1),
        }
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"rl-check seed {seed}: pass@1 {row['post_sft_pass@1']:.3f} -> {row['post_rl_pass@1']:.3f} "
            f"{row['post_sft']} -> {row['post_rl']}",
            flush=True,
        )
    shutil.rmtree(os.path.join(ns.out, "rl_check_sft"), ignore_errors=True)
    shutil.rmtree(os.path.join(ns.out, "rl_check_grpo"), ignore_errors=True)


def run_variant(name, rows, steps, lr, mix, ns, splits, tokenizer, out_dir) -> dict:
    from trl import SFTTrainer

    t0 = time.time()
    data = make_splits(
        n_train=rows,
        train_steps=(1, 2, 3),
        train_weights=mix,
        n_heldout_sft=0,
        n_heldout_problems=0,
        seed=ns.seed + 1,
        exclude=set(splits.heldout_sft["prompt"]) | set(splits.heldout_problems["prompt"]),
    )
    model = build_model(tokenizer, seed=ns.seed)
    sft_dir = os.path.join(out_dir, name, "sft")
    loss_cb = HeldOutLossCallback({"mixed": splits.heldout_sft}, every_n_steps=max(1, steps // 8))
    passk_cb = PassAtKCallback(
        {"heldout": splits.heldout_problems},
        verifier=StepVerifier(),
        n=ns.n,
        max_new_tokens=64,
        on_save=False,
        seed=ns.seed,
    )
    args = toy_sft_config(sft_dir, steps, [], seed=ns.seed, learning_rate=lr, save_strategy="no", logging_steps=50)
    SFTTrainer(
        model=model, args=args, train_dataset=data.train, processing_class=tokenizer, callbacks=[loss_cb, passk_cb]
    ).train()
    sft_s = time.time() - t0
    post_sft = passk_cb.results["heldout"][-1]
    losses = [v for _, v in loss_cb.history["sftrl/heldout/mixed/loss"]]

    t1 = time.time()
    rewards = grpo(model, tokenizer, splits.rl_prompts, ns, os.path.join(out_dir, name, "grpo"), ns.rl_steps, ns.seed)
    rl_s = time.time() - t1
    config = PassAtKConfig(n=max(8, ns.n // 2), ks=[1], max_new_tokens=64, seed=ns.seed + 100)
    post_rl = measure_pass_at_k(model, tokenizer, splits.heldout_problems, StepVerifier(), config)
    shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)  # no checkpoints kept
    ks = {f"pass@{k}": v for k, v in post_sft.pass_at_k.items()}
    return {
        "name": name,
        "unique_rows": rows,
        "sft_steps": steps,
        "epochs": round(steps * 32 / rows, 2),
        "learning_rate": lr,
        "mix_1_2_3_step": "/".join(map(str, mix)),
        "seed": ns.seed,
        **ks,
        "heldout_loss": losses[-1],
        "heldout_loss_min": min(losses),
        "post_rl_pass@1": post_rl.pass_at_k[1],
        "rl_gain": post_rl.pass_at_k[1] - post_sft.pass_at_k[1],
        "post_sft_by_steps": pass1_by_steps(post_sft, splits.heldout_problems),
        "post_rl_by_steps": pass1_by_steps(post_rl, splits.heldout_problems),
        "rl_reward_first": rewards[0][1] if rewards else None,
        "rl_reward_last": rewards[-1][1] if rewards else None,
        "rl_rewards": rewards,
        "sft_seconds": round(sft_s, 1),
        "rl_seconds": round(rl_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 tiny variants: checks the pipeline, not the science")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="run only these variant names")
    parser.add_argument("--rl-check", action="store_true", help="run only the two-seed GRPO check (item 0)")
    ns = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    ns.n = 8 if ns.quick else 64
    ns.rl_steps = 4 if ns.quick else 120
    ns.rl_check_steps = 4 if ns.quick else 300
    grid = QUICK if ns.quick else GRID
    if ns.only:
        grid = [v for v in grid if v[0] in ns.only]
    os.makedirs(ns.out, exist_ok=True)
    tokenizer = build_tokenizer()
    # Held-out problems: 2- and 3-step (where RL can still gain); disjoint from every training and RL prompt.
    base = make_splits(
        n_train=0,
        n_heldout_sft=32 if ns.quick else 256,
        n_heldout_problems=8 if ns.quick else 200,
        heldout_steps=(2, 3),
        seed=ns.seed,
    )
    rl = make_splits(
        n_train=64 if ns.quick else 4000,
        train_steps=(2, 3),
        n_heldout_sft=0,
        n_heldout_problems=0,
        fmt="problems",
        seed=ns.seed + 2,
        exclude=set(base.heldout_sft["prompt"]) | set(base.heldout_problems["prompt"]),
    )
    base.rl_prompts = rl.train
    if ns.rl_check:
        rl_check(ns, base, tokenizer)
        return
    results = os.path.join(ns.out, "results.jsonl")
    start = time.time()
    for name, rows, steps, lr, mix in grid:
        row = run_variant(name, rows, steps, lr, mix, ns, base, tokenizer, ns.out)
        with open(results, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"[{time.time() - start:6.0f}s] {name}: post-SFT pass@1 {row['pass@1']:.3f}, pass@{ns.n} "
            f"{row[f'pass@{ns.n}']:.3f}, loss {row['heldout_loss']:.3f} -> post-RL pass@1 "
            f"{row['post_rl_pass@1']:.3f} (gain {row['rl_gain']:+.3f})",
            flush=True,
        )
    print(f"total {time.time() - start:.0f} s; rows in {results}")


if __name__ == "__main__":
    main()
