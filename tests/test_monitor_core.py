"""The monitor core on real toy training: wiring, per-run state, failure isolation, NaN, `/` in set names."""

import json
import logging
import math
import os

import pytest
import torch
from transformers import TrainerCallback

from sftrl_callbacks import HeldOutLossCallback, PassAtKCallback, RLReadinessCallback
from sftrl_callbacks.contracts import Completion
from sftrl_callbacks.io import read_jsonl
from sftrl_callbacks.toy import StepVerifier, make_splits

from . import wandb_offline
from .conftest import make_trainer


class ListSink:
    """A user sink that keeps what it is given."""

    def __init__(self) -> None:
        self.metrics: dict[tuple[int, str], float] = {}
        self.events: list[str] = []

    def log(self, step, metrics, **context):
        self.metrics.update({(step, k): v for k, v in metrics.items()})

    def event(self, step, name, detail="", alert=False, **payload):
        self.events.append(name)


@pytest.fixture(scope="module")
def overfit():
    """32 unique rows, a whole epoch a step: the held-out loss turns within ~80 steps."""
    return make_splits(n_train=32, n_heldout_sft=64, n_heldout_problems=4, seed=0, unique_train=True)


def _loss_steps(records, name):
    return {r["step"]: r["value"] for r in records if r["name"] == name}


@pytest.mark.slow
def test_two_trainers_alive_at_once_stay_apart_and_slash_names_work(tmp_path, tokenizer, splits):
    loss_a = HeldOutLossCallback({"math/a": splits.heldout_sft}, every_n_steps=5)
    readiness_a = RLReadinessCallback()
    loss_b = HeldOutLossCallback({"math/b": splits.heldout_sft}, every_n_steps=5)
    passk_b = PassAtKCallback({"math/b": splits.heldout_problems}, verifier=StepVerifier(), n=4, num_problems=3)
    readiness_b = RLReadinessCallback()
    # Both trainers exist before either trains; B lists readiness first.
    trainer_a = make_trainer(tmp_path / "a", tokenizer, splits.train, [loss_a, readiness_a], max_steps=10, save_steps=5)
    trainer_b = make_trainer(
        tmp_path / "b", tokenizer, splits.train, [readiness_b, passk_b, loss_b], max_steps=10, save_steps=5
    )
    trainer_a.train()
    trainer_b.train()
    assert set(readiness_a.tracker.losses) == {"math/a"} and not readiness_a.tracker.passk
    assert set(readiness_b.tracker.losses) == {"math/b"} and set(readiness_b.tracker.passk) == {"math/b"}
    assert readiness_b.found == ["held-out loss (math/b)", "pass@k (math/b)"]

    out = tmp_path / "b" / "out"
    start = json.loads((out / "sftrl" / "rl_start.json").read_text())
    assert start["metrics"]["heldout_loss"] is not None and start["metrics"]["passk"] is not None
    assert start["metrics"]["passk_metric"] == "sftrl/passk/math/b/pass@4"
    assert os.path.isabs(start["path"]) and os.path.isdir(start["path"])
    assert (out / "checkpoint-10" / "sftrl" / "passk_math%2Fb.json").exists()
    names = {r["name"] for r in read_jsonl(out / "sftrl" / "metrics.jsonl")}
    assert {"sftrl/heldout/math/b/loss", "sftrl/heldout/math/b/gap", "sftrl/passk/math/b/pass@4"} <= names
    assert not any("math/a" in n for n in names)


def test_explicit_watch_and_a_watched_callback_missing_from_the_trainer(tmp_path, tokenizer, splits):
    loss = HeldOutLossCallback(splits.heldout_sft, every_n_steps=5)
    passk = PassAtKCallback(splits.heldout_problems, verifier=StepVerifier(), n=2, num_problems=2)
    readiness = RLReadinessCallback(watch=[loss])
    make_trainer(tmp_path, tokenizer, splits.train, [readiness, loss, passk], max_steps=5, save_steps=5).train()
    assert readiness.found == ["held-out loss (heldout)"] and not readiness.tracker.passk

    stray = RLReadinessCallback(watch=[HeldOutLossCallback(splits.heldout_sft)])
    trainer = make_trainer(tmp_path / "stray", tokenizer, splits.train, [stray, loss], max_steps=5)
    with pytest.raises(ValueError, match="not among this trainer's callbacks"):
        trainer.train()
    with pytest.raises(TypeError, match="watch="):
        RLReadinessCallback(watch=[object()])


