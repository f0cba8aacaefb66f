"""Pass@k sampling benchmark on the toy world. Prints measured numbers; run it, do not import it.

    python benchmarks/bench_passk.py [--steps 250] [--problems 200] [--seeds 10]

How well, and how fast, fewer samples estimate pass@64 against an n=256 reference drawn the naive way
(per-prompt generate): for 16/32/64 samples per problem, uniform (with beta-binomial extrapolation below 64)
and dynamic allocation, bias, standard deviation and RMSE over >= 10 sampling seeds, and the time to reach the
RMSE of plain n=64 sampling. All on the same toy model, prompts,
temperature (1.0) and max new tokens (48). Sampler throughput alone: `benchmarks/bench_sampler.py`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from sftrl_callbacks.hf_sampler import HFSampler
from sftrl_callbacks.measure import PassAtKConfig, measure_pass_at_k
from sftrl_callbacks.passk import pass_at_k_curve
from sftrl_callbacks.toy import StepVerifier, build_model, build_tokenizer, make_splits

MAX_NEW = 48


def train_model(steps: int, tokenizer, splits):
    from trl import SFTTrainer

    from sftrl_callbacks.demo import toy_sft_config

    model = build_model(tokenizer, seed=0)
    with tempfile.TemporaryDirectory() as out:
        args = toy_sft_config(out, steps, [], save_strategy="no")
        SFTTrainer(model=model, args=args, train_dataset=splits.train, processing_class=tokenizer).train()
    return model.eval()


@torch.inference_mode()
def naive_sample(model, tokenizer, prompts, n, seed=0):
    """Per-prompt generate(num_return_sequences=n): the approach of TRL's LogCompletionsCallback."""
    torch.manual_seed(seed)
    texts = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt")
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=MAX_NEW,
            num_return_sequences=n,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts.append(tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=250, help="SFT steps of the benchmarked model")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=10, help="sampling seeds per configuration (>= 10)")
    parser.add_argument("--write-docs", action="store_true", help="replace table (b) in docs/cost.md")
    ns = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    tokenizer = build_tokenizer()
    splits = make_splits(n_train=20_000, n_heldout_sft=16, n_heldout_problems=ns.problems, seed=0)
    model = train_model(ns.steps, tokenizer, splits)
    problems = splits.heldout_problems
    prompts = list(problems["prompt"])
    rows = [problems[i] for i in range(len(problems))]
    verifier = StepVerifier()
    print(
        f"model: toy Llama ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params) after {ns.steps} "
        f"SFT steps; {len(prompts)} held-out problems; T=1.0, max_new_tokens={MAX_NEW}; "
        f"torch threads {torch.get_num_threads()}"
    )

    # The reference: pass@64 from n=256 per problem, drawn the naive way (what TRL's completion logging does).
    t = time.time()
    texts = naive_sample(model, tokenizer, prompts, 256, seed=1)
    naive_ref_s = time.time() - t
    c_ref = np.array([sum(verifier.check(ts, [row] * len(ts))) for ts, row in zip(texts, rows)])
    ref = pass_at_k_curve(256, c_ref, [64])[64]
    # Its own sampling error: a parametric bootstrap of each problem's 256 outcomes (Binomial(256, c/256)).
    rng = np.random.default_rng(0)
    draws = [pass_at_k_curve(256, rng.binomial(256, c_ref / 256), [64])[64] for _ in range(400)]
    ref_se = float(np.std(draws, ddof=1))
    print(
        f"\nreference pass@64 from n=256 (naive generate): {ref:.4f} (sampling SE {ref_se:.4f}) in {naive_ref_s:.1f} s"
    )

    seeds = list(range(11, 11 + ns.seeds))
    print(
        f"  each configuration run with {len(seeds)} sampling seeds ({seeds[0]}-{seeds[-1]}); bias = mean estimate "
        "- reference; SD = standard deviation of the estimates over the seeds (the estimator's own standard "
        "error); RMSE = root mean squared error against the reference"
    )
    header = [("samples/problem", 16), ("allocation", 10), ("mean", 7), ("bias", 8), ("SE(bias)", 8), ("SD", 7)]
    print("  " + " ".join(f"{name:>{width}}" for name, width in header + [("RMSE", 7), ("mean s", 7)]))
    rows_out = {}
    table = [
        "| samples/problem | allocation | mean pass@64 | bias | SE of the bias | SD over seeds | RMSE | mean time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for alloc, n in [("uniform", 16), ("dynamic", 16), ("uniform", 32), ("dynamic", 32), ("uniform", 64)]:
        estimates, times = [], []
        for seed in seeds:
            config = PassAtKConfig(
                n=n,
                ks=[1, 64] if n >= 64 else [1],
                extrapolate_ks=[64] if n < 64 else [],
                allocation=alloc,
                initial_n=max(4, n // 2),
                max_new_tokens=MAX_NEW,
                seed=seed,
                ci_resamples=200,
            )
            t = time.time()
            result = measure_pass_at_k(model, tokenizer, problems, verifier, config, HFSampler(show_progress=False))
            times.append(time.time() - t)
            estimates.append(result.pass_at_k.get(64, result.extrapolated.get(64, {}).get("estimate")))
        e = np.array(estimates, dtype=float)
        bias, sd = float(e.mean() - ref), float(e.std(ddof=1))
        rmse = float(np.sqrt(np.mean((e - ref) ** 2)))
        rows_out[(alloc, n)] = (rmse, float(np.mean(times)))
        print(
            f"  {n:>16} {alloc:>10} {e.mean():7.4f} {bias:+8.4f} {sd / np.sqrt(len(e)):8.4f} {sd:7.4f} {rmse:7.4f} "
            f"{np.mean(times):7.1f}"
        )
        how = {"uniform": "uniform" + (" + extrapolation" if n < 64 else ", unbiased"), "dynamic": "dynamic"}[alloc]
        table.append(
            f"| {n} | {how} | {e.mean():.4f} | {bias:+.4f} | {sd / np.sqrt(len(e)):.4f} | {sd:.4f} | {rmse:.4f} | "
            f"{np.mean(times):.1f} s |"
        )
    target, target_s = rows_out[("uniform", 64)]
    reaching = [(s_, f"{a} n={n}") for (a, n), (r, s_) in rows_out.items() if r <= target]
    fastest = min(reaching)
    print(
        f"  time to reach the RMSE of plain n=64 sampling ({target:.4f}): fastest is {fastest[1]}, {fastest[0]:.1f} s "
        f"(plain n=64: {target_s:.1f} s; naive n=256 reference: {naive_ref_s:.1f} s)"
    )
    others = [name for s_, name in reaching if name != "uniform n=64"]
    print(f"  configurations at or below that RMSE besides plain n=64: {', '.join(others) or 'none'}")
    if ns.write_docs:
        from docblock import replace_block  # benchmarks/ is on the path of its scripts

        from sftrl_callbacks.demo import machine_summary

        text = (
            f"{machine_summary()}: the toy model after {ns.steps} SFT steps, {len(prompts)} held-out problems, "
            f"T = 1.0, at most {MAX_NEW} new tokens, strict step verifier. Reference: pass@64 from 256 samples each "
            f"drawn with per-prompt `generate`, {ref:.4f} (its own sampling SE {ref_se:.4f}, parametric bootstrap), "
            f"{naive_ref_s:.1f} s. Each configuration ran with {len(seeds)} sampling seeds:\n\n"
            + "\n".join(table)
            + f"\n\nThe RMSE of plain n = 64 sampling is {target:.4f}; configurations at or below it besides "
            f"plain n = 64: {', '.join(others) or 'none'}. Fastest at that RMSE: {fastest[1]}, {fastest[0]:.1f} s "
            f"({naive_ref_s / fastest[0]:.1f}x faster than the naive n = 256 reference).\n"
        )
        print(f"written to {replace_block('cost.md', 'bench-passk', text)}")


if __name__ == "__main__":
    main()
