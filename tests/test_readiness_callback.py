import json
import os

import pytest

from sftrl_callbacks import HeldOutLossCallback, PassAtKCallback, RLReadinessCallback
from sftrl_callbacks.io import read_jsonl
from sftrl_callbacks.toy import StepVerifier, make_splits

from . import wandb_offline
from .conftest import make_trainer, offline_wandb


@pytest.fixture(scope="module")
def overfit_splits():
    """32 unique rows, a whole epoch a step: the held-out loss makes a U with its minimum near step 40."""
    return make_splits(n_train=32, n_heldout_sft=64, n_heldout_problems=6, seed=0, unique_train=True)


def _run(tmp_path, tokenizer, data, policy, report_to=()):
    loss = HeldOutLossCallback(data.heldout_sft, every_n_steps=10)
    passk = PassAtKCallback(data.heldout_problems, verifier=StepVerifier(), n=8, max_new_tokens=40)
    readiness = RLReadinessCallback(early_stopping=policy)
    callbacks = [readiness, passk, loss]  # readiness first; tests/resume_run.py puts it last
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        data.train,
        callbacks,
        max_steps=200,
        report_to=report_to,
        save_steps=20,
        save_total_limit=2,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        logging_steps=10,
    )
    trainer.train()
    return trainer, loss, readiness


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, tokenizer, overfit_splits):
    """The run stopped by the 'loss' policy, logged to W&B offline (two tests read it)."""
    tmp_path = tmp_path_factory.mktemp("stopped")
    with offline_wandb(tmp_path):
        trainer, loss, readiness = _run(tmp_path, tokenizer, overfit_splits, "loss", report_to=["wandb"])
    return tmp_path, trainer, loss, readiness


@pytest.mark.slow
def test_flags_turn_stops_and_protects_rl_start(stopped_run):
    tmp_path, trainer, loss, readiness = stopped_run
    history = loss.history["sftrl/heldout/heldout/loss"]
    true_min = min(history, key=lambda sv: sv[1])[0]
    turn = next(f for f in readiness.flags if f.kind == "loss_turn")
    # Tolerance: two measurements (20 steps) either side of the measured minimum.
    assert abs(turn.began_step - true_min) <= 20, (turn, history)
    assert trainer.state.global_step < 200 and trainer.state.global_step == turn.confirmed_step
    assert readiness.found == ["held-out loss (heldout)", "pass@k (heldout)"]

    out = tmp_path / "out"
    start = json.loads((out / "sftrl" / "rl_start.json").read_text())
    assert os.path.isdir(start["path"]) and os.path.exists(os.path.join(start["path"], "model.safetensors"))
    assert start["step"] % 20 == 0 and start["ranking"][0]["step"] == start["step"]
    assert "readiness score" in start["why"] and "loss_turn" in {f["kind"] for f in start["flags"]}
    # save_total_limit=2 rotated the old checkpoints away, but not the protected copy.
    assert len([d for d in os.listdir(out) if d.startswith("checkpoint-")]) <= 3
    events = [r for r in read_jsonl(out / "sftrl" / "metrics.jsonl") if r["name"].startswith("sftrl/readiness/")]
    assert {"sftrl/readiness/flag/loss_turn", "sftrl/readiness/stop", "sftrl/readiness/loss_turn_step"} <= {
        r["name"] for r in events
    }

    run = wandb_offline.run_file(str(tmp_path))
    rows = wandb_offline.history(run)
    objects = {k.rsplit("/", 1)[0]: v for r in rows for k, v in r.items() if k.endswith("/_type")}
    assert objects["sftrl/readiness/timeline"] == "table-file"
    assert objects["sftrl/readiness/report"] == "image-file"
    assert objects[f"sftrl/passk/heldout/curve_step_{start['step']}_table"] == "table-file"
    assert any("loss turn" in a.title for a in wandb_offline.alerts(run))
    assert wandb_offline.summary(run)["sftrl/rl_start/step"] == start["step"]
    assert (out / "sftrl" / "report.png").exists()


def test_construction_and_policy_errors(tmp_path, tokenizer, splits):
    with pytest.raises(ValueError, match="early_stopping"):
        RLReadinessCallback(early_stopping="sometimes")
    readiness = RLReadinessCallback(early_stopping="passk")
    loss = HeldOutLossCallback(splits.heldout_sft, every_n_steps=5)
    trainer = make_trainer(tmp_path, tokenizer, splits.train, [loss, readiness], max_steps=5)
    with pytest.raises(ValueError, match="needs a PassAtKCallback"):
        trainer.train()
    # Loss only, flag-only policy: it runs and says what it watches.
    readiness = RLReadinessCallback()
    trainer = make_trainer(
        tmp_path / "b",
        tokenizer,
        splits.train,
        [readiness, HeldOutLossCallback(splits.heldout_sft, every_n_steps=5)],
        max_steps=10,
        save_steps=5,
    )
    trainer.train()
    assert readiness.found == ["held-out loss (heldout)"]
    assert json.loads((tmp_path / "b" / "out" / "sftrl" / "rl_start.json").read_text())["step"] in (5, 10)


@pytest.mark.slow
def test_report_renders_from_a_real_run(stopped_run):
    import subprocess
    import sys

    tmp_path = stopped_run[0]
    proc = subprocess.run(
        [sys.executable, "-m", "sftrl_callbacks.cli", "report", str(tmp_path / "out")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (tmp_path / "out" / "sftrl" / "report.html").read_text()
    assert "data:image/png;base64," in page and "loss_turn" in page and "RL start" in page
    assert (tmp_path / "out" / "sftrl" / "report.png").stat().st_size > 20_000
