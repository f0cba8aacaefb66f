"""Measurements split across the ranks of a distributed run (DDP, FSDP / FSDP2, DeepSpeed ZeRO-3).

Every rank takes part in every measurement: each does its share, the shares are gathered, and every rank
ends with the same result (so the readiness flags and the stop decision agree on all ranks); only the main
process writes. A failure on one rank raises on every rank after the gather, so no rank is left waiting
in a collective.

Sharded parameters (FSDP, FSDP2's `fully_shard`, ZeRO-3) are all-gathered inside every forward, so a
forward is a collective: while ranks measure unequal shares, the ones that finish first keep joining the
others' forwards with a one-token forward of their own until every rank is done (`Shard.run(model=...)`).
Sampling asks for whole parameters instead (`gather_parameters=True`): under FSDP2 each module is
unsharded once for the whole call, so its many decode forwards are local; under ZeRO-3 DeepSpeed's own
`unwrap_model_for_generation` gathers them once and lifts its hooks, which takes the trainer's optimizer
(`Shard.trainer_optimizer`: DeepSpeed keeps the hooks there; HF Trainer hands it to every callback). Without it,
ZeRO-3 sampling stays correct, with DeepSpeed's hooks fetching parameters by their own policy around every
module's forward at every token (twice the wall time on the toy model). Measuring writes nothing into
the parameters, and it runs under `no_grad` rather than `inference_mode` there, because inference
tensors left in FSDP's buffers break the next backward (seen with FSDP2 on CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place among `world` ranks (rank 0 of 1 outside a distributed run)."""

    rank: int = 0
    world: int = 1
    # The trainer's optimizer (HF Trainer passes it to callbacks): under DeepSpeed ZeRO-3 it is the way to the
    # hooks that must be lifted to gather the parameters once for sampling. Unused otherwise.
    trainer_optimizer: Any = field(default=None, compare=False, repr=False)

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

    def run(
        self,
        what: str,
        fn: Callable[..., T],
        *args: Any,
        model: torch.nn.Module | None = None,
        gather_parameters: bool = False,
    ) -> list[T]:
        """`fn(*args)` here, then every rank's result in rank order; a failure anywhere raises everywhere.

        `model`: the model `fn` runs forwards of; when its parameters are sharded, the ranks run those
        forwards in step (see the module doc). With `gather_parameters` they hold the whole parameters
        for the duration instead, where that can be done: FSDP2, and ZeRO-3 given `optimizer`."""
        whole, in_step = None, model
        if gather_parameters and self.world > 1 and model is not None:
            whole = _fsdp2_whole(model)
            if whole is not None:
                in_step = None  # every forward is local now
            else:
                # DeepSpeed's root pre-forward hook stays and may still compare notes across ranks (its trace
                # check): the votes stay too. One small all-reduce per forward, no parameter gathering.
                whole = _zero3_whole(model, self.trainer_optimizer)
        with whole or contextlib.nullcontext(), self._forwards_in_step(in_step):
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

    @contextlib.contextmanager
    def _forwards_in_step(self, model: torch.nn.Module | None) -> Iterator[None]:
        if self.world == 1 or model is None or not parameters_are_sharded(model):
            yield
            return
        # Before each of its forwards a rank says it is still working; a rank that is done answers with a
        # forward of its own for as long as any rank says so. One small all-reduce per forward.
        device = torch.device("cuda", torch.cuda.current_device()) if _nccl() else torch.device("cpu")
        working = True

        def any_rank_working(flag: bool) -> bool:
            vote = torch.tensor([int(flag)], device=device)
            torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MAX)
            return bool(vote.item())

        def before_forward(module: torch.nn.Module, args: Any) -> None:
            if working:
                any_rank_working(True)

        # First among the pre-forward hooks: before FSDP's own, which all-gathers the root's parameters.
        handle = model.register_forward_pre_hook(before_forward, prepend=True)
        try:
            yield
        finally:
            working = False
            was_training = model.training
            model.eval()
            idle = torch.zeros((1, 1), dtype=torch.long, device=next(model.parameters()).device)
            try:
                while any_rank_working(False):
                    with torch.no_grad():
                        model(input_ids=idle)
            finally:
                model.train(was_training)
                handle.remove()


