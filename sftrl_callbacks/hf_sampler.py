"""Sampling completions with plain PyTorch: `HFSampler` (the `Sampler` contract is in `contracts`).

`HFSampler` is a hand-written decode loop rather than `model.generate`, because large-k sampling
is dominated by waste that `generate` cannot avoid on a mixed batch:
- each prompt is prefilled once and its KV cache repeated for its n samples;
- finished sequences (EOS or a stop string) leave the batch at once instead of decoding padding;
- prompts of many problems share one batch, so small models keep the matrix units busy.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer
from transformers.generation.stopping_criteria import StopStringCriteria

from .contracts import Completion, SamplingParams
from .distributed import no_grad_for
from .prompts import counts_and_seeds, cut_at_stop, encode_prompts, eos_ids, pad_token_id
from .streams import Uniforms

__all__ = ["HFSampler"]


@contextlib.contextmanager
def inference_state(model: PreTrainedModel) -> Iterator[None]:
    """Eval mode with the KV cache on and no autograd; restores train mode and `use_cache` afterwards.

    Gradient checkpointing only acts in train mode, so eval mode is enough to sample with it on.
    """
    was_training = model.training
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    model.eval()
    if config is not None:
        config.use_cache = True
    try:
        with no_grad_for(model):
            yield
    finally:
        model.train(was_training)
        if config is not None:
            config.use_cache = use_cache


def _pick_tokens(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor | None) -> torch.Tensor:
    """One token a row; `uniforms` holds a draw in [0, 1) for each row (unused when greedy)."""
    if params.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    # Inverse CDF: one uniform draw per row (torch.multinomial draws one exponential per vocabulary entry).
    cdf = logits.softmax(-1).cumsum(-1)
    u = uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:]
    # right=True: the first token whose cumulative mass exceeds u, so a token of probability 0 is never picked.
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


class HFSampler:
    """Batched sampling with plain PyTorch on any Hugging Face causal LM that supports `DynamicCache`.

    `max_batch_rows` bounds the sequences decoded together (memory); prompts are grouped so that a
    group's samples fit in it.

    `static=True` decodes with fixed shapes: attention over the whole preallocated cache under a
    prepared mask, the write position a device tensor, the batch shrunk only to powers of two, every
    buffer at one address for the whole call. That is what CUDA graphs need; `compile=True` (implies
    `static`) wraps the decode step in `torch.compile(mode="reduce-overhead")` on CUDA (inductor's
    default mode elsewhere). Both are opt-in: on a CPU they are slower than the default (attention over the
    whole buffer), and their speed on a GPU is in docs/cost.md. Tested: greedy output identical to
    `generate` (static) and to the default (compiled), and the fixed addresses.
    """

    def __init__(
        self,
        max_batch_rows: int = 1024,
        show_progress: bool | None = None,
        static: bool = False,
        compile: bool = False,
    ) -> None:
        if max_batch_rows < 1:
            raise ValueError("max_batch_rows must be >= 1.")
        self.max_batch_rows = max_batch_rows
        self.show_progress = show_progress
        self.static = static or compile
        self._forward = None
        self._stops: tuple | None = None  # (tokenizer, stop strings, their StopStringCriteria) of the last call
        if compile:  # compiled once per sampler; the shapes it sees are the powers of two of the batch
            mode = "reduce-overhead" if torch.cuda.is_available() else "default"
            self._forward = torch.compile(_static_forward, mode=mode, dynamic=False)

    def sample(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str | list],
        n: int | Sequence[int],
        params: SamplingParams,
    ) -> list[list[Completion]]:
        counts, seeds = counts_and_seeds(prompts, n, params)
        encoded = encode_prompts(tokenizer, prompts)
        device = next(model.parameters()).device
        results: list[list[Completion]] = [[] for _ in prompts]
        bar = tqdm(total=sum(counts), desc="sampling", unit="seq", disable=self._progress_disabled(), leave=False)
        with inference_state(model):
            for group in self._groups(counts):
                draws = Uniforms([seeds[i] for i in group], [counts[i] for i in group], device)
                out = self._decode(
                    model, tokenizer, [encoded[i] for i in group], [counts[i] for i in group], params, draws, device
                )
                for i, completions in zip(group, out):
                    results[i].extend(completions)
                    bar.update(len(completions))
        bar.close()
        return results

    def _progress_disabled(self) -> bool | None:
        return None if self.show_progress is None else not self.show_progress

    def _groups(self, counts: Sequence[int]) -> Iterator[list[int]]:
        group, rows = [], 0
        for i, c in enumerate(counts):
            if c == 0:
                continue
            if group and rows + c > self.max_batch_rows:
                yield group
                group, rows = [], 0
            group.append(i)
            rows += c
        if group:
            yield group

    def _decode(self, model, tokenizer, prompts, counts, params, draws, device) -> list[list[Completion]]:
        ids, prompt_mask = _left_padded(tokenizer, prompts, device)  # prompts: token ids
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        cache_arg = _cache_argument(model)
        logits = model(
            input_ids=ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True, **{cache_arg: cache}
        ).logits[:, -1]
        # One prefill per prompt, then its cache is repeated for its samples.
        rows = torch.repeat_interleave(torch.arange(len(prompts), device=device), torch.tensor(counts, device=device))
        _preallocate(cache, rows, params.max_new_tokens, zeroed=self.static)
        total, width, max_new = len(rows), ids.shape[1], params.max_new_tokens
        # Everything per token stays on the device: the tokens go into one buffer, EOS and stop strings are
        # tensor tests, and the host looks (one sync) only every `sync_every` tokens, to drop finished rows.
        attention = prompt_mask.new_zeros((total, width + max_new))
        attention[:, :width] = prompt_mask[rows]
        logits = logits[rows]
        if self.static:
            step = _StaticStep(model, cache, cache_arg, attention, positions[rows, -1] + 1, width, self._forward)
        else:
            step = _GrowingStep(model, cache, cache_arg, attention, positions[rows, -1] + 1, width)
        out = torch.zeros((total, max_new), dtype=torch.long, device=device)
        length = torch.full((total,), max_new, dtype=torch.long, device=device)  # tokens before EOS / stop
        finished = torch.zeros(total, dtype=torch.bool, device=device)  # ended by EOS or a stop string
        live = torch.arange(total, device=device)  # output row of each row still in the batch
        live_done = torch.zeros(total, dtype=torch.bool, device=device)
        eos = torch.tensor(sorted(eos_ids(model, tokenizer)), dtype=torch.long, device=device)
        stops = self._stop_criteria(tokenizer, params.stop_strings)
        sync_every = 4
        for t in range(max_new):
            tokens = _pick_tokens(logits, params, draws.at(t, live) if params.temperature else None)
            out[live, t] = tokens
            at_eos = torch.isin(tokens, eos) & ~live_done
            new_length = torch.where(at_eos, t, length[live])  # EOS itself is not part of the completion
            ended = at_eos
            if stops is not None:
                window = out[live, max(0, t + 1 - stops.maximum_token_len) : t + 1]
                at_stop = stops(window, None) & ~live_done & ~at_eos
                new_length = torch.where(at_stop, t + 1, new_length)  # the stop string is kept
                ended = at_eos | at_stop
            length[live] = new_length  # index writes: no host sync
            finished[live] |= ended
            live_done |= ended
            if t == max_new - 1:
                break
            if (t + 1) % sync_every == 0:
                n_done = int(live_done.sum())
                if n_done == len(live):
                    break
                keep = step.rows_to_keep(live_done, n_done)
                if keep is not None:
                    step.select(keep)
                    tokens, live, live_done = tokens[keep], live[keep], live_done[keep]
            logits = step(tokens, t)

        results: list[list[Completion]] = [[] for _ in prompts]
        for generated, n, ended, prompt_index in zip(out.tolist(), length.tolist(), finished.tolist(), rows.tolist()):
            text = cut_at_stop(tokenizer.decode(generated[:n], skip_special_tokens=True), params.stop_strings)
            results[prompt_index].append(Completion(text=text, n_tokens=n, truncated=not ended))
        return results

    def _stop_criteria(self, tokenizer, stop_strings: tuple[str, ...]) -> StopStringCriteria | None:
        """transformers' StopStringCriteria: a tensor test of whether a stop string ends in the last token,
        whatever tokens it spans. Building it reads the whole vocabulary, so it is kept for the next call."""
        if not stop_strings:
            return None
        if self._stops is None or self._stops[0] is not tokenizer or self._stops[1] != stop_strings:
            self._stops = (tokenizer, stop_strings, StopStringCriteria(tokenizer, list(stop_strings)))
        return self._stops[2]


class _GrowingStep:
    """One decode forward per token over a cache that grows by one position (the default)."""

    def __init__(self, model, cache, cache_arg, attention, next_position, width) -> None:
        self.model, self.cache, self.cache_arg = model, cache, cache_arg
        self.attention, self.position, self.width = attention, next_position, width

    def rows_to_keep(self, done: torch.Tensor, n_done: int) -> torch.Tensor | None:
        # Dropping rows copies the whole cache, so it waits until a quarter of the batch is done.
        return (~done).nonzero().squeeze(-1) if n_done >= max(1, len(done) // 4) else None

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)
        self.attention, self.position = self.attention[keep], self.position[keep]

    def __call__(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        self.attention[:, self.width + t] = 1
        logits = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.attention[:, : self.width + t + 1],
            position_ids=self.position[:, None],
            use_cache=True,
            **{self.cache_arg: self.cache},
        ).logits[:, -1]
        self.position = self.position + 1
        return logits


class _StaticStep(_GrowingStep):
    """One decode forward per token with fixed shapes (see `HFSampler`): the batch only shrinks to a power
    of two, and every tensor the forward reads keeps its address for the whole call, because dropping rows
    moves the kept ones to the front of the same buffers. CUDA graphs replay against fixed addresses; a
    compiled step also marks the buffers static, so that a graph reads them in place rather than copying
    them in at every token."""

    def __init__(self, model, cache, cache_arg, attention, next_position, width, forward=None) -> None:
        super().__init__(model, cache, cache_arg, attention, next_position, width)
        config = getattr(model, "config", None)
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        if window is not None and window < attention.shape[1]:
            # The prepared mask would let every token see the whole buffer, past the model's window.
            raise ValueError(
                f"HFSampler(static=True) does not apply sliding-window attention (window {window} < prompt + "
                f"max_new_tokens = {attention.shape[1]}): use the default HFSampler() for this model."
            )
        dtype = next(model.parameters()).dtype
        self.write_at = torch.tensor([width], device=attention.device)  # cache position of the next token
        for layer in cache.layers:
            if not isinstance(layer, _PreallocatedLayer):
                raise ValueError(f"HFSampler(static=True) needs plain attention caches, got {type(layer).__name__}.")
            layer.write_at = self.write_at
        # An additive mask over the whole buffer: 0 where a key may be seen, the dtype's minimum elsewhere.
        self.mask = torch.full((len(attention), 1, 1, attention.shape[1]), torch.finfo(dtype).min, dtype=dtype)
        self.mask = self.mask.to(attention.device)
        self.mask[:, 0, 0, :width] = torch.where(attention[:, :width] > 0, 0.0, torch.finfo(dtype).min)
        self.position = self.position[:, None].clone()
        self.forward = forward or _static_forward
        self.mark_static = forward is not None
        self._mark_static()

    def rows_to_keep(self, done: torch.Tensor, n_done: int) -> torch.Tensor | None:
        remaining = len(done) - n_done
        bucket = 1 << max(remaining - 1, 0).bit_length()  # the next power of two
        if bucket > len(done) // 2:
            return None
        running, finished = (~done).nonzero().squeeze(-1), done.nonzero().squeeze(-1)
        return torch.cat([running, finished[: bucket - remaining]])  # finished rows fill the bucket

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)  # in place: see _PreallocatedLayer.batch_select_indices
        self.mask, self.position = _compact(self.mask, keep), _compact(self.position, keep)
        self._mark_static()

    def _mark_static(self) -> None:
        if not self.mark_static:
            return
        # guard=False: the next call's buffers, at new addresses, do not recompile (a CUDA graph is then
        # recorded again for them).
        for layer in self.cache.layers:
            torch._dynamo.mark_static_address(layer._k, guard=False)
            torch._dynamo.mark_static_address(layer._v, guard=False)
        torch._dynamo.mark_static_address(self.mask, guard=False)
        torch._dynamo.mark_static_address(self.position, guard=False)

    def __call__(self, tokens: torch.Tensor, t: int) -> torch.Tensor:
        self.mask[:, 0, 0, self.width + t] = 0.0  # the new token sees itself
        logits = self.forward(self.model, self.cache_arg, self.cache, tokens, self.mask, self.position)
        self.position += 1
        self.write_at += 1
        return logits


def _static_forward(model, cache_arg: str, cache, tokens, mask, position) -> torch.Tensor:
    """The fixed-shape decode step (`torch.compile` target: no Python state of its own)."""
    return model(
        input_ids=tokens[:, None], attention_mask=mask, position_ids=position, use_cache=True, **{cache_arg: cache}
    ).logits[:, -1]


class _PreallocatedLayer(DynamicLayer):
    """A DynamicLayer that writes into a buffer sized for the whole generation.

    DynamicLayer grows by `torch.cat`, copying the whole cache at every token (a quarter of the
    sampling time of a small model); here each token is one slice write.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, extra: int, zeroed: bool = False) -> None:
        super().__init__()
        b, h, t, d = keys.shape
        # `zeroed` for static decoding, which attends over the unwritten slots too (masked): masked NaN garbage
        # from uninitialised memory would still turn the softmax into NaN. The default reads written slots only.
        allocate = torch.zeros if zeroed else torch.empty
        self._k = allocate((b, h, t + extra, d), dtype=keys.dtype, device=keys.device)
        self._v = allocate((b, h, t + extra, values.shape[-1]), dtype=values.dtype, device=values.device)
        self._k[:, :, :t], self._v[:, :, :t] = keys, values
        self._len = t
        self.device, self.is_initialized = keys.device, True
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, : self._len], self._v[:, :, : self._len]

    write_at: torch.Tensor | None = None  # set for static decoding: write there and return the whole buffer

    def update(self, key_states, value_states, *args, **kwargs):
        if self.write_at is not None:
            self._k.index_copy_(2, self.write_at, key_states)
            self._v.index_copy_(2, self.write_at, value_states)
            return self._k, self._v
        t = key_states.shape[-2]
        self._k[:, :, self._len : self._len + t] = key_states
        self._v[:, :, self._len : self._len + t] = value_states
        self._len += t
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._len

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.write_at is not None:  # static decoding: the buffers keep their addresses (see _StaticStep)
            self._k, self._v = _compact(self._k, indices), _compact(self._v, indices)
        else:
            self._k, self._v = self._k[indices], self._v[indices]
        self._views()


