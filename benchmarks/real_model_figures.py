"""The figures of docs/real-model.md, measured now by the current code. Prints them; run it, do not import it.

    python benchmarks/real_model_figures.py [--write-docs] [--keep DIR]
    python benchmarks/real_model_figures.py --from-run DIR [--write-docs]     # the figures of a kept run again

Runs `examples/sft_with_callbacks.py --config recipes/smollm2-135m-cpu.yaml` as a user would (its output
directory moved to a temporary folder, or DIR with --keep) and prints: the recipe's wall time, the held-out loss
and pass@1 / pass@k before and after SFT with their intervals, and the monitor's share of train().
`--write-docs` replaces the block between the `real-model-figures` markers in docs/real-model.md and the
`real-model-cost` block in docs/cost.md.
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
    with open(os.path.join(out, "recipe_run.json"), "w", encoding="utf-8") as f:  # for --from-run
        json.dump({"wall_s": wall, "stdout": proc.stdout}, f)
    return wall, proc.stdout


def interval(out: str, step: int, k: int) -> str:
    with open(os.path.join(out, "sftrl", "passk", f"step-{step}_problems.json"), encoding="utf-8") as f:
        result = json.load(f)
    ci = result["ci"][str(k)]
    return f"{result['pass_at_k'][str(k)]:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"


def cost_lines(out: str, stdout: str, records: list[dict], loss_steps: int, passk_steps: list[int]) -> list[str]:
    """What one measurement costs in training steps, and how often each can run for the monitor to stay < 10 %."""
    train_s = float(re.search(r"train\(\) took ([\d.]+) s", stdout)[1])
    spent = {name: float(s) for name, s in re.findall(r"(\w+Callback) ([\d.]+) s", stdout)}
    max_steps = max(r["step"] for r in records)
    step_s = (train_s - sum(spent.values())) / max_steps
    loss_s = spent["HeldOutLossCallback"] / loss_steps
    passk_s = []
    for step in passk_steps:
        with open(os.path.join(out, "sftrl", "passk", f"step-{step}_problems.json"), encoding="utf-8") as f:
            passk_s.append(json.load(f)["wall_time_s"])
    after = passk_s[1:] or passk_s
    passk_mean = sum(after) / len(after)
    return [
        f"- one training step without the monitor: {step_s:.1f} s; one held-out loss measurement: {loss_s:.1f} s "
        f"({loss_s / step_s:.1f} steps); one pass@k measurement: "
        + ", ".join(f"{s:.0f} s at step {step}" for s, step in zip(passk_s, passk_steps))
        + f" ({passk_s[0] / step_s:.1f} steps for the untrained model, {passk_mean / step_s:.1f} after SFT)",
        f"- for the monitor to stay under 10 %: held-out loss every >= {20 * loss_s / step_s:.0f} steps and pass@k "
        f"every >= {20 * passk_mean / step_s:.0f} steps (each taking half of the 10 %)",
    ]


def figures(out: str, rerun: bool = True) -> tuple[str, str]:
    """(the figures block of docs/real-model.md, the cost block of docs/cost.md)"""
    if rerun:
        wall, stdout = run_recipe(out)
    else:
        with open(os.path.join(out, "recipe_run.json"), encoding="utf-8") as f:
            saved = json.load(f)
        wall, stdout = saved["wall_s"], saved["stdout"]
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
    costs = cost_lines(out, stdout, records, len(loss), passk_steps)
    cost = [
        f"`recipes/smollm2-135m-cpu.yaml` (SmolLM2-135M-Instruct, float32, 20 steps of batch 8; held-out loss of "
        f"32 rows every 5 steps; pass@k from {n} samples of {problems} problems at step 0 and the two saves), "
        f"measured by `python benchmarks/real_model_figures.py` on {machine_summary()}:",
        "",
        f"- {timing}",
        *costs,
    ]
    return "\n".join(lines + costs) + "\n", "\n".join(cost) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-docs", action="store_true", help="replace the figures block in docs/real-model.md")
    parser.add_argument("--keep", help="run in this folder and keep it (for the report screenshot)")
    parser.add_argument("--from-run", help="print the figures of a run kept with --keep, without running again")
    ns = parser.parse_args()
    if ns.from_run:
        text, cost = figures(os.path.abspath(ns.from_run), rerun=False)
    elif ns.keep:
        text, cost = figures(os.path.abspath(ns.keep))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            text, cost = figures(os.path.join(tmp, "out"))
    print(text + "\n" + cost)
    if ns.write_docs:
        print(f"written to {replace_block('real-model.md', 'real-model-figures', text)}")
        print(f"written to {replace_block('cost.md', 'real-model-cost', cost)}")


if __name__ == "__main__":
    main()
