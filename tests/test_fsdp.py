"""Measurement of a model sharded on 2 ranks (torchrun, gloo, CPU) - FSDP2, FSDP1, DeepSpeed ZeRO-3 - equals
measurement in one process.

Sharded parameters are all-gathered inside every forward, so ranks measuring unequal shares must keep
running forwards together (`Shard.run(model=...)`); without that the run crashes or hangs. The training
between measurements must also come out the same: measuring may not touch the weights or autograd state.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from .processes import finish, free_port, start

SCRIPT = os.path.join(os.path.dirname(__file__), "fsdp_run.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _start(out, how: str | None) -> subprocess.Popen:
    out.mkdir()
    command = [sys.executable, SCRIPT, str(out)]
    if how:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        command += ["--master_port", str(free_port()), SCRIPT, str(out), how]
    return start(command, out / "stderr.txt", env=ENV)


def _finish(proc: subprocess.Popen, out) -> None:
    code, stderr = finish(proc, out / "stderr.txt")
    errors = [line for line in stderr.splitlines() if "Error" in line or "terminate called" in line]
    assert code == 0, "\n".join(errors[:20]) + "\n...\n" + stderr[-3000:]


def _result(out, how: str | None) -> dict:
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2 if how else 1)]
    assert all(rank["measured"] == ranks[0]["measured"] for rank in ranks)  # every rank holds the whole result
    return ranks[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Every way of sharding, one after the other in one launch of 2 ranks (each launch spends seconds importing),
    and beside it the run in one process, unsharded ("alone"); one thread each. ZeRO-3 also trains once unmeasured:
    DeepSpeed's training steps differ from torch's AdamW loop, so its run is compared with its own."""
    ways = ["fsdp2", "fsdp1"]
    if importlib.util.find_spec("deepspeed") is not None:  # no import here: it sets up accelerators
        ways += ["zero3", "zero3-unmeasured"]
    root = tmp_path_factory.mktemp("fsdp")
    sharded = _start(root / "sharded", ",".join(ways))
    _finish(_start(root / "alone", None), root / "alone")
    _finish(sharded, root / "sharded")
    found = {way: _result(root / "sharded" / way, way) for way in ways}
    return {**found, "alone": _result(root / "alone", None)}


def _same_measurement(sharded: dict, one: dict) -> None:
    assert sharded["loss"] == pytest.approx(one["loss"], abs=1e-4) and sharded["n_tokens"] == one["n_tokens"]
    for allocation in ("uniform", "dynamic"):
        # Seeded per chunk of problems, not per rank: the very same completions, drawn on other ranks.
        assert sharded[allocation] == one[allocation]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fsdp2", "fsdp1", "zero3"])
def test_sharded_measurement_and_training_equal_one_process(runs, how):
    if how not in runs:
        pytest.skip("DeepSpeed is not installed (it is in the test extra)")
    alone, run = runs["alone"], runs[how]
    assert (alone["world"], alone["sharded"]) == (1, False)
    assert (run["world"], run["sharded"]) == (2, True)
    assert sorted(run["measured"]) == ["20", "40"]
    # The last weights gathered into an unsharded copy and measured by rank 0 alone.
    _same_measurement(run["measured"]["40"], run["reference"])
    assert sum(sum(run["measured"]["40"][a]["c"]) for a in ("uniform", "dynamic")) > 0
    if how == "zero3":
        assert run["weights"] == runs["zero3-unmeasured"]["weights"]  # measuring left training untouched
    else:
        for step in ("20", "40"):
            _same_measurement(run["measured"][step], alone["measured"][step])
        assert run["weights"] == pytest.approx(alone["weights"], abs=1e-6)  # training went on untouched
    # A failure on one rank mid-measurement, forwards in step or parameters whole: both ranks raise.
    assert [f.split(":")[:2] for f in run["failures"]] == [["pass@k sampling failed on rank 1", " ValueError"]] * 2
    # FSDP2 and ZeRO-3 (given the optimizer) gather the parameters once for pass@k sampling and shard them
    # again after; FSDP1 keeps them sharded (flat parameters) and runs in step.
    full = alone["embedding_shape"]["after"]
    if how == "fsdp2":
        assert run["embedding_shape"] == {"gathered": full, "after": [full[0] // 2, full[1]]}
    elif how == "fsdp1":
        assert run["embedding_shape"] == {"gathered": None, "after": None}
    else:
        whole = run["zero3_whole"]
        assert whole == {"parameters": whole["parameters"], "gathered": whole["parameters"], "after": 0}