def _compact(buffer: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`buffer[rows]`, written over the front of `buffer` itself: the result starts at the same address."""
    buffer[: len(rows)] = buffer[rows]  # the gather is copied out first, so overlapping rows are safe
    return buffer[: len(rows)]


def _preallocate(cache: DynamicCache, rows: torch.Tensor, extra: int, zeroed: bool) -> None:
    """Repeat each prompt's prefill for its samples, into preallocated layers where possible."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            cache.layers[i] = _PreallocatedLayer(layer.keys[rows], layer.values[rows], extra, zeroed)
        else:
            layer.batch_select_indices(rows)


def _left_padded(tokenizer: PreTrainedTokenizerBase, encoded: Sequence[list[int]], device) -> tuple[torch.Tensor, ...]:
    """Token ids left-padded by hand: no pad token and no `padding_side` state needed."""
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad_token_id(tokenizer), dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        ids[row, width - len(e) :] = torch.tensor(e, dtype=torch.long)
        attention[row, width - len(e) :] = 1
    return ids.to(device), attention.to(device)


def _cache_argument(model: PreTrainedModel) -> str:
    """transformers >= 5.2x names the KV cache `cache`; earlier versions `past_key_values`."""
    # PEFT's, FSDP's and DDP's wrappers hide the signature behind *args, **kwargs.
    while hasattr(model, "get_base_model") or hasattr(model, "module"):
        model = model.get_base_model() if hasattr(model, "get_base_model") else model.module
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
