"""Size of the `save_completions` file per 1,000 completions, measured on a saved toy checkpoint.

    python benchmarks/completions_size.py CHECKPOINT [--n 16]

Samples the demo's held-out problems (seed 0) with `save_completions=True`, writes the gzip JSONL and
prints its size per 1,000 completions, with the mean completion length (the size grows with it).
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=16)
    ns = parser.parse_args()
    torch.set_num_threads(2)

    from sftrl_callbacks.checkpoints import load_checkpoint
    from sftrl_callbacks.measure import PassAtKConfig, measure_pass_at_k
    from sftrl_callbacks.toy import StepVerifier, build_tokenizer, make_splits

    tokenizer = build_tokenizer()
    model, tokenizer = load_checkpoint(ns.checkpoint, device="cpu", tokenizer=tokenizer)
    problems = make_splits(n_train=20_000, n_heldout_sft=256, n_heldout_problems=96, seed=0).heldout_problems
    config = PassAtKConfig(n=ns.n, max_new_tokens=64, save_completions=True)
    result = measure_pass_at_k(model, tokenizer, problems, StepVerifier(), config, step=0)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "completions.jsonl.gz")
        result.write_completions(path)
        compressed = os.path.getsize(path)
        with gzip.open(path, "rb") as f:
            raw = len(f.read())
    count = len(result.completions)
    print(f"{count} completions of {len(problems)} toy problems, mean {result.mean_completion_tokens:.1f} tokens")
    print(f"gzip JSONL: {compressed / count * 1000 / 1024:.1f} KiB per 1,000 completions")
    print(f"uncompressed: {raw / count * 1000 / 1024:.1f} KiB per 1,000 (ratio {raw / compressed:.1f}x)")


if __name__ == "__main__":
    main()