@pytest.mark.slow
def test_reused_callbacks_start_clean_in_a_second_run(tmp_path, tokenizer, splits):
    loss = HeldOutLossCallback({"mixed": splits.heldout_sft}, every_n_steps=10)
    readiness = RLReadinessCallback()
    first = make_trainer(tmp_path / "one", tokenizer, splits.train, [loss, readiness], max_steps=20, save_steps=10)
    first.train()
    first_file = tmp_path / "one" / "out" / "sftrl" / "metrics.jsonl"
    first_lines = first_file.read_text()
    best_first = min(v for _, v in loss.history["sftrl/heldout/mixed/loss"])

    second = make_trainer(tmp_path / "two", tokenizer, splits.train, [loss, readiness], max_steps=10, save_steps=10)
    second.train()
    assert first_file.read_text() == first_lines  # nothing of run two went into run one's file
    records = read_jsonl(tmp_path / "two" / "out" / "sftrl" / "metrics.jsonl")
    losses = _loss_steps(records, "sftrl/heldout/mixed/loss")
    mins = _loss_steps(records, "sftrl/heldout/mixed/loss_min")
    assert sorted(losses) == [0, 10] and mins[10] == losses[10] > best_first  # its own minimum, not run one's
    assert [s for s, _ in loss.history["sftrl/heldout/mixed/loss"]] == [0, 10]  # the step-0 baseline, then 10
    assert readiness.checkpoints == [10] and readiness.rl_start["step"] == 10


@pytest.mark.slow
def test_full_disk_and_unwritable_folder_do_not_silence_the_rest(tmp_path, tokenizer, overfit, wandb_dir, caplog):
    sftrl_dir = tmp_path / "out" / "sftrl"
    sftrl_dir.mkdir(parents=True)
    os.symlink("/dev/full", sftrl_dir / "metrics.jsonl")  # every write: "No space left on device"
    (sftrl_dir / "passk").write_text("a file where the pass@k folder should be")
    sink = ListSink()
    loss = HeldOutLossCallback(overfit.heldout_sft, every_n_steps=10)
    passk = PassAtKCallback(overfit.heldout_problems, verifier=StepVerifier(), n=2, max_new_tokens=30, every_n_steps=30)
    readiness = RLReadinessCallback(early_stopping="loss", loss_patience=1, smoothing=0.0, sinks=[sink])
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        overfit.train,
        [loss, passk, readiness],
        max_steps=300,
        report_to=["wandb"],
        save_steps=50,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        logging_steps=10,
    )
    with caplog.at_level(logging.ERROR, logger="sftrl_callbacks"):
        trainer.train()
    import wandb

    wandb.finish()
    turn = next(f for f in readiness.flags if f.kind == "loss_turn")
    assert trainer.state.global_step == turn.confirmed_step < 300  # the stop policy still fired
    assert "sftrl/readiness/flag/loss_turn" in sink.events and "sftrl/readiness/stop" in sink.events

    measured = sorted(s for s, _ in loss.history["sftrl/heldout/heldout/loss"])
    passk_steps = sorted(s for s, _ in passk.history["sftrl/passk/heldout/pass@2"])
    assert passk_steps and passk.errors == 0
    logged = {}
    for entry in trainer.state.log_history:
        logged.setdefault(entry["step"], {}).update(entry)
    assert all("sftrl/heldout/heldout/loss" in logged[s] for s in measured)
    assert all("sftrl/passk/heldout/pass@2" in logged[s] for s in passk_steps)
    history = wandb_offline.history(wandb_offline.run_file(str(wandb_dir)))
    in_wandb = {r["train/global_step"] for r in history if "sftrl/passk/heldout/pass@2" in r}
    assert in_wandb == set(passk_steps)
    # Each broken place is reported once, with the path and the reason, not once per write.
    jsonl_errors = [r for r in caplog.records if "metrics.jsonl" in r.getMessage()]
    assert len(jsonl_errors) == 1 and "No space left on device" in jsonl_errors[0].getMessage()
    assert any("step-" in r.getMessage() and "passk" in r.getMessage() for r in caplog.records)


