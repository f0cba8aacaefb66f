import os
import re
import subprocess
import sys

import pytest

from sftrl_callbacks.io import read_jsonl

from . import wandb_offline


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(out)}
    proc = subprocess.run(
        [sys.executable, "-m", "sftrl_callbacks.cli", "demo", "--output-dir", str(out), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "Held-out loss" in text and "Greedy exact-match accuracy" in text
    accuracy = float(re.search(r"1-step (\d+)%", text).group(1))
    assert accuracy >= 50  # the tiny model learns the easy problems

    records = read_jsonl(out / "sftrl" / "metrics.jsonl")
    losses = {r["step"]: r["value"] for r in records if r["name"] == "sftrl/heldout/mixed/loss"}
    assert {0, *range(50, 401, 50)} == set(losses)  # the step-0 baseline, every 50 steps; 200 and 400 are saves
    assert losses[400] < losses[50] < losses[0]

    history = wandb_offline.history(wandb_offline.run_file(str(out)))
    in_wandb = {
        r["train/global_step"]: r["sftrl/heldout/mixed/loss"] for r in history if "sftrl/heldout/mixed/loss" in r
    }
    assert in_wandb == losses
    passk = {r["step"]: r["value"] for r in records if r["name"] == "sftrl/passk/mixed/pass@64"}
    assert sorted(passk) == [0, 200, 400] and passk[400] > 0.5 > passk[0]  # the untrained model at step 0
    assert "RL start: step" in text and (out / "sftrl" / "rl_start.json").exists()
