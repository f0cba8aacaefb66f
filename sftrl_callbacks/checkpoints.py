"""Saved checkpoints: loading them (offline, with one-line errors), keeping the chosen RL-start checkpoint out
of reach of `save_total_limit` rotation, and knowing whether they hold loadable weights at all."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from .checks import first_line
from .contracts import sampler_hook
from .io import atomic_folder


def link_copy(source: str, target: str) -> None:
    """Copy a checkpoint folder with hard links (no extra disk) where the filesystem allows, else a real copy;
    built through `atomic_folder`, so a crash never leaves a half-copied folder at `target`."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    with atomic_folder(target) as partial:
        shutil.copytree(source, partial, copy_function=link_or_copy)


def protect(checkpoint: str, snapshot_dir: str) -> str:
    """Make `<snapshot_dir>/<name of checkpoint>` hold a copy of `checkpoint` and nothing else; return its path.

    The copy of the previous choice is deleted only once the new one is in place. If `checkpoint`
    is already gone (rotated away) its existing copy is kept as it is.
    """
    name = os.path.basename(os.path.normpath(checkpoint))
    target = os.path.join(snapshot_dir, name)
    if not os.path.isdir(target):
        if not os.path.isdir(checkpoint):
            raise FileNotFoundError(f"{checkpoint} no longer exists and has no protected copy in {snapshot_dir}")
        os.makedirs(snapshot_dir, exist_ok=True)
        link_copy(checkpoint, target)
    for old in os.listdir(snapshot_dir):
        if old != name:
            shutil.rmtree(os.path.join(snapshot_dir, old), ignore_errors=True)
    return os.path.abspath(target)


def saves_only_deepspeed_shards(args: Any) -> bool:
    """True when the trainer's checkpoints will hold no model weights: under DeepSpeed ZeRO-3, HF `Trainer`
    writes `model.safetensors` only with `stage3_gather_16bit_weights_on_model_save`; otherwise a checkpoint
    holds DeepSpeed's shards, which `zero_to_fp32.py` (saved beside them) turns into weights."""
    config = getattr(args, "hf_deepspeed_config", None)
    if config is None or not config.is_zero3():
        return False
    return not config.get_value("zero_optimization.stage3_gather_16bit_weights_on_model_save", False)


def check_checkpoint(path: str) -> bool:
    """Refuse what is not a saved model, saying why; True for a PEFT adapter folder."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such folder")
    if not os.path.isdir(path):
        raise ValueError(f"{path} is a file: give a checkpoint folder (checkpoint-<step> or save_pretrained output)")
    files = set(os.listdir(path))
    if not files:
        raise ValueError(f"{path} is empty: give a checkpoint folder")
    if "config.json" in files:
        weights = any(f.endswith(".safetensors") or f.startswith("pytorch_model") for f in files)
        if not weights and "zero_to_fp32.py" in files:
            raise ValueError(
                f"{path} holds DeepSpeed ZeRO-3 shards, not model weights (saved without "
                "stage3_gather_16bit_weights_on_model_save): convert them with the zero_to_fp32.py in it, or set "
                "that option to true in the DeepSpeed config"
            )
        return False
    if "adapter_config.json" in files:
        return True
    raise ValueError(
        f"{path} has no config.json: not a saved model (a trainer's checkpoint-<step> folder or save_pretrained output)"
    )


def load_checkpoint(path: str, dtype: str = "float32", device: str | None = None, tokenizer: Any = None):
    """(model, tokenizer) of a saved checkpoint or PEFT adapter folder, offline, with one-line errors.

    `dtype` is a torch dtype name or "auto" (as saved); `device` defaults to CUDA when there is one. Given a
    `tokenizer`, it is returned as it is instead of the checkpoint's (a tokenizer built in code may not load
    back as the same one: `AutoTokenizer` can pick the model type's own class)."""
    import torch
    from transformers import AutoModelForCausalLM

    loader, what = AutoModelForCausalLM, "model"
    adapter = check_checkpoint(path)
    if tokenizer is None:
        tokenizer = load_tokenizer(path)
    if adapter:
        with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
            base = json.load(f).get("base_model_name_or_path")
        try:
            from peft import AutoPeftModelForCausalLM
        except ImportError as err:
            raise ValueError(
                f"{path} is a PEFT (LoRA) adapter on {base!r}: install peft to evaluate it on its base model, "
                "or merge it first (model.merge_and_unload().save_pretrained(...))"
            ) from err
        loader, what = AutoPeftModelForCausalLM, f"adapter or its base model {base!r}"
    try:
        model = loader.from_pretrained(
            path, dtype=dtype if dtype == "auto" else getattr(torch, dtype), local_files_only=True
        )
    except Exception as err:
        raise ValueError(f"{path}: the {what} could not be loaded: {first_line(err)}") from err
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), tokenizer


def load_tokenizer(path: str) -> Any:
    """The tokenizer saved in a checkpoint folder, offline, with a one-line error."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:
        raise ValueError(
            f"{path}: no tokenizer could be loaded ({first_line(err)}); save the tokenizer with the model "
            "(the trainer does when it has processing_class=)"
        ) from err


def sampling_source(sampler: Any, path: str, dtype: str, device: str | None = None, tokenizer: Any = None):
    """(what `sampler` samples, tokenizer) for a saved checkpoint: the folder itself for a sampler that reads
    checkpoint folders (vLLM loads them without a second copy in memory), else the loaded model. A PEFT adapter
    folder is always loaded on its base model (vLLM would read only the base)."""
    if sampler_hook(sampler, "reads_checkpoint_folders") and not check_checkpoint(path):
        return path, load_tokenizer(path) if tokenizer is None else tokenizer
    return load_checkpoint(path, dtype, device, tokenizer=tokenizer)
