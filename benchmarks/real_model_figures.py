"""The figures of docs/real-model.md, measured now by the current code. Prints them; run it, do not import it.

    python benchmarks/real_model_figures.py [--write-docs] [--keep DIR]

Runs `examples/sft_with_callbacks.py --config recipes/smollm2-135m-cpu.yaml` as a user would (its output
directory moved to a temporary folder, or DIR with --keep) and prints: the recipe's wall time, the held-out loss
and pass@1 / pass@k before and after SFT with their intervals, and the monitor's share of train().
`--write-docs` replaces the block between the `real-model-figures` markers in docs/real-model.md.
Run it on a quiet machine: another torch job on the same cores slows it many times over.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import yaml
from docblock import replace_block  # benchmarks/ is on the path of its scripts

from sftrl_callbacks.demo import machine_summary
from sftrl_callbacks.io import read_jsonl

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RECIPE = os.path.join(ROOT, "recipes", "smollm2-135m-cpu.yaml")


def run_recipe(out: str) -> tuple[float, str]:
    with open(RECIPE, encoding="utf-8") as f:
        recipe = yaml.safe_load(f)
    recipe["sft"]["output_dir"] = out
    path = os.path.join(out + "-recipe.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(recipe, f)
    start = time.perf_counter()
    command = [sys.executable, os.path.join(ROOT, "examples", "sft_with_callbacks.py"), "--config", path]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the recipe failed:\n{proc.stderr[-4000:]}")
    return wall, proc.stdout


def interval(out: str, step: int, k: int) -> str:
    with open(os.path.join(out, "sftrl", "passk", f"step-{step}_problems.json"), encoding="utf-8") as f:
        result = json.load(f)
    ci = result["ci"][str(k)]
    return f"{result['pass_at_k'][str(k)]:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def figures(out: str) -> str:
    wall, stdout = run_recipe(out)
    timing = re.search(r"train\(\) took .*", stdout)[0]
    records = read_jsonl(os.path.join(out, "sftrl", "metrics.jsonl"))
    loss = {r["step"]: r["value"] for r in records if r["name"] == "sftrl/heldout/heldout/loss"}
    passk_steps = sorted({r["step"] for r in records if r["name"] == "sftrl/passk/problems/pass@1"})
    context = next(r for r in records if r["name"] == "sftrl/passk/problems/pass@1")
    n, problems, temperature = context["n"], context["num_problems"], context["temperature"]
    first, last = min(loss), max(loss)
    lines = [
        f"Measured by `python benchmarks/real_model_figures.py` on {machine_summary()}:",
        "",
        f"- recipe wall time (model load, data, SFT, callbacks, report): **{wall:.0f} s**",
        f"- {timing}",
        f"- held-out loss ({len(loss)} measurements, 32 rows): {loss[first]:.4f} at step {first} -> "
        f"{loss[last]:.4f} at step {last} (lowest {min(loss.values()):.4f} at step {min(loss, key=loss.get)})",
    ]
    for step in passk_steps:
        lines.append(
            f"- step {step}: pass@1 {interval(out, step, 1)}, pass@{n} {interval(out, step, n)} "
            f"({problems} problems x {n} samples, T={temperature}, math-verify; 95 % bootstrap over problems)"
        )
    with open(os.path.join(out, "sftrl", "rl_start.json"), encoding="utf-8") as f:
        lines.append(f"- RL start chosen: step {json.load(f)['step']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-docs", action="store_true", help="replace the figures block in docs/real-model.md")
    parser.add_argument("--keep", help="run in this folder and keep it (for the report screenshot)")
    ns = parser.parse_args()
    if ns.keep:
        text = figures(os.path.abspath(ns.keep))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            text = figures(os.path.join(tmp, "out"))
    print(text)
    if ns.write_docs:
        print(f"written to {replace_block('real-model.md', 'real-model-figures', text)}")


if __name__ == "__main__":
    main()
