"""Every tracker in report_to receives every sftrl scalar at the step it was measured: read back from each
tracker's own storage with its own reader and compared with metrics.jsonl (names, steps, values)."""

import gzip
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from sftrl_callbacks.io import read_jsonl
from sftrl_callbacks.trackers import mlflow_name
from tests import tracker_readback, wandb_offline

TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "trackio": "trackio", "wandb": "wandb"}
INSTALLED = [name for name, library in TRACKERS.items() if importlib.util.find_spec(library) is not None]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not INSTALLED:
        pytest.skip("no tracker installed (pip install -e '.[test]' brings them)")
    out = str(tmp_path_factory.mktemp("trackers"))
    env = {**os.environ, "PYTHONPATH": ROOT}
    command = [sys.executable, os.path.join(ROOT, "tests", "trackers_run.py"), out, *INSTALLED]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = read_jsonl(os.path.join(out, "out", "sftrl", "metrics.jsonl"))
    expected = {
        (r["name"], r["step"]): r["value"]
        for r in records
        if isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool) and math.isfinite(r["value"])
    }
    return out, expected


def read(tracker: str, out: str) -> dict:
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    readers = {
        "tensorboard": lambda: tracker_readback.tensorboard(os.path.join(out, "out", "runs")),
        "mlflow": lambda: tracker_readback.mlflow("file://" + os.path.join(out, "mlruns")),
        "trackio": lambda: tracker_readback.trackio(os.path.join(out, "trackio"), "sftrl-trackers"),
        "wandb": lambda: tracker_readback.wandb(out),
    }
    return readers[tracker]()


@pytest.mark.slow
@pytest.mark.parametrize("tracker", list(TRACKERS))
def test_tracker_holds_what_metrics_jsonl_holds(run, tracker):
    if tracker not in INSTALLED:
        pytest.skip(f"{tracker} is not installed: its read-back test is skipped")
    out, expected = run
    if tracker == "mlflow":  # MLflow refuses '@': names are rewritten as the Trainer's integration does
        expected = {(mlflow_name(name), step): value for (name, step), value in expected.items()}
    got = read(tracker, out)
    assert set(got) == set(expected), (sorted(set(expected) - set(got))[:10], sorted(set(got) - set(expected))[:10])
    wrong = [
        (key, expected[key], got[key]) for key in expected if not math.isclose(got[key], expected[key], rel_tol=1e-6)
    ]
    assert not wrong, wrong[:10]
    steps = {step for _, step in expected}
    assert 0 in steps, "the step-0 baseline is missing"
    passk_30 = [name for name, step in expected if step == 30 and ("pass@" in name or "pass_" in name)]
    assert passk_30, "the last checkpoint's background pass@k (arriving after the trackers' on_train_end) is missing"


@pytest.mark.slow
def test_every_completion_is_kept_and_a_table_reaches_the_trackers(run):
    out, expected = run
    for step in (0, 15, 30):  # step 0 measured in training, 15 and 30 by the background process
        path = os.path.join(out, "out", "sftrl", "completions", f"step-{step}_heldout.jsonl.gz")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        with open(os.path.join(out, "out", "sftrl", "passk", f"step-{step}_heldout.json"), encoding="utf-8") as f:
            result = json.load(f)
        assert len(rows) == sum(result["n_per_problem"]) == 6 * 4
        assert sum(r["correct"] for r in rows) == sum(result["c_per_problem"])
        assert {r["step"] for r in rows} == {step} and {r["set"] for r in rows} == {"heldout"}
        assert set(rows[0]) >= {"problem", "prompt", "answer", "completion", "correct", "score", "tokens", "truncated"}
        first = result["examples"][0]["completions"][0]
        assert set(first) >= {"completion", "correct", "score", "tokens", "truncated", "thinking_tokens", "unfinished"}
        assert first == {k: rows[0][k] for k in first}
    if "wandb" in INSTALLED:
        rows = wandb_offline.history(wandb_offline.run_file(out))
        tables = {(r["train/global_step"], r.get("sftrl/passk/heldout/completions/_type")) for r in rows}
        assert {(0, "table-file"), (15, "table-file"), (30, "table-file")} <= tables


@pytest.mark.slow
def test_report_shows_the_candidates_with_intervals_the_pick_and_the_baseline(run):
    from sftrl_callbacks.report import _load, candidate_rows, render_report

    out, _ = run
    output_dir = os.path.join(out, "out")
    png, page = render_report(output_dir)
    data = _load(output_dir)
    rows = candidate_rows(data)
    with open(os.path.join(output_dir, "sftrl", "rl_start.json"), encoding="utf-8") as f:
        rl_start = json.load(f)
    assert [r["step"] for r in rows] == [0, 15, 30]  # the baseline, then the saved checkpoints
    assert rows[0]["score"] is None and rows[0]["flags"].startswith("baseline")  # a reference, not a candidate
    assert [r["step"] for r in rows if r["picked"]] == [rl_start["step"]]
    for row in rows[1:]:
        for key in ("pass@1", "pass@4"):
            estimate, low, high = row[key]
            assert low <= estimate <= high
        assert row["heldout_loss"] is not None and row["score"] is not None
    assert 0 in data["results"]["heldout"]  # the baseline the charts draw
    text = open(page, encoding="utf-8").read()
    assert "Pick for RL" in text and "pass@4 [95 % CI]" in text and rl_start["why"][:40] in text
    assert "Sampled completions" in text and os.path.getsize(png) > 10_000
