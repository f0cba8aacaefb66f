import re

import pytest

from sftrl_callbacks.cli import main as sftrl
from sftrl_callbacks.io import read_jsonl

from . import wandb_offline


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, wandb_dir, capsys):
    # `sftrl demo` through the CLI's entry point, in this process: a child would spend seconds importing what
    # this one has (test_eval_cli runs the CLI as a process).
    out = tmp_path / "demo"
    assert sftrl(["demo", "--output-dir", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Held-out loss" in text and "Greedy exact-match accuracy" in text
    accuracy = float(re.search(r"1-step (\d+)%", text).group(1))
    assert accuracy >= 50  # the tiny model learns the easy problems

    records = read_jsonl(out / "sftrl" / "metrics.jsonl")
    losses = {r["step"]: r["value"] for r in records if r["name"] == "sftrl/heldout/mixed/loss"}
    assert {0, *range(50, 401, 50)} == set(losses)  # the step-0 baseline, every 50 steps; 200 and 400 are saves
    assert losses[400] < losses[50] < losses[0]

    history = wandb_offline.history(wandb_offline.run_file(str(wandb_dir)))
    in_wandb = {
        r["train/global_step"]: r["sftrl/heldout/mixed/loss"] for r in history if "sftrl/heldout/mixed/loss" in r
    }
    assert in_wandb == losses
    passk = {r["step"]: r["value"] for r in records if r["name"] == "sftrl/passk/mixed/pass@64"}
    assert sorted(passk) == [0, 200, 400] and passk[400] > 0.5 > passk[0]  # the untrained model at step 0
    assert "RL start: step" in text and (out / "sftrl" / "rl_start.json").exists()
