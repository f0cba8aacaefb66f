"""A run hard-killed (SIGKILL) mid-training and resumed equals the uninterrupted run."""

import json
import os
import signal
import subprocess
import sys

import pytest

from sftrl_callbacks.io import read_jsonl

from .processes import finish, start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(out, *flags) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": ROOT}
    log = f"{out}{''.join(flags)}.stderr"
    return start([sys.executable, "-m", "tests.resume_run", str(out), *flags], log, cwd=ROOT, env=env), log


@pytest.mark.slow
# 90: after the save at 80 with records past it, and after save_total_limit rotated the chosen checkpoint away
@pytest.mark.parametrize("kill_at", [90])
def test_kill_and_resume_equals_the_uninterrupted_run(tmp_path, kill_at):
    # The uninterrupted run goes on beside the killed one: one thread each, so the two do not compete for cores.
    uninterrupted = tmp_path / "full"
    full_run = _start(uninterrupted)
    out = tmp_path / "out"
    code, _ = finish(*_start(out, "--kill-at", str(kill_at)))
    assert code == -signal.SIGKILL
    before = read_jsonl(out / "sftrl" / "metrics.jsonl")
    assert max(r["step"] for r in before) == kill_at  # records after the last checkpoint exist...
    code, stderr = finish(*_start(out, "--resume"))
    assert code == 0, stderr[-3000:]
    assert "resumed the monitor state" in stderr
    code, stderr = finish(*full_run)
    assert code == 0, stderr[-3000:]
    # The readiness callback, last in the list and left at early_stopping="off", found both monitors, flagged
    # the turn of the held-out loss (below) and let the run go to its end.
    assert "sftrl RLReadinessCallback: watching held-out loss (math/val) and pass@k (math/val)" in stderr

    full = read_jsonl(uninterrupted / "sftrl" / "metrics.jsonl")
    got = read_jsonl(out / "sftrl" / "metrics.jsonl")
    keys = [(r["step"], r["name"]) for r in got]
    assert keys == [(r["step"], r["name"]) for r in full]  # ...and are neither duplicated nor missing
    assert len(set(keys)) == len(keys)
    for a, b in zip(full, got):
        assert a["value"] == pytest.approx(b["value"], abs=1e-4), (a, b)

    want = json.loads((uninterrupted / "sftrl" / "rl_start.json").read_text())
    start = json.loads((out / "sftrl" / "rl_start.json").read_text())
    assert start["step"] == want["step"] and start["flags"] == want["flags"]
    assert [r["step"] for r in start["ranking"]] == [r["step"] for r in want["ranking"]]
    assert os.path.isabs(start["path"]) and os.path.isfile(os.path.join(start["path"], "model.safetensors"))
    if kill_at == 90:  # the chosen checkpoint was rotated away before the kill: only its protected copy is left
        assert not os.path.isdir(start["checkpoint"]) and start["path"].startswith(str(out / "sftrl" / "rl_start"))
    assert max(r["step"] for r in full) == 100
    flags = {r["name"] for r in got if "/flag/" in r["name"]}
    assert flags == {"sftrl/readiness/flag/loss_turn", "sftrl/readiness/flag/gap_widening"}
