"""Keeping the chosen RL-start checkpoint out of reach of `save_total_limit` rotation, and knowing
whether checkpoints hold loadable weights at all."""

from __future__ import annotations

import os
import shutil
from typing import Any


def link_copy(source: str, target: str) -> None:
    """Copy a checkpoint folder with hard links (no extra disk) where the filesystem allows, else a real copy.

    The copy is built under a temporary name and renamed into place, so a crash never leaves a
    half-copied folder under `target`.
    """

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    partial = target + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, copy_function=link_or_copy)
    os.replace(partial, target)


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
