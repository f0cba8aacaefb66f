"""The weights of a model being trained, whole and under its checkpoint's names, for an engine that holds its own
copy (`VLLMSampler`): unwrapped from DDP, gathered one parameter at a time under ZeRO-3 / FSDP2 or summoned whole
under FSDP1, LoRA layers given with their adapters' delta added, and a tied output layer under its own name too.
A checkpoint folder's tensors come the same way (`folder_weights`). Detection of the sharding is `distributed.py`'s.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from typing import Any

from .distributed import fsdp1_wrapped, unwrap, zero3_partitioned


@contextlib.contextmanager
def full_weights(model: Any) -> Iterator[Iterator[tuple[str, Any]]]:
    """The model's weights under the names of its saved checkpoint, each whole (ZeRO-3 partitions and FSDP2 shards
    gathered one parameter at a time; FSDP1 summoned whole). Under PEFT a LoRA layer's weight is given with its
    adapters' delta added, computed apart: the trained model is never written to (merging and unmerging in place
    would leave rounding errors in it). Gathering is a collective: every rank must iterate."""
    model = unwrap(model)
    summon = contextlib.nullcontext()
    if fsdp1_wrapped(model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        summon = FullyShardedDataParallel.summon_full_params(model, recurse=True, writeback=False)
    with summon:
        yield _named_weights(model)


def _named_weights(model: Any) -> Iterator[tuple[str, Any]]:
    peft = hasattr(model, "get_base_model")
    prefix = getattr(model, "prefix", "lora_")
    base = model.get_base_model() if peft else model
    adapted = {
        name: m for name, m in base.named_modules() if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")
    }
    # remove_duplicate=False: a tied output layer is pushed under its own name too (vLLM's loader expects it).
    for name, param in base.named_parameters(remove_duplicate=False):
        if prefix in name or "original_module" in name:
            continue  # adapter weights go in as deltas; modules_to_save pushes its trained copy
        owner, _, leaf = name.rpartition(".")
        layer = adapted.get(owner.removesuffix(".base_layer")) if leaf == "weight" else None
        name = name.replace(".base_layer", "").replace("modules_to_save.default.", "")
        name = name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")
        with _gathered(list(layer.parameters()) if layer is not None else [param]):
            tensor = param.full_tensor() if hasattr(param, "full_tensor") else param
            if layer is not None and not layer.merged:
                for adapter in layer.active_adapters:
                    if adapter in getattr(layer, "lora_A", {}):
                        if getattr(layer, "use_dora", {}).get(adapter):
                            raise ValueError("DoRA adapters cannot be pushed to vLLM: use sampler='hf'.")
                        tensor = tensor + layer.get_delta_weight(adapter)
            yield name, tensor.detach()


def folder_weights(folder: str) -> Iterator[tuple[str, Any]]:
    """A checkpoint folder's safetensors, one tensor at a time, each tied weight also under the names it is tied to
    (found on the model built from the folder's config on the meta device)."""
    import glob

    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise ValueError(f"{folder}: no *.safetensors file to load the weights from")
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, local_files_only=True))
    tied: dict[int, list[str]] = {}
    for name, param in meta.named_parameters(remove_duplicate=False):
        tied.setdefault(id(param), []).append(name)
    aliases = {name: names for names in tied.values() for name in names if len(names) > 1}
    saved = set()
    for file in files:
        with safe_open(file, "pt") as f:
            saved.update(f.keys())
    for file in files:
        with safe_open(file, "pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                yield name, tensor
                for alias in aliases.get(name, ()):
                    if alias not in saved:
                        yield alias, tensor


@contextlib.contextmanager
def _gathered(params: list) -> Iterator[None]:
    """DeepSpeed ZeRO-3's partitioned parameters whole for the duration (a no-op for anything else)."""
    if zero3_partitioned(params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            yield
    else:
        yield


def config_for_export(model: Any) -> Any:
    """The model's config as a checkpoint would save it: `architectures` tells vLLM which class to build (a model
    made from a config in code has none until it is saved)."""
    model = unwrap(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = copy.deepcopy(base.config)
    config.architectures = [type(base).__name__]
    return config


def weights_version(model: Any) -> int:
    """A number that changes whenever a parameter of `model` is changed in place (torch counts in-place writes to
    every tensor): an optimizer step, `load_state_dict`, a manual `add_`."""
    return sum(p._version for p in model.parameters())
