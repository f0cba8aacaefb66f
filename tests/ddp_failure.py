"""Run by tests/test_ddp.py under torchrun: a failure on one rank must raise on every rank, not hang the others.

torchrun --nproc_per_node 2 tests/ddp_failure.py OUTPUT_DIR
"""

import json
import os
import sys

import torch

from sftrl_callbacks.distributed import current_shard


def main(out: str) -> None:
    torch.distributed.init_process_group("gloo")
    shard = current_shard()

    def share() -> int:
        if shard.rank == 1:
            raise ValueError("the verifier broke on this rank")
        return shard.rank

    try:
        shard.run("pass@k sampling", share)
        outcome = "no error"
    except RuntimeError as err:
        outcome = str(err)
    after = shard.gather(shard.rank)  # both ranks are still in step
    with open(os.path.join(out, f"failure{shard.rank}.json"), "w", encoding="utf-8") as f:
        json.dump({"outcome": outcome, "after": after}, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
