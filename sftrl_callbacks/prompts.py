"""What every sampler shares, without torch: prompts to token ids (chat or text), per-prompt seeds, the tokens that
end a completion, stop strings and the padding id. `HFSampler`, `VLLMSampler` and a sampler of your own
(`register_sampler`) use these, so each samples the same prompts from the same seeds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from .contracts import SamplingParams


def prompt_seeds(seed: int, keys: Sequence[int | Sequence[int]]) -> tuple[int, ...]:
    """One 63-bit seed per key, derived from (`seed`, key) by numpy's SeedSequence (independent streams)."""
    return tuple(
        int(np.random.SeedSequence([seed, *([k] if isinstance(k, int) else k)]).generate_state(1, np.uint64)[0] >> 1)
        for k in keys
    )


def counts_and_seeds(
    prompts: Sequence[str | list], n: int | Sequence[int], params: SamplingParams
) -> tuple[list[int], tuple[int, ...]]:
    """A `Sampler.sample` call's samples per prompt and each prompt's seed, checked against the prompts."""
    counts = [n] * len(prompts) if isinstance(n, int) else list(n)
    if len(counts) != len(prompts):
        raise ValueError("n must be an int or have one count per prompt.")
    if any(c < 0 for c in counts):
        raise ValueError("Sample counts must be >= 0.")
    seeds = params.prompt_seeds or prompt_seeds(params.seed, range(len(prompts)))
    if len(seeds) != len(prompts):
        raise ValueError(f"SamplingParams.prompt_seeds has {len(seeds)} seeds for {len(prompts)} prompts.")
    return counts, tuple(seeds)


def render_prompts(tokenizer: Any, prompts: Sequence[str | list]) -> list[str]:
    """Plain prompts as they are; conversations through the chat template with a generation prompt."""
    return [
        p if isinstance(p, str) else tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def encode_prompts(tokenizer: Any, prompts: Sequence[str | list]) -> list[list[int]]:
    """The token ids a model is sampled on: a conversation exactly as
    `apply_chat_template(messages, add_generation_prompt=True)` gives them (the template writes its own special
    tokens: encoding its text again would add a second BOS with Llama-3-style tokenizers), plain text as the
    tokenizer encodes it."""
    if any(not isinstance(p, str) for p in prompts) and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"Chat-message prompts need a chat template, but the {type(tokenizer).__name__} has none: set "
            "tokenizer.chat_template or give plain-text prompts."
        )
    return [
        list(tokenizer(p)["input_ids"])
        if isinstance(p, str)
        else list(
            tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
        )
        for p in prompts
    ]


def prompts_that_change(tokenizer: Any, prompts: Sequence[str | list]) -> list[tuple[str, str]]:
    """(rendered prompt, what decoding its token ids gives) for every prompt that does not survive the round
    trip: the model would be sampled on other text than the prompt says (a tokenizer that dropped spaces, or
    lost characters to its unknown token)."""
    changed = []
    for text, ids in zip(render_prompts(tokenizer, prompts), encode_prompts(tokenizer, prompts)):
        back = tokenizer.decode(ids, skip_special_tokens=False)
        if back != text and back != (tokenizer.bos_token or "") + text:  # a tokenizer may add BOS to plain text
            changed.append((text, back))
    return changed


def pad_token_id(tokenizer: Any) -> int:
    """The id that fills padding. Padded positions are masked, so a tokenizer without a pad token (many base
    models) pads with EOS, as TRL does, without touching the user's tokenizer."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` up to and with the first stop string in it (each stop string in turn)."""
    for stop in stop_strings:
        cut = text.find(stop)
        if cut >= 0:
            text = text[: cut + len(stop)]
    return text


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end a completion: the model's generation config's EOS ids and the tokenizer's EOS. `model`
    may be a checkpoint folder, a `str` or any `os.PathLike` (its generation_config.json)."""
    if isinstance(model, (str, os.PathLike)):
        from transformers import GenerationConfig

        try:
            config = GenerationConfig.from_pretrained(os.fspath(model), local_files_only=True)
            model = SimpleNamespace(generation_config=config)
        except OSError:  # no generation_config.json
            model = SimpleNamespace()
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return set(ids)
