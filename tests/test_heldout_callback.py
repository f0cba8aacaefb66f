import logging
import math
import os

import pytest
from datasets import Dataset

from sftrl_callbacks import HeldOutLossCallback, HeldOutLossConfig
from sftrl_callbacks.heldout import heldout_loss, prepare_examples
from sftrl_callbacks.io import read_jsonl

from . import wandb_offline
from .conftest import make_trainer


def _losses(records, name="sftrl/heldout/mixed/loss"):
    return {r["step"]: r["value"] for r in records if r["name"] == name}


@pytest.mark.slow
def test_schedule_jsonl_trainer_log_and_wandb_agree(logged_run, tokenizer, splits):
    tmp_path, trainer = logged_run
    records = read_jsonl(tmp_path / "out" / "sftrl" / "metrics.jsonl")
    jsonl = _losses(records)
    # the step-0 baseline, every 10 steps, plus the saves at 15 and 30 (the end)
    assert sorted(jsonl) == [0, 10, 15, 20, 30]
    assert all(r["dataset"] == "mixed" for r in records)
    assert all(r["n_tokens"] > 0 for r in records if r["name"] == "sftrl/heldout/mixed/loss")

    logged = {
        h["step"]: h["sftrl/heldout/mixed/loss"] for h in trainer.state.log_history if "sftrl/heldout/mixed/loss" in h
    }
    assert logged == jsonl

    history = wandb_offline.history(wandb_offline.run_file(str(tmp_path)))
    in_wandb = {
        r["train/global_step"]: r["sftrl/heldout/mixed/loss"] for r in history if "sftrl/heldout/mixed/loss" in r
    }
    keys = sorted({k for r in history for k in r})
    assert in_wandb == pytest.approx(jsonl, abs=1e-12), f"W&B history: {len(history)} rows, keys {keys[:40]}"
    # The trainer's own W&B callback must not duplicate them under train/...
    assert not any(k.startswith("train/sftrl") for r in history for k in r)

    # The last value is the final model's loss, computed independently here.
    final = heldout_loss(trainer.model, prepare_examples(splits.heldout_sft, tokenizer)).loss
    assert math.isclose(jsonl[30], final, abs_tol=1e-4)
    mins = _losses(records, "sftrl/heldout/mixed/loss_min")
    assert mins[30] == min(jsonl.values())
    # The gap is taken against the training loss the trainer logged at the same step.
    gaps = {r["step"]: r for r in records if r["name"] == "sftrl/heldout/mixed/gap"}
    train = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    assert sorted(gaps) == sorted(jsonl)[1:]  # no training loss at step 0
    for step, record in gaps.items():
        assert record["train_loss_step"] == step
        assert record["value"] == pytest.approx(jsonl[step] - train[step], abs=1e-9)


def test_works_without_wandb_and_with_eval_strategy(tmp_path, tokenizer, splits):
    cb = HeldOutLossCallback(splits.heldout_sft, every_n_steps=0)
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        splits.train,
        [cb],
        max_steps=20,
        eval_dataset=splits.heldout_sft,
        eval_strategy="steps",
        eval_steps=10,
        save_steps=10,
        per_device_eval_batch_size=512,
    )
    trainer.train()
    ours = {
        h["step"]: h["sftrl/heldout/heldout/loss"]
        for h in trainer.state.log_history
        if "sftrl/heldout/heldout/loss" in h
    }
    evals = {h["step"]: h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h}
    assert sorted(ours) == [0, 10, 20]
    # One eval batch holds the whole set, so the trainer's eval_loss is also token-weighted.
    for step in evals:
        assert math.isclose(ours[step], evals[step], abs_tol=1e-4)


def test_reuses_trainer_eval_loss(tmp_path, tokenizer, splits):
    cb = HeldOutLossCallback(use_trainer_eval=True)
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        splits.train,
        [cb],
        max_steps=20,
        eval_dataset={"mixed": splits.heldout_sft},
        eval_strategy="steps",
        eval_steps=10,
    )
    trainer.train()
    records = read_jsonl(tmp_path / "out" / "sftrl" / "metrics.jsonl")
    evals = {h["step"]: h["eval_mixed_loss"] for h in trainer.state.log_history if "eval_mixed_loss" in h}
    assert _losses(records) == evals and sorted(evals) == [10, 20]


def test_monitor_failure_does_not_kill_training_unless_strict(tmp_path, tokenizer, splits, caplog):
    broken = Dataset.from_dict({"input_ids": [[1, 2, 10_000]], "labels": [[1, 2, 10_000]]})  # id outside vocab
    # before any step a failed baseline stops the run, nothing lost yet (tested below); asked, it trains on
    cb = HeldOutLossCallback(broken, every_n_steps=5, isolate_from_start=True)
    trainer = make_trainer(tmp_path, tokenizer, splits.train, [cb], max_steps=10, save_steps=10)
    with caplog.at_level(logging.ERROR, logger="sftrl_callbacks"):
        trainer.train()
    assert trainer.state.global_step == 10 and cb.errors == 3  # step 0 (the baseline), 5 and 10
    assert "held-out loss failed" in caplog.text
    assert os.path.isdir(tmp_path / "out" / "checkpoint-10")

    strict = HeldOutLossCallback(broken, every_n_steps=5, strict=True)
    trainer = make_trainer(tmp_path / "strict", tokenizer, splits.train, [strict], max_steps=10)
    with pytest.raises(IndexError):
        trainer.train()


def test_bad_arguments_fail_at_construction(splits):
    with pytest.raises(ValueError, match="empty"):
        HeldOutLossCallback(splits.heldout_sft.select([]))
    with pytest.raises(TypeError, match="HeldOutLossConfig"):
        HeldOutLossCallback(splits.heldout_sft, config={"every_n_steps": 5})
    with pytest.raises(TypeError, match="Unknown"):
        HeldOutLossCallback(splits.heldout_sft, every_n_step=5)
    with pytest.raises(ValueError, match="datasets="):
        HeldOutLossCallback()
    assert HeldOutLossCallback(splits.heldout_sft, config=HeldOutLossConfig(every_n_steps=3)).config.every_n_steps == 3


def test_a_failed_baseline_stops_the_run_before_step_1(tmp_path, tokenizer, splits):
    broken = Dataset.from_dict({"input_ids": [[1, 2, 10_000]], "labels": [[1, 2, 10_000]]})
    cb = HeldOutLossCallback(broken, every_n_steps=5)
    trainer = make_trainer(tmp_path, tokenizer, splits.train, [cb], max_steps=10, save_steps=10)
    with pytest.raises(RuntimeError, match="step-0 baseline measurement failed, before any training step") as err:
        trainer.train()
    assert "held-out loss failed: IndexError" in str(err.value) and "isolate_from_start=True" in str(err.value)
    assert trainer.state.global_step == 0 and not os.path.isdir(tmp_path / "out" / "checkpoint-10")
