"""Measurement sharded across 2 ranks (torchrun, gloo, CPU) of an HF Trainer run, under DDP and under
DeepSpeed ZeRO-3, equals the single-process measurement."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from sftrl_callbacks.cli import main as sftrl
from sftrl_callbacks.io import read_jsonl

from .counting import CountingSampler
from .processes import free_port

SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_run.py")


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """DDP, then DeepSpeed ZeRO-3, one after the other in one launch of 2 ranks (each launch spends seconds
    importing): OUTPUT_DIR/<way> for each."""
    ways = ["ddp"]
    if importlib.util.find_spec("deepspeed") is not None:  # no import here: it sets up accelerators
        ways.append("zero3")
    out = tmp_path_factory.mktemp("ranks")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(free_port()), SCRIPT, str(out), ",".join(ways)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {way: out / way for way in ways}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ddp", "zero3"])
def test_two_rank_run_measures_what_one_process_measures(launch, capsys, how):
    if how not in launch:
        pytest.skip("DeepSpeed is not installed (it is in the test extra)")
    out = launch[how]
    rank0, rank1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world"] == 2 and rank0["errors"] == 0
    # Every rank ends with the whole result (so flags and stop decisions agree); only rank 0 wrote.
    assert rank0["loss"] == rank1["loss"] and rank0["passk"] == rank1["passk"] and rank0["dynamic"] == rank1["dynamic"]
    assert rank0["checkpoints"] == rank1["checkpoints"] == [20, 40]
    assert rank0["loss"][0][0] == 0  # the step-0 baseline, measured on both ranks before the first step
    if how == "zero3":
        # The Trainer hands callbacks accelerate's wrapper of DeepSpeed's optimizer, through which pass@k sampling
        # gathers the parameters once and lifts DeepSpeed's hooks from every module (the root keeps one of its own).
        assert rank0["optimizer"] == ["DeepSpeedOptimizerWrapper", "DeepSpeedZeroOptimizer_Stage3"]
        for rank in (rank0, rank1):  # one count per sampler call of that rank
            assert rank["hooked_modules"] and set(rank["hooked_modules"]) == {1}, rank["hooked_modules"]
    records = read_jsonl(out / "sftrl" / "metrics.jsonl")
    keys = [(r["step"], r["name"]) for r in records]
    assert len(keys) == len(set(keys))  # nothing written twice

    # The same checkpoints measured by one process (`sftrl eval`, the callbacks' code paths).
    args = ["eval", str(out / "checkpoint-20"), str(out / "checkpoint-40")]
    args += ["--heldout", f"mixed={out / 'heldout.jsonl'}", "--problems", f"mixed={out / 'problems.jsonl'}"]
    args += ["--verifier", "toy-steps", "--n", "4", "--max-new-tokens", "30", "--seed", "3", "--max-length", "128"]
    args += ["--max-batch-rows", "8"]  # other chunks than the ranks' (2 problems a call): samples seeded by problem
    capsys.readouterr()
    assert sftrl(args) == 0
    single = {r["step"]: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    losses = dict(rank0["loss"])
    for step in (20, 40):
        assert single[step]["metrics"]["sftrl/heldout/mixed/loss"] == pytest.approx(losses[step], abs=1e-4)
        alone = json.loads((out / f"checkpoint-{step}" / "sftrl" / "eval_passk_mixed.json").read_text())
        sharded = rank0["passk"][str(step)]
        assert alone["n_per_problem"] == sharded["n"] == [4] * 7 and alone["c_per_problem"] == sharded["c"]
        assert alone["mean_completion_tokens"] == sharded["tokens"]
        assert alone["examples"] == sharded["examples"]  # the same completions, drawn on other ranks

    # Dynamic allocation: the extra rounds are split across ranks the same way.
    args = [
        "eval",
        str(out / "checkpoint-20"),
        str(out / "checkpoint-40"),
        "--problems",
        f"dyn={out / 'problems.jsonl'}",
    ]
    args += ["--verifier", "toy-steps", "--n", "4", "--max-new-tokens", "30", "--seed", "3", "--max-batch-rows", "8"]
    args += ["--allocation", "dynamic", "--initial-n", "2"]
    assert sftrl(args) == 0
    for step in (20, 40):
        alone = json.loads((out / f"checkpoint-{step}" / "sftrl" / "eval_passk_dyn.json").read_text())
        sharded = rank0["dynamic"][str(step)]
        assert alone["n_per_problem"] == sharded["n"] and alone["c_per_problem"] == sharded["c"]
        assert alone["examples"] == sharded["examples"]
        assert alone["n_per_problem"] == [4] * 7  # unsolved after 2 samples each, so each got a second round

    # Each rank did its share of the sampling although the whole set fits in one sampler call.
    single = _one_process_forward_rows(out)
    for rank in (rank0, rank1):
        for kind in ("passk", "dynamic"):
            share = rank["forward_rows"][kind] / single[kind]
            assert 0.35 <= share <= 0.65, (kind, rank["forward_rows"], single)


def _one_process_forward_rows(out) -> dict[str, int]:
    """Eval-mode forward rows of the two pass@k measurements of tests/ddp_run.py in one process."""
    from datasets import load_dataset

    from sftrl_callbacks.checkpoints import load_checkpoint
    from sftrl_callbacks.measure import PassAtKConfig, measure_pass_at_k
    from sftrl_callbacks.toy import StepVerifier

    problems = load_dataset("json", data_files=str(out / "problems.jsonl"), split="train")
    configs = {
        "passk": PassAtKConfig(n=4, max_new_tokens=30, seed=3),
        "dynamic": PassAtKConfig(n=4, max_new_tokens=30, seed=3, allocation="dynamic", initial_n=2),
    }
    rows = {}
    for kind, config in configs.items():
        sampler = CountingSampler(show_progress=False)
        for step in (20, 40):
            model, tokenizer = load_checkpoint(str(out / f"checkpoint-{step}"), device="cpu")
            measure_pass_at_k(model, tokenizer, problems, StepVerifier(), config, sampler, kind, step)
        rows[kind] = sampler.forward_rows
    return rows


def test_a_failure_on_one_rank_raises_on_every_rank_without_a_hang(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(free_port()), os.path.join(os.path.dirname(__file__), "ddp_failure.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"failure{rank}.json").read_text())
        assert seen["outcome"] == "pass@k sampling failed on rank 1: ValueError: the verifier broke on this rank"
        assert seen["after"] == [0, 1]
