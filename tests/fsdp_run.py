"""Training with measurements in between, sharded on 2 ranks or in one process (run by tests/test_fsdp.py).

    torchrun --nproc_per_node 2 tests/fsdp_run.py OUTPUT_DIR fsdp2  # fully_shard on every layer and the root
    torchrun --nproc_per_node 2 tests/fsdp_run.py OUTPUT_DIR fsdp1  # FullyShardedDataParallel, layers wrapped
    torchrun --nproc_per_node 2 tests/fsdp_run.py OUTPUT_DIR zero3  # DeepSpeed ZeRO-3 (CPU accelerator)
    torchrun --nproc_per_node 2 tests/fsdp_run.py OUTPUT_DIR fsdp1,zero3,zero3-unmeasured  # see below
    python tests/fsdp_run.py OUTPUT_DIR                             # the same run, one process, no sharding
    ... --no-measuring                                              # the same training without measurements
    ... --no-optimizer                                              # measurements not handed the optimizer

Ways separated by commas run one after the other in one launch, each into OUTPUT_DIR/<way>; a way with
"-unmeasured" after its name trains without the measurements.

The toy model trains 40 AdamW steps on the same batches on every rank (so FSDP and the single run train the
same weights) and is measured at steps 20 and 40 with the callbacks' code paths: held-out loss (7 examples
in batches of 3: 2 batches on rank 0, 1 on rank 1) and pass@k, uniform and dynamic (5 problems in chunks
of 2, 2, 1: 2 calls on rank 0, 1 on rank 1). Unequal shares on purpose: every forward of a sharded model
is a collective. Then the final weights are gathered and rank 0 measures them alone in an unsharded copy,
and the last rank fails while the others run forwards. Each rank writes what it measured, the reference,
the failures it saw and checksums of the final weights to OUTPUT_DIR.
"""

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from processes import skip_deepspeed_shm_build  # (a script's own folder is on its path)

torch.set_num_threads(1)
STEPS = 40
LR = 3e-3

from sftrl_callbacks.distributed import Shard, current_shard, parameters_are_sharded  # noqa: E402
from sftrl_callbacks.heldout import heldout_loss, prepare_examples  # noqa: E402
from sftrl_callbacks.hf_sampler import HFSampler  # noqa: E402
from sftrl_callbacks.measure import PassAtKConfig, measure_pass_at_k  # noqa: E402
from sftrl_callbacks.prompts import pad_token_id  # noqa: E402
from sftrl_callbacks.toy import build_model, build_tokenizer, make_splits  # noqa: E402

EMBEDDING = "model.embed_tokens.weight"


class LooseVerifier:
    """Accepts a completion with a `###` in it: 40 steps of training solve nothing, and counts of 0 would
    not show that the counts are gathered right."""

    def check(self, completions, rows) -> list[bool]:
        return ["###" in c for c in completions]


def shard_model(model: torch.nn.Module, how: str) -> tuple[torch.nn.Module, Callable, Any]:
    """(the model the measurements see, one training step on a batch, the optimizer a trainer would hand
    to callbacks) for `how` (None: one process)."""
    if how == "zero3":
        import deepspeed

        config = {
            "train_micro_batch_size_per_gpu": 16,
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
            "optimizer": {"type": "AdamW", "params": {"lr": LR, "torch_adam": True}},
        }
        engine, *_ = deepspeed.initialize(model=model, config=config, model_parameters=model.parameters())

        def engine_step(batch: dict) -> None:
            engine.backward(engine(**batch).loss)
            engine.step()

        # HF Trainer hands callbacks the module, not the engine, and the engine's optimizer (wrapped by accelerate).
        return engine.module, engine_step, engine.optimizer
    if how == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        policy = ModuleWrapPolicy({type(model.model.layers[0])})
        model = FullyShardedDataParallel(model, auto_wrap_policy=policy, device_id=torch.device("cpu"))
    elif how == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)

    def step(batch: dict) -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return model, step, optimizer


def full_weights(model: torch.nn.Module, how: str | None) -> dict[str, torch.Tensor]:
    """Every parameter, gathered whole, under its unwrapped name."""
    whole = contextlib.nullcontext()
    if how == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        whole = FullyShardedDataParallel.summon_full_params(model)
    elif how == "zero3":
        import deepspeed

        whole = deepspeed.zero.GatheredParameters(list(model.parameters()))
    with whole:
        return {
            name.replace("_fsdp_wrapped_module.", ""): (p.full_tensor() if hasattr(p, "full_tensor") else p)
            .detach()
            .clone()
            for name, p in model.named_parameters()
        }


