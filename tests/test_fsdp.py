"""Measurement of an FSDP-sharded model (FSDP2 and FSDP1) on 2 ranks (torchrun, gloo, CPU) equals one process.

FSDP all-gathers parameters inside every forward, so ranks measuring unequal shares must keep running
forwards together (`Shard.run(model=...)`); without that the run crashes or hangs. The training between
measurements must also come out the same: measuring may not touch the weights or autograd state.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "fsdp_run.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> dict:
    """The run in one process, unsharded."""
    out = tmp_path_factory.mktemp("single")
    proc = subprocess.run([sys.executable, SCRIPT, str(out)], capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "rank0.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fsdp2", "fsdp1"])
def test_sharded_measurement_and_training_equal_one_process(alone, how, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(_free_port()), SCRIPT, str(tmp_path), how]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]

    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (alone["world"], alone["sharded"]) == (1, False)
    assert (rank0["world"], rank0["sharded"]) == (2, True)
    assert rank0["measured"] == rank1["measured"]  # every rank holds the whole result
    assert sorted(alone["measured"]) == ["20", "40"]
    solved = 0
    for step, one in alone["measured"].items():
        two = rank0["measured"][step]
        assert two["loss"] == pytest.approx(one["loss"], abs=1e-4) and two["n_tokens"] == one["n_tokens"]
        for allocation in ("uniform", "dynamic"):
            # Seeded per chunk of problems, not per rank: the very same completions, drawn on other ranks.
            assert two[allocation] == one[allocation]
            solved += sum(one[allocation]["c"])
    assert solved > 0
    assert rank0["weights"] == pytest.approx(alone["weights"], abs=1e-6)  # training went on untouched
    for rank in (rank0, rank1):  # with the forwards in step, and with whole parameters (FSDP2) or in step (FSDP1)
        assert [f.split(":")[:2] for f in rank["failures"]] == [["pass@k sampling failed on rank 1", " ValueError"]] * 2
    # FSDP2 gathers the parameters once for pass@k sampling; FSDP1 keeps them sharded and runs in step.
    full = alone["embedding_shape"]["after"]
    if how == "fsdp2":
        assert rank0["embedding_shape"] == {"gathered": full, "after": [full[0] // 2, full[1]]}
    else:
        assert rank0["embedding_shape"] == {"gathered": None, "after": None}
