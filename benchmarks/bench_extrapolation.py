"""How far to trust `extrapolate_pass_at_k` on counts like dynamic allocation's. Prints measured numbers.

    python benchmarks/bench_extrapolation.py

Simulated problem sets whose per-problem success probability is 0 with probability `zero`, else
Beta(a, b), with (zero, a, b) drawn from a small grid per set; 16 samples per problem and 48 more for the
unsolved (as `allocation="dynamic"` spends them). The truth is the mean pass@K of the set's own
probabilities. Prints the bias, RMSE and the coverage of the 95 % bootstrap interval.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sftrl_callbacks.passk import extrapolate_pass_at_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=25)
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--resamples", type=int, default=100)
    ns = parser.parse_args()
    rng = np.random.default_rng(42)
    errors, covered, start = [], [], time.time()
    for index in range(ns.sets):
        zero, a, b = rng.choice([0.2, 0.4, 0.6]), rng.choice([0.3, 0.6, 1.5]), rng.choice([2.0, 4.0, 8.0])
        p = np.where(rng.random(ns.problems) < zero, 0.0, rng.beta(a, b, ns.problems))
        n, c = np.full(ns.problems, 16), rng.binomial(16, p)
        unsolved = c == 0
        n[unsolved], c[unsolved] = 64, rng.binomial(48, p[unsolved])
        truth = float(np.mean(1 - (1 - p) ** ns.k))
        interval = extrapolate_pass_at_k(n, c, ns.k, resamples=ns.resamples, seed=index)
        errors.append(interval.estimate - truth)
        covered.append(interval.low <= truth <= interval.high)
    errors = np.array(errors)
    print(
        f"pass@{ns.k} on {ns.sets} simulated sets of {ns.problems} problems (16 samples each, 64 for the unsolved), "
        f"{ns.resamples} bootstrap resamples: bias {errors.mean():+.3f}, RMSE {np.sqrt(np.mean(errors**2)):.3f}, "
        f"95 % interval coverage {np.mean(covered):.2f}; {time.time() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
