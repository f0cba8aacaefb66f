"""Pass@k of one checkpoint measured by 2 CPU ranks (torchrun, gloo) vs 1 process, same settings.

    python benchmarks/bench_sharding.py [--problems 16] [--n 64] [--write-docs]

Trains the toy model briefly, saves it, then times `measure_pass_at_k` on it (after one warm-up measurement)
in three launches: one process with 1 thread, one process with 2 threads, and 2 ranks with 1 thread each.
The default set, 16 problems x 64 samples = 1,024 rows, fits in one `HFSampler` call (`max_batch_rows`
1024): the case where each rank must still do half. Prints the wall time, the speed-up and each rank's
share of the eval-mode forward rows, and checks that the counts equal the single process's.
`--write-docs` replaces the table between the `sharding-benchmark` markers in docs/distributed.md.
Run it on a quiet machine: it uses every core it is given.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from docblock import replace_block  # benchmarks/ is on the path of its scripts


def worker(checkpoint: str, problems_path: str, n: int, max_new_tokens: int, result_path: str) -> None:
    """One launch: time the measurement on this rank and gather every rank's rows and seconds on rank 0."""
    import torch
    from datasets import disable_progress_bars, load_dataset

    from sftrl_callbacks.checkpoints import load_checkpoint
    from sftrl_callbacks.distributed import current_shard
    from sftrl_callbacks.measure import PassAtKConfig, measure_pass_at_k
    from sftrl_callbacks.toy import StepVerifier

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from counting import CountingSampler

    disable_progress_bars()
    if "RANK" in os.environ:
        torch.distributed.init_process_group("gloo")
    shard = current_shard()
    problems = load_dataset("json", data_files=problems_path, split="train")
    model, tokenizer = load_checkpoint(checkpoint, device="cpu")
    config = PassAtKConfig(n=n, max_new_tokens=max_new_tokens, seed=0)
    sampler = CountingSampler(show_progress=False)
    measure_pass_at_k(model, tokenizer, problems, StepVerifier(), config, sampler, "warm-up", 0, shard)
    sampler.forward_rows = 0
    shard.gather(None)  # start together
    start = time.perf_counter()
    result = measure_pass_at_k(model, tokenizer, problems, StepVerifier(), config, sampler, "bench", 0, shard)
    seconds = time.perf_counter() - start
    ranks = shard.gather({"rows": sampler.forward_rows, "seconds": seconds})
    if shard.rank == 0:
        with open(result_path, "w", encoding="utf-8") as f:
            json.dump({"ranks": ranks, "c": result.c_per_problem, "wall_s": max(r["seconds"] for r in ranks)}, f)
    if "RANK" in os.environ:
        torch.distributed.destroy_process_group()


def _launch(ranks: int, threads: int, worker_args: list[str], result: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    me = os.path.abspath(__file__)
    if ranks == 1:
        command = [sys.executable, me, "--worker", *worker_args, result]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
        command += ["--master_port", str(port), me, "--worker", *worker_args, result]
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    with open(result, encoding="utf-8") as f:
        return json.load(f)


def _train(out: str, steps: int) -> tuple[str, str]:
    import torch
    from trl import SFTTrainer

    from sftrl_callbacks.demo import toy_sft_config
    from sftrl_callbacks.toy import build_model, build_tokenizer, make_splits

    torch.set_num_threads(2)
    tokenizer = build_tokenizer()
    splits = make_splits(n_train=4000, n_heldout_sft=0, n_heldout_problems=64, seed=0)
    args = toy_sft_config(out, steps, [], save_strategy="no", learning_rate=3e-3)
    trainer = SFTTrainer(
        model=build_model(tokenizer, seed=0), args=args, train_dataset=splits.train, processing_class=tokenizer
    )
    trainer.train()
    checkpoint = os.path.join(out, "model")
    trainer.save_model(checkpoint)
    problems = os.path.join(out, "problems.jsonl")
    splits.heldout_problems.to_json(problems)
    return checkpoint, problems


def table(ns: argparse.Namespace) -> str:
    from sftrl_callbacks.demo import machine_summary

    with tempfile.TemporaryDirectory() as out:
        checkpoint, problems = _train(out, ns.train_steps)
        subset = os.path.join(out, "subset.jsonl")
        with open(problems, encoding="utf-8") as f, open(subset, "w", encoding="utf-8") as g:
            g.writelines(f.readlines()[: ns.problems])
        worker_args = [checkpoint, subset, str(ns.n), str(ns.max_new_tokens)]
        runs = {
            (ranks, threads): _launch(ranks, threads, worker_args, os.path.join(out, f"r{ranks}t{threads}.json"))
            for ranks, threads in ((1, 1), (1, 2), (2, 1))
        }
    one = runs[(1, 1)]
    lines = [
        f"pass@k of the toy model (trained {ns.train_steps} steps) on {ns.problems} problems x {ns.n} samples, "
        f"<= {ns.max_new_tokens} new tokens, one `HFSampler` call's worth of rows (`max_batch_rows` 1024); "
        f"`python benchmarks/bench_sharding.py` on {machine_summary()}, after a warm-up measurement:",
        "",
        "| launch | wall time | speed-up vs 1 process, 1 thread | eval-forward rows per rank (share) | counts |",
        "|---|---|---|---|---|",
    ]
    for (ranks, threads), run in runs.items():
        total = sum(r["rows"] for r in run["ranks"])
        shares = ", ".join(f"{r['rows']:,} ({r['rows'] / total:.0%})" for r in run["ranks"])
        same = "equal" if run["c"] == one["c"] else "DIFFERENT"
        name = f"{ranks} rank{'s' if ranks > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
        lines.append(f"| {name} | {run['wall_s']:.2f} s | {one['wall_s'] / run['wall_s']:.2f}x | {shares} | {same} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        checkpoint, problems, n, max_new, result = sys.argv[2:7]
        worker(checkpoint, problems, int(n), int(max_new), result)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--write-docs", action="store_true", help="replace the table in docs/distributed.md")
    ns = parser.parse_args()
    text = table(ns)
    print(text)
    if ns.write_docs:
        print(f"written to {replace_block('distributed.md', 'sharding-benchmark', text)}")


if __name__ == "__main__":
    main()
