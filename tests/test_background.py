"""Pass@k of saved checkpoints in a background process: same numbers at the same steps, training does not wait."""

import json
import os
import re

import pytest

from sftrl_callbacks import AnswerVerifier, HeldOutLossCallback, PassAtKCallback, RLReadinessCallback
from sftrl_callbacks.io import read_jsonl

from .conftest import make_trainer


@pytest.mark.slow
def test_background_pass_at_k_lands_at_the_checkpoint_step_with_the_inline_numbers(tmp_path, tokenizer, splits):
    """One run measured twice at each save: in the training process and by the background job."""
    # verifier options reach the background job: with this tolerance any number after `####` counts as correct
    tolerant = dict(verifier="answer", verifier_options={"tolerance": 1e9})
    settings = dict(n=8, num_problems=6, max_new_tokens=30, seed=3, **tolerant)
    inline = PassAtKCallback({"inline": splits.heldout_problems}, **settings)
    background = PassAtKCallback({"mixed": splits.heldout_problems}, background=True, **settings)
    readiness = RLReadinessCallback(passk_set="mixed")
    callbacks = [HeldOutLossCallback({"mixed": splits.heldout_sft}, every_n_steps=10), inline, background, readiness]
    make_trainer(tmp_path, tokenizer, splits.train, callbacks, max_steps=40, save_steps=20).train()
    assert inline.errors == background.errors == 0 and background.background_jobs.pending == 0
    by_step = {r.step: r for r in background.results["mixed"]}
    assert sorted(by_step) == [0, 20, 40]  # the step-0 baseline is measured in the training process
    for expected in inline.results["inline"]:
        got = by_step[expected.step]
        # same checkpoint, code, config and seeds
        assert got.c_per_problem == expected.c_per_problem and got.n_per_problem == expected.n_per_problem
        assert got.pass_at_k == pytest.approx(expected.pass_at_k)
    kept = [(c, {"answer": e["answer"]}) for e in by_step[40].examples for c in e["completions"]]
    texts, rows = [c["completion"] for c, _ in kept], [row for _, row in kept]
    recorded = [c["correct"] for c, _ in kept]
    assert recorded == AnswerVerifier(tolerance=1e9).check(texts, rows)  # the job graded with the options...
    assert recorded != AnswerVerifier().check(texts, rows)  # ...which change verdicts here
    out = tmp_path / "out"
    records = read_jsonl(out / "sftrl" / "metrics.jsonl")
    steps = {r["step"] for r in records if r["name"] == "sftrl/passk/mixed/pass@8"}
    assert steps == {0, 20, 40}
    assert (out / "checkpoint-20" / "sftrl" / "passk_mixed.json").exists()
    rl_start = json.loads((out / "sftrl" / "rl_start.json").read_text())
    assert rl_start["metrics"]["passk"] is not None and rl_start["metrics"]["passk_metric"].endswith("pass@8")
    assert readiness.tracker.series("passk")  # the readiness ranking saw the late results
    # Training waited for sampling inline, not in the background (the end waits for the last job only).
    assert not (out / "sftrl" / "background" / "checkpoint-20").exists()  # the job's copy is cleaned up
    # One worker measured both checkpoints, and it ended with the training; the last save's job, which runs when
    # training is over, used every CPU thread.
    log = (out / "sftrl" / "background" / "worker.log").read_text()
    done = re.findall(r"step (20|40): measured in [\d.]+ s on (\d+) thread\(s\) by worker (\d+)", log)
    assert [step for step, _, _ in done] == ["20", "40"] and len({pid for _, _, pid in done}) == 1, log[-2000:]
    assert int(done[0][1]) == 1 and (int(done[1][1]) > 1 or os.cpu_count() == 1)
    with pytest.raises(ProcessLookupError):
        os.kill(int(done[0][2]), 0)


@pytest.mark.slow
def test_a_failing_background_job_is_reported_and_training_goes_on(tmp_path, tokenizer, splits, caplog):
    import logging

    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a device the child cannot use; this machine has CUDA")
    passk = PassAtKCallback(
        splits.heldout_problems,
        verifier="toy-steps",
        n=4,
        max_new_tokens=20,
        background=True,
        background_device="cuda",
        measure_at_start=False,
    )
    trainer = make_trainer(tmp_path, tokenizer, splits.train, [passk], max_steps=20, save_steps=10)
    with caplog.at_level(logging.ERROR, logger="sftrl_callbacks"):
        trainer.train()
    assert trainer.state.global_step == 20 and (tmp_path / "out" / "checkpoint-20").is_dir()
    assert passk.errors == 2 and not passk.results["heldout"]
    assert "background pass@k of step 10 exited with" in caplog.text


@pytest.mark.slow
def test_a_resumed_run_measures_again_what_its_checkpoint_had_pending(tmp_path, tokenizer, splits):
    def passk():
        return PassAtKCallback(
            {"mixed": splits.heldout_problems},
            verifier="toy-steps",
            n=4,
            num_problems=4,
            max_new_tokens=20,
            seed=3,
            background=True,
        )

    first = passk()
    make_trainer(tmp_path, tokenizer, splits.train, [first], max_steps=20, save_steps=10).train()
    out = tmp_path / "out"
    saved = json.loads((out / "checkpoint-20" / "sftrl" / "monitor_state.json").read_text())
    (member,) = saved["members"].values()
    assert member["background_pending"][-1] == 20  # the job of the save itself had not reported yet

    # Resuming from checkpoint-20 is what a run killed after that save does: the jobs it had pending run again.
    second = passk()
    trainer = make_trainer(tmp_path, tokenizer, splits.train, [second], max_steps=30, save_steps=10)
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-20"))
    assert second.errors == 0 and second.background_jobs.pending == 0
    records = read_jsonl(out / "sftrl" / "metrics.jsonl")
    # step 0 once: the resumed run does not measure its baseline again
    assert sorted(r["step"] for r in records if r["name"] == "sftrl/passk/mixed/pass@4") == [0, 10, 20, 30]
    before = {r.step: r.c_per_problem for r in first.results["mixed"]}
    after = {r.step: r.c_per_problem for r in second.results["mixed"]}
    assert after[20] == before[20]  # the same checkpoint measured with the same seeds
    assert not (out / "sftrl" / "background" / "checkpoint-20").exists()
