"""The `sftrl` command line: `sftrl demo | eval | fit | report`."""

from __future__ import annotations

import argparse
import sys


def _demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(ns.output_dir, max_steps=ns.max_steps, seed=ns.seed, show_progress=not ns.quiet)
    print("\nHeld-out loss (token-weighted mean NLL on held-out SFT examples):")
    for step, loss in result.heldout_losses:
        print(f"  step {step:5d}  {loss:.4f}")
    acc = result.greedy_accuracy
    print("Greedy exact-match accuracy on held-out problems: " + ", ".join(f"{k} {v:.0%}" for k, v in acc.items()))
    print(f"Metrics:  {result.metrics_path}")
    if result.wandb_dir:
        print(f"W&B run (offline): {result.wandb_dir}/wandb  (sync with `wandb sync <run dir>`)")
    print(f"Wall time {result.wall_time_s:.0f} s (training {result.train_time_s:.0f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sftrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="SFT of the toy model with the callbacks, offline, on a CPU.")
    demo.add_argument("--output-dir", default="sftrl_demo")
    demo.add_argument("--max-steps", type=int, default=400)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="No progress bars.")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
