import json
import os

import numpy as np
import pytest

from sftrl_callbacks import HFSampler, PassAtKCallback, pass_at_k_curve
from sftrl_callbacks.io import read_jsonl
from sftrl_callbacks.measure import PassAtKConfig, load_result, measure_pass_at_k
from sftrl_callbacks.toy import StepVerifier

from . import wandb_offline


@pytest.mark.slow
def test_callback_in_real_training_json_agrees_with_logged_metrics(logged_run):
    tmp_path = logged_run[0]
    records = read_jsonl(tmp_path / "out" / "sftrl" / "metrics.jsonl")
    logged = {(r["step"], r["name"]): r for r in records}
    for step in (15, 30):
        path = tmp_path / "out" / f"checkpoint-{step}" / "sftrl" / "passk_mixed.json"
        result = load_result(str(path))
        assert result.step == step and result.num_problems == 6 and result.n_per_problem == [8] * 6
        curve = pass_at_k_curve(np.array(result.n_per_problem), np.array(result.c_per_problem))
        assert list(curve) == [1, 2, 4, 8]
        for k, value in curve.items():
            record = logged[(step, f"sftrl/passk/mixed/pass@{k}")]
            assert record["value"] == pytest.approx(value)
            assert record["n"] == 8 and record["temperature"] == 1.0 and record["dataset"] == "mixed"
        assert result.examples and result.examples[0]["completions"]
        assert (step, "sftrl/passk/mixed/truncation_rate") in logged
    # Both callbacks logged on the same trainer; W&B holds the scalars and a curve per checkpoint.
    path = wandb_offline.run_file(str(tmp_path))
    history = wandb_offline.history(path)
    steps = {r["train/global_step"] for r in history if "sftrl/passk/mixed/pass@8" in r}
    assert steps == {0, 15, 30}
    assert any(
        "sftrl/passk/mixed/curve_step_30_table" in k or "sftrl/passk/mixed/curve_step_30" in k
        for r in history
        for k in r
    )
    assert os.path.exists(tmp_path / "out" / "sftrl" / "passk" / "step-30_mixed.json")


def test_dynamic_allocation_and_time_budget(trained, tokenizer, splits):
    config = PassAtKConfig(
        n=8,
        allocation="dynamic",
        initial_n=4,
        max_n_per_problem=10,
        max_new_tokens=40,
        extrapolate_ks=[32],
        save_completions=True,
    )
    result = measure_pass_at_k(trained, tokenizer, splits.heldout_problems, StepVerifier(), config)
    n, c = np.array(result.n_per_problem), np.array(result.c_per_problem)
    assert n.min() >= 4 and n.sum() <= 8 * len(n) and n.max() <= 10  # the budget and the cap
    assert np.all(n[c > 0] >= 4)
    # extra rounds go only to problems whose first round (their first 4 samples) solved nothing
    by_problem = [[r["correct"] for r in result.completions if r["problem"] == i] for i in range(len(n))]
    assert [len(v) for v in by_problem] == n.tolist()
    assert all(not any(v[:4]) for v in by_problem if len(v) > 4)
    assert (n > 4).any() and (c[n == 4] > 0).all()  # both kinds occur, and a solved problem got no more
    assert set(result.pass_at_k) == {1, 2, 4} and {8, 32} <= set(result.extrapolated)
    assert "beta-binomial" in result.extrapolated[32]["method"]
    budget = PassAtKConfig(n=4, max_new_tokens=40, time_budget_s=0.0)
    sampler = HFSampler(max_batch_rows=8)  # 2 problems a batch: the budget is checked between batches
    partial = measure_pass_at_k(trained, tokenizer, splits.heldout_problems, StepVerifier(), budget, sampler)
    assert 0 < partial.num_problems < partial.num_problems_requested


def test_bad_configuration_fails_at_construction(splits):
    problems = splits.heldout_problems
    with pytest.raises(ValueError, match="'answer' column"):
        PassAtKCallback(problems.remove_columns("answer"))
    with pytest.raises(ValueError, match=r"ks=\[1, 128\]: k above n=64"):
        PassAtKCallback(problems, ks=[1, 128])
    with pytest.raises(ValueError, match="Unknown verifier"):
        PassAtKCallback(problems, verifier="exact")
    with pytest.raises(ValueError, match="empty"):
        PassAtKCallback(problems.select([]))
    with pytest.raises(TypeError, match="PassAtKCallbackConfig"):
        PassAtKCallback(problems, config=PassAtKConfig())


def test_json_is_plain_and_reloadable(tmp_path, trained, tokenizer, splits):
    config = PassAtKConfig(n=4, num_problems=3, max_new_tokens=30)
    result = measure_pass_at_k(trained, tokenizer, splits.heldout_problems, StepVerifier(), config, step=7)
    path = tmp_path / "r.json"
    result.save(str(path))
    assert json.loads(path.read_text())["c_per_problem"] == result.c_per_problem
    assert load_result(str(path)) == result  # every field, the intervals, examples and reasoning summary included