def main(out: str, how: str | None, measuring: bool = True) -> None:
    tokenizer = build_tokenizer()
    splits = make_splits(n_train=16 * STEPS, n_heldout_sft=7, n_heldout_problems=5, seed=0)
    model, train_step, optimizer = shard_model(build_model(tokenizer, seed=0), how)
    shard = current_shard(optimizer if "--no-optimizer" not in sys.argv else None)
    train = prepare_examples(splits.train, tokenizer, max_length=128)
    heldout = prepare_examples(splits.heldout_sft, tokenizer, max_length=128)
    pad = pad_token_id(tokenizer)
    sampler = HFSampler(max_batch_rows=8, show_progress=False)
    uniform = PassAtKConfig(n=4, max_new_tokens=30, seed=3, num_saved_examples=5)
    # ks <= initial_n: estimated without the beta-binomial fits, which take most of a minute on 5 problems.
    dynamic = PassAtKConfig(
        n=4, ks=[1, 2], max_new_tokens=30, seed=3, num_saved_examples=5, allocation="dynamic", initial_n=2
    )

    def measure(model: torch.nn.Module, shard: Shard) -> dict:
        loss = heldout_loss(model, heldout, batch_size=3, pad_token_id=pad, shard=shard)
        result = {"loss": loss.loss, "n_tokens": loss.n_tokens}
        for name, config in (("uniform", uniform), ("dynamic", dynamic)):
            r = measure_pass_at_k(
                model, tokenizer, splits.heldout_problems, LooseVerifier(), config, sampler, shard=shard
            )
            result[name] = {
                "n": r.n_per_problem,
                "c": r.c_per_problem,
                "tokens": r.mean_completion_tokens,
                "examples": r.examples,
            }
        return result

    measured, seconds = {}, {}
    for step in range(1, STEPS + 1):
        batch = train[(step - 1) * 16 : step * 16]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), -100)
        for row, e in enumerate(batch):
            ids[row, : len(e.input_ids)], labels[row, : len(e.labels)] = (
                torch.tensor(e.input_ids),
                torch.tensor(e.labels),
            )
        train_step({"input_ids": ids, "attention_mask": (labels != -100) | (ids != pad), "labels": labels})
        if measuring and step % (STEPS // 2) == 0:
            start = time.perf_counter()
            measured[step] = measure(model, shard)
            seconds[step] = time.perf_counter() - start
    # The last weights, gathered, measured by rank 0 alone in an unsharded copy of the model.
    weights = full_weights(model, how)
    plain = build_model(tokenizer, seed=0)
    missing, unexpected = plain.load_state_dict(weights, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # tied to the embedding, which is loaded
    reference = measure(plain, Shard()) if measuring and shard.rank == 0 else None

    # A failure on one rank while the other still runs forwards: both raise, neither hangs.
    def forwards_then_fail() -> None:
        if shard.rank == shard.world - 1:
            raise ValueError("the sampler broke on this rank")
        with torch.no_grad():
            for _ in range(3):
                model(input_ids=torch.tensor([[5, 6, 7]]))

    failures = []
    for gather_parameters in (False, True):
        try:
            shard.run("pass@k sampling", forwards_then_fail, model=model, gather_parameters=gather_parameters)
            failures.append("no error")
        except (RuntimeError, ValueError) as err:
            failures.append(str(err))

    # The embedding's local shape inside a run that gathers the parameters, and after it (FSDP1: flat parameters).
    def embedding_shape() -> list[int] | None:
        embedding = dict(model.named_parameters()).get(EMBEDDING)
        local = getattr(embedding, "to_local", lambda: embedding)()  # a DTensor's .shape is the global one
        return None if embedding is None else list(local.shape)

    whole = shard.run("look", embedding_shape, model=model, gather_parameters=True)[0]

    def zero3_whole() -> int:  # parameters held whole (ZeRO-3 leaves a 0-element placeholder in a partitioned one)
        return sum(p.data.numel() == p.ds_numel for p in model.parameters())

    zero3 = None
    if how == "zero3":
        zero3 = {
            "parameters": len(list(model.parameters())),
            "gathered": shard.run("look", zero3_whole, model=model, gather_parameters=True)[0],
            "after": zero3_whole(),
        }
    view = {
        "world": shard.world,
        "sharded": parameters_are_sharded(model),
        "measured": measured,
        "seconds": seconds,  # wall time of each measurement (to compare ways of sharding; not tested)
        "reference": reference,
        "weights": {name: w.double().sum().item() for name, w in weights.items()},
        "failures": failures,
        "embedding_shape": {"gathered": whole, "after": embedding_shape()},
        "zero3_whole": zero3,
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{shard.rank}.json"), "w", encoding="utf-8") as f:
        json.dump(view, f)
    if how:
        torch.distributed.barrier()


if __name__ == "__main__":
    # Several ways, comma-separated, run one after the other in one launch (each launch spends seconds importing).
    modes = [arg for arg in sys.argv[2:] if not arg.startswith("--")]
    ways = modes[0].split(",") if modes else [None]
    hows = [way and way.removesuffix("-unmeasured") for way in ways]
    if "zero3" in hows:
        import deepspeed

        skip_deepspeed_shm_build()
        deepspeed.init_distributed(dist_backend="gloo")  # the gloo process group, which FSDP uses as well
    elif hows != [None]:
        torch.distributed.init_process_group("gloo")
    for way, how in zip(ways, hows):
        out = sys.argv[1] if len(ways) == 1 else os.path.join(sys.argv[1], way)
        main(out, how, measuring="--no-measuring" not in sys.argv and not (way or "").endswith("-unmeasured"))
    if "zero3" in hows:
        # DeepSpeed's engine outlives the process group: in one CI run a rank aborted in teardown ("terminate
        # called without an active exception") after both ranks had written their results. Skip teardown.
        os._exit(0)
    if hows != [None]:
        torch.distributed.destroy_process_group()