class PoisonAt(TrainerCallback):
    """Turns every weight into NaN at the start of a step (a diverged run)."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(math.nan)


def test_nan_weights_are_flagged_and_never_chosen(tmp_path, tokenizer, splits, caplog):
    loss = HeldOutLossCallback(splits.heldout_sft, every_n_steps=10)
    readiness = RLReadinessCallback()
    trainer = make_trainer(
        tmp_path, tokenizer, splits.train, [PoisonAt(10), loss, readiness], max_steps=20, save_steps=10
    )
    with caplog.at_level(logging.ERROR, logger="sftrl_callbacks"):
        trainer.train()
    out = tmp_path / "out" / "sftrl"
    records = read_jsonl(out / "metrics.jsonl")
    nan_loss = [r for r in records if r["name"] == "sftrl/heldout/heldout/loss" and r["step"] == 20]
    assert nan_loss and nan_loss[0]["value"] is None and nan_loss[0]["invalid"] == "nan"
    assert any(r["name"] == "sftrl/readiness/flag/nan" for r in records)
    assert [f.kind for f in readiness.flags] == ["nan"]

    def no_nan(token):
        raise AssertionError(f"invalid JSON constant {token}")

    start = json.loads((out / "rl_start.json").read_text(), parse_constant=no_nan)
    assert start["step"] == 10 and start["excluded"] == [{"step": 20, "reason": "non-finite loss"}]
    assert "NaN" in caplog.text or "nan" in caplog.text


def test_extrapolated_ks_get_their_own_names(trained, tokenizer, splits):
    from sftrl_callbacks.measure import PassAtKConfig, measure_pass_at_k

    config = PassAtKConfig(n=4, num_problems=3, max_new_tokens=30, extrapolate_ks=[16])
    result = measure_pass_at_k(
        trained, tokenizer, splits.heldout_problems, StepVerifier(), config, dataset_name="p/q", step=3
    )
    metrics = result.metrics()
    assert "sftrl/passk/p/q/pass@16_extrapolated" in metrics and "sftrl/passk/p/q/pass@16" not in metrics
    assert "sftrl/passk/p/q/pass@4" in metrics


class FailsAfterFirstCall:
    """A sampler whose engine breaks after its first measurement (as an unsupported shape or an OOM would)."""

    description = "FailsAfterFirstCall (test engine)"

    def __init__(self):
        self.calls = 0

    def sample(self, model, tokenizer, prompts, n, params):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("engine exploded\nat step whatever")
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        return [[Completion(" #### 1", 3, False)] * c for c in counts]


def test_a_failing_measurement_shows_in_metrics_the_tracker_and_the_report(tmp_path, tokenizer, splits, caplog):
    """Training goes on; each failure is an event in metrics.jsonl and TensorBoard (the first an alert), the report
    lists them, and the end of training says how many of the measurements failed."""
    from sftrl_callbacks.report import render_report
    from tests import tracker_readback

    passk = PassAtKCallback({"p": splits.heldout_problems.select(range(2))}, sampler=FailsAfterFirstCall(), n=2)
    readiness = RLReadinessCallback()
    trainer = make_trainer(
        tmp_path, tokenizer, splits.train, [passk, readiness], max_steps=10, save_steps=5, report_to=["tensorboard"]
    )
    with caplog.at_level(logging.WARNING, logger="sftrl_callbacks"):
        trainer.train()
    assert trainer.state.global_step == 10 and passk.errors == 2
    events = [r for r in read_jsonl(tmp_path / "out" / "sftrl" / "metrics.jsonl") if r["name"] == "sftrl/failure/passk"]
    assert [(e["step"], e["alert"]) for e in events] == [(5, True), (10, False)]
    assert {e["error"] for e in events} == {"RuntimeError: engine exploded"}
    assert {e["sampler"] for e in events} == {"FailsAfterFirstCall (test engine)"}
    assert {e["callback"] for e in events} == {"PassAtKCallback[p]"}
    summary = "PassAtKCallback[p]: 2 of 3 measurements failed; last: pass@k failed: RuntimeError: engine exploded"
    assert summary in caplog.text
    texts = tracker_readback.tensorboard_text(str(tmp_path / "out" / "runs"), "sftrl/events")
    assert any("sftrl/failure/passk" in t and "engine exploded" in t for t in texts.values())
    _, page = render_report(str(tmp_path / "out"))
    with open(page, encoding="utf-8") as f:
        html = f.read()
    assert "Failures (2)" in html and "RuntimeError: engine exploded" in html
    # The RL-start choice says which signals it went without, and why.
    rl_start = json.loads((tmp_path / "out" / "sftrl" / "rl_start.json").read_text())
    failed = "PassAtKCallback[p] failed: pass@k failed: RuntimeError: engine exploded"
    assert rl_start["missing"] == {
        "heldout_loss": "nothing on this trainer measures the held-out loss",
        "passk": failed,
    }
    assert {row["step"]: row["missing"]["passk"] for row in rl_start["ranking"]} == {5: failed, 10: failed}
