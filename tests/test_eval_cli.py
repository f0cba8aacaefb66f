import json
import subprocess
import sys

import pytest

from sftrl_callbacks import AnswerVerifier, HeldOutLossCallback, PassAtKCallback
from sftrl_callbacks.cli import main as sftrl
from sftrl_callbacks.measure import load_result
from sftrl_callbacks.toy import StepVerifier

from .conftest import make_trainer


@pytest.mark.slow
def test_eval_on_saved_checkpoints_matches_the_callbacks(tmp_path, tokenizer, splits, capsys):
    problems = splits.heldout_problems.select(range(6))
    loss = HeldOutLossCallback({"mixed": splits.heldout_sft}, every_n_steps=0)
    passk = PassAtKCallback({"mixed": problems}, verifier=StepVerifier(), n=8, max_new_tokens=40, seed=3)
    # Every sampling setting away from its default: `sftrl eval` takes them all, from the same fields.
    tuned_settings = dict(
        n=6,
        max_new_tokens=24,
        seed=7,
        temperature=0.9,
        top_p=0.85,
        top_k=6,
        stop_strings=[";", "Q"],
        num_saved_examples=6,
    )
    tuned = PassAtKCallback({"tuned": problems}, verifier=StepVerifier(), **tuned_settings)
    trainer = make_trainer(
        tmp_path, tokenizer, splits.train, [loss, passk, tuned], max_steps=40, save_steps=20, learning_rate=3e-3
    )
    trainer.train()
    splits.heldout_sft.to_json(tmp_path / "heldout.jsonl")
    problems.to_json(tmp_path / "problems.jsonl")
    out = tmp_path / "out"
    # In this process, through the CLI's own entry point (test_eval_rejects_bad_arguments runs it as a process):
    # a second process would spend seconds importing what this one has.
    args = [str(out / "checkpoint-20"), str(out / "checkpoint-40"), "--heldout", f"mixed={tmp_path / 'heldout.jsonl'}"]
    args += ["--problems", f"mixed={tmp_path / 'problems.jsonl'}", "--verifier", "toy-steps", "--n", "8"]
    args += ["--max-new-tokens", "40", "--seed", "3", "--max-length", "128"]
    capsys.readouterr()
    assert sftrl(["eval", *args]) == 0
    printed = capsys.readouterr().out
    results = {r["step"]: r for r in map(json.loads, printed.strip().splitlines())}
    logged_loss = dict(loss.history["sftrl/heldout/mixed/loss"])
    for step in (20, 40):
        assert results[step]["metrics"]["sftrl/heldout/mixed/loss"] == pytest.approx(logged_loss[step], abs=1e-4)
        during = load_result(str(out / f"checkpoint-{step}" / "sftrl" / "passk_mixed.json"))
        offline = load_result(str(out / f"checkpoint-{step}" / "sftrl" / "eval_passk_mixed.json"))
        assert offline.c_per_problem == during.c_per_problem and offline.n_per_problem == during.n_per_problem
        assert offline.pass_at_k == pytest.approx(during.pass_at_k)

    # verifier options, as KEY=VALUE pairs read as JSON: with this tolerance any number after `####` is correct
    args = [str(out / "checkpoint-40"), "--problems", f"tolerant={tmp_path / 'problems.jsonl'}", "--n", "8"]
    args += ["--verifier", "answer", "--verifier-options", "tolerance=1e9", "--max-new-tokens", "40", "--seed", "3"]
    assert sftrl(["eval", *args]) == 0
    tolerant = load_result(str(out / "checkpoint-40" / "sftrl" / "eval_passk_tolerant.json"))
    kept = [(c, {"answer": e["answer"]}) for e in tolerant.examples for c in e["completions"]]
    texts, rows = [c["completion"] for c, _ in kept], [row for _, row in kept]
    assert [c["correct"] for c, _ in kept] == AnswerVerifier(tolerance=1e9).check(texts, rows)
    assert [c["correct"] for c, _ in kept] != AnswerVerifier().check(texts, rows)

    flags = [f"--{name.replace('_', '-')}" for name in tuned_settings]
    args = [str(out / "checkpoint-40"), "--problems", f"tuned={tmp_path / 'problems.jsonl'}", "--verifier", "toy-steps"]
    for flag, value in zip(flags, tuned_settings.values()):
        args += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    assert sftrl(["eval", *args]) == 0
    during = load_result(str(out / "checkpoint-40" / "sftrl" / "passk_tuned.json"))
    offline = load_result(str(out / "checkpoint-40" / "sftrl" / "eval_passk_tuned.json"))
    assert offline.c_per_problem == during.c_per_problem and offline.n_per_problem == during.n_per_problem == [6] * 6
    assert offline.examples == during.examples  # the same completions, cut at the same stop strings
    # the stop strings acted
    assert any(c["completion"].endswith(";") for e in during.examples for c in e["completions"])


def test_eval_rejects_bad_arguments(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sftrl_callbacks.cli", "eval", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "--heldout" in proc.stderr