def _fsdp2_whole(model: torch.nn.Module) -> contextlib.AbstractContextManager | None:
    """For an FSDP2 model: a context that all-gathers every parameter once and keeps it whole until it ends
    (FSDP2's documented way to run evals: `unshard()` and `set_reshard_after_forward(False)`), then puts
    back each module's own resharding and reshards. None for anything else (FSDP1, ZeRO-3, unsharded).

    Costs the whole model's memory on every rank while it lasts, as TRL's generation under ZeRO-3 does."""
    if not torch.distributed.is_available():
        return None
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not modules:
        return None
    try:  # each module's own setting, to put back (torch has no public getter for it)
        settings = [
            (
                state,
                state._auto_reshard_after_forward,
                [(g, g.post_forward_mesh_info) for g in state._fsdp_param_groups],
            )
            for state in (m._get_fsdp_state() for m in modules)
        ]
    except AttributeError:  # another torch: keep the forwards in step instead
        return None

    @contextlib.contextmanager
    def whole() -> Iterator[None]:
        try:
            for module in modules:
                module.set_reshard_after_forward(False, recurse=False)
                module.unshard()
            yield
        finally:
            for state, auto, groups in settings:
                state._auto_reshard_after_forward = auto
                for group, mesh_info in groups:
                    group.post_forward_mesh_info = mesh_info
            for module in modules:
                module.reshard()

    return whole()


def _zero3_whole(model: torch.nn.Module, optimizer: Any) -> contextlib.AbstractContextManager | None:
    """For a ZeRO-3 model: DeepSpeed's `unwrap_model_for_generation`, which gathers every parameter once and
    lifts the per-module hooks that would release them after each forward (as TRL's GRPO does). It needs
    DeepSpeed's ZeRO-3 optimizer, which holds the hooks; None without it (or for anything but ZeRO-3)."""
    if optimizer is None or not zero3_partitioned(model.parameters()):
        return None
    stage3 = optimizer
    while stage3 is not None and not hasattr(stage3, "parameter_offload"):
        stage3 = getattr(stage3, "optimizer", None)  # accelerate's DeepSpeedOptimizerWrapper wraps the engine's
    if stage3 is None:
        return None
    try:
        from deepspeed.runtime.zero import unwrap_model_for_generation
    except ImportError:  # a DeepSpeed without it: keep the forwards in step
        return None
    # The function reads `.optimizer` and `.parameters()` of the engine; callbacks hold the module instead.
    engine_view = SimpleNamespace(optimizer=stage3, parameters=stage3.parameter_offload.module.parameters)
    return unwrap_model_for_generation(engine_view)


def _nccl() -> bool:
    return "nccl" in str(torch.distributed.get_backend()).lower()


def zero3_partitioned(params: Iterable[torch.nn.Parameter]) -> bool:
    """True when one of `params` is a DeepSpeed ZeRO-3 partition (ZeRO-3 marks them with `ds_id`)."""
    return any(hasattr(p, "ds_id") for p in params)


def fsdp1_wrapped(model: torch.nn.Module) -> bool:
    """True under FSDP1 (`FullyShardedDataParallel` wrappers), whose `summon_full_params` makes parameters whole."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    return any(isinstance(module, FullyShardedDataParallel) for module in model.modules())


def parameters_are_sharded(model: torch.nn.Module) -> bool:
    """True when forwards all-gather the parameters: FSDP, FSDP2 (`fully_shard`) or DeepSpeed ZeRO-3."""
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FSDPModule

        if fsdp1_wrapped(model) or any(isinstance(module, FSDPModule) for module in model.modules()):
            return True
    return zero3_partitioned(model.parameters())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP's (and DeepSpeed's engine's) `module` wrappers; a PEFT model stays whole."""
    while hasattr(model, "module") and not hasattr(model, "get_base_model"):
        model = model.module
    return model


def no_grad_for(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """`inference_mode` (fastest), or `no_grad` where parameters are sharded (see the module doc)."""
    return torch.no_grad() if parameters_are_sharded(model) else torch.inference_mode()


def current_shard(optimizer: Any = None) -> Shard:
    """The running process's shard: torch.distributed's rank and world size once it is initialised.
    `optimizer`: the trainer's, for ZeRO-3 (see `Shard.trainer_optimizer`)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Shard(torch.distributed.get_rank(), torch.distributed.get_world_size(), optimizer)
    return Shard(trainer_optimizer=optimizer)
