"""Measurements split across the ranks of a distributed run (DDP with gloo or NCCL).

Every rank takes part in every measurement: each does its share, the shares are gathered, and every rank
ends with the same result (so the readiness flags and the stop decision agree on all ranks); only the main
process writes. A failure on one rank raises on every rank after the gather, so no rank is left waiting
in a collective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place among `world` ranks (rank 0 of 1 outside a distributed run)."""

    rank: int = 0
    world: int = 1

    def mine(self, items: Sequence[T]) -> list[T]:
        """Every `world`-th item from `rank`: shares differ by at most one."""
        return list(items[self.rank :: self.world])

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every rank, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def all(self, flag: bool) -> bool:
        """True on every rank when it is True on every rank (a decision the ranks must share)."""
        return all(self.gather(bool(flag)))

    def run(self, what: str, fn: Callable[..., T], *args: Any) -> list[T]:
        """`fn(*args)` here, then every rank's result in rank order; a failure anywhere raises everywhere."""
        try:
            payload = (fn(*args), None)
        except Exception as err:
            if self.world == 1:
                raise
            payload = (None, f"rank {self.rank}: {type(err).__name__}: {err}")
        gathered = self.gather(payload)
        errors = [error for _, error in gathered if error]
        if errors:
            raise RuntimeError(f"{what} failed on " + "; ".join(errors))
        return [result for result, _ in gathered]


def current_shard() -> Shard:
    """The running process's shard: torch.distributed's rank and world size once it is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Shard(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return Shard()
