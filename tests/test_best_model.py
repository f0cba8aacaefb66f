"""The Trainer's own best-model machinery (metric_for_best_model, load_best_model_at_end, save_strategy="best",
EarlyStoppingCallback) driven by the sftrl metrics, in real toy training."""

import copy
import math
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import EarlyStoppingCallback
from trl import SFTTrainer

from sftrl_callbacks import HeldOutLossCallback, PassAtKCallback
from sftrl_callbacks.demo import toy_sft_config
from sftrl_callbacks.io import read_jsonl
from sftrl_callbacks.toy import StepVerifier, make_splits
from tests.conftest import make_trainer


def _values(out, name):
    return {r["step"]: r["value"] for r in read_jsonl(os.path.join(out, "sftrl", "metrics.jsonl")) if r["name"] == name}


@pytest.mark.slow
def test_heldout_loss_picks_the_best_checkpoint_and_stops_early_in_any_callback_order(tmp_path, tokenizer):
    data = make_splits(n_train=32, n_heldout_sft=64, n_heldout_problems=4, seed=0, unique_train=True)
    loss = HeldOutLossCallback(data.heldout_sft, every_n_steps=None)
    stopper = EarlyStoppingCallback(early_stopping_patience=2)
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        data.train,
        [stopper, loss],  # the stopper reads the metric in its on_evaluate, before the sftrl callback's turn
        max_steps=200,
        eval_dataset=data.heldout_sft.select(range(4)),
        eval_strategy="steps",
        eval_steps=10,
        save_steps=10,
        load_best_model_at_end=True,
        metric_for_best_model="sftrl/heldout/heldout/loss",
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        logging_steps=10,
    )
    assert trainer.args.greater_is_better is False  # the name ends in "loss"
    trainer.train()
    out = trainer.args.output_dir
    losses = _values(out, "sftrl/heldout/heldout/loss")
    evals = sorted(s for s in losses if s > 0 and s % 10 == 0)
    best = min(evals, key=lambda s: (losses[s], s))
    assert trainer.state.best_model_checkpoint == os.path.join(out, f"checkpoint-{best}")
    assert math.isclose(trainer.state.best_metric, losses[best], rel_tol=1e-9)

    # EarlyStoppingCallback's rule on the same values: stop at the 2nd evaluation in a row without a new minimum.
    expected_stop, minimum, misses = None, math.inf, 0
    for step in evals:
        misses = 0 if losses[step] < minimum else misses + 1
        minimum = min(minimum, losses[step])
        if misses >= 2:
            expected_stop = step
            break
    assert expected_stop is not None and expected_stop < 200, losses  # the overfitting run's loss turned
    assert trainer.state.global_step == expected_stop

    # load_best_model_at_end put the best checkpoint's weights back into the model.
    saved = load_file(os.path.join(out, f"checkpoint-{best}", "model.safetensors"))
    name, tensor = next(iter(saved.items()))
    assert torch.equal(trainer.model.state_dict()[name].cpu(), tensor)


@pytest.mark.slow
def test_passk_drives_save_strategy_best(tmp_path, tokenizer, splits, trained):
    passk = PassAtKCallback(
        splits.heldout_problems, verifier=StepVerifier(), n=8, max_new_tokens=48, every_n_steps=None, on_save=False
    )
    args = toy_sft_config(
        str(tmp_path / "out"),
        40,
        [],
        eval_strategy="steps",
        eval_steps=10,
        save_strategy="best",
        metric_for_best_model="sftrl/passk/heldout/pass@8",
        learning_rate=3e-3,
        logging_steps=10,
    )
    trainer = SFTTrainer(
        model=copy.deepcopy(trained),
        args=args,
        train_dataset=splits.train,
        eval_dataset=splits.heldout_sft.select(range(4)),
        processing_class=tokenizer,
        callbacks=[passk],
    )
    trainer.train()
    out = args.output_dir
    values = _values(out, "sftrl/passk/heldout/pass@8")
    assert sorted(values) == [0, 10, 20, 30, 40]  # the step-0 baseline, then every evaluation
    improved, best = [], -math.inf
    for step in (10, 20, 30, 40):
        if values[step] > best:
            improved.append(step)
            best = values[step]
    saved = sorted(int(d.split("-")[1]) for d in os.listdir(out) if d.startswith("checkpoint-"))
    assert saved == improved, (values, saved)
    assert trainer.state.best_model_checkpoint == os.path.join(out, f"checkpoint-{improved[-1]}")


def _train_with(tmp_path, tokenizer, splits, callback, metric, **overrides):
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        splits.train,
        [callback],
        max_steps=2,
        eval_dataset=splits.heldout_sft.select(range(2)),
        eval_strategy="steps",
        eval_steps=1,
        metric_for_best_model=metric,
        **overrides,
    )
    trainer.train()


@pytest.mark.slow
def test_best_model_metric_mistakes_are_refused_at_train_start(tmp_path, tokenizer, splits):
    problems = splits.heldout_problems.select(range(2))
    background = PassAtKCallback(problems, verifier="toy-steps", n=2, background=True, measure_at_start=False)
    with pytest.raises(ValueError, match="background=True"):
        _train_with(tmp_path / "a", tokenizer, splits, background, "sftrl/passk/heldout/pass@2")
    passk = PassAtKCallback(problems, verifier=StepVerifier(), n=2, measure_at_start=False)
    with pytest.raises(ValueError, match=r"logs no 'pass@3'.*pass@1"):
        _train_with(tmp_path / "b", tokenizer, splits, passk, "sftrl/passk/heldout/pass@3")
    loss = HeldOutLossCallback(splits.heldout_sft.select(range(2)), measure_at_start=False)
    with pytest.raises(ValueError, match="set greater_is_better=False"):  # "loss_smoothed" does not end in "loss"
        _train_with(tmp_path / "c", tokenizer, splits, loss, "sftrl/heldout/heldout/loss_smoothed")
    eager = HeldOutLossCallback(splits.heldout_sft.select(range(2)), on_evaluate=True, measure_at_start=False)
    with pytest.raises(ValueError, match="eval_strategy='no'"):
        make_trainer(tmp_path / "d", tokenizer, splits.train, [eager], max_steps=2).train()
