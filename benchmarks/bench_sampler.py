"""Sampling throughput, side by side. Prints measured numbers; run it, do not import it.

    python benchmarks/bench_sampler.py                          # CPU: the toy model after 250 SFT steps
    python benchmarks/bench_sampler.py --model 403m --device cuda --max-new-tokens 256   # GPU.md's setting
    python benchmarks/bench_sampler.py --model smollm2 --prompts 8 --max-new-tokens 64 --repeats 1 --skip naive
        # SmolLM2-135M-Instruct (a real chat model) on chat prompts of word problems
    python benchmarks/bench_sampler.py --model smollm2 ... --sampler hf vllm    # with VLLMSampler rows (vLLM
        # installed: .ci/vllm makes such an environment)

Methods, on the same model, prompts, n, temperature and max new tokens, tokens counted up to EOS:
- naive: per-prompt `generate(num_return_sequences=n)` (what TRL's completion logging does);
- batched: one `generate` over all prompts x n rows (left-padded);
- static: `generate(cache_implementation="static")`, compiled with `--compile` (CUDA only);
- HFSampler: this library;
- VLLMSampler (`--sampler vllm`): vLLM's engine, the weights pushed from the model in memory; its start-up and
  the push are timed apart, not in its tokens/s.
Each method runs once to warm up at the timed shape, then the methods take turns `--repeats` times (so a
slow spell of a shared machine hits them alike); the best run of each is shown.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from sftrl_callbacks.contracts import SamplingParams
from sftrl_callbacks.demo import machine_summary
from sftrl_callbacks.hf_sampler import HFSampler
from sftrl_callbacks.toy import build_model, build_tokenizer, make_splits


def toy_model(tokenizer, splits, steps: int):
    from trl import SFTTrainer

    from sftrl_callbacks.demo import toy_sft_config

    model = build_model(tokenizer, seed=0)
    if steps:
        with tempfile.TemporaryDirectory() as out:
            args = toy_sft_config(out, steps, [], save_strategy="no")
            SFTTrainer(model=model, args=args, train_dataset=splits.train, processing_class=tokenizer).train()
    return model.eval()


def random_model(tokenizer, hidden: int, layers: int):
    """A Llama of the given size with random weights (as ../shared/GPU.md measured: EOS about 1 in 90 tokens)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def useful_tokens(new: torch.Tensor, tokenizer) -> int:
    """Generated tokens up to (not including) the first EOS of each row."""
    eos = (new == tokenizer.eos_token_id).int()
    before_eos = (eos.cumsum(-1) == 0) & (new != tokenizer.pad_token_id)
    return int(before_eos.sum())


@torch.inference_mode()
def naive(model, tokenizer, prompts, n, max_new):
    tokens = 0
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt").to(model.device)
        out = model.generate(
            **enc, do_sample=True, top_k=0, max_new_tokens=max_new, num_return_sequences=n, pad_token_id=0
        )
        tokens += useful_tokens(out[:, enc["input_ids"].shape[1] :], tokenizer)
    return tokens


@torch.inference_mode()
def batched(model, tokenizer, prompts, n, max_new, **generate_kwargs):
    tokenizer.padding_side = "left"
    enc = tokenizer([p for p in prompts for _ in range(n)], return_tensors="pt", padding=True).to(model.device)
    out = model.generate(**enc, do_sample=True, top_k=0, max_new_tokens=max_new, pad_token_id=0, **generate_kwargs)
    return useful_tokens(out[:, enc["input_ids"].shape[1] :], tokenizer)


def ours(model, tokenizer, prompts, n, max_new, sampler=None):
    params = SamplingParams(max_new_tokens=max_new, temperature=1.0, seed=0)
    out = (sampler or HFSampler(show_progress=False)).sample(model, tokenizer, prompts, n, params)
    return sum(c.n_tokens for cs in out for c in cs)


def timed(fn, sync) -> tuple[float, int]:
    """(tokens/s, tokens) of one call."""
    sync()
    start = time.perf_counter()
    tokens = fn()
    sync()
    return tokens / (time.perf_counter() - start), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", choices=["toy", "33m", "403m", "smollm2"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--train-steps", type=int, default=250, help="SFT steps of the toy model")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="compile the static-cache generate (CUDA)")
    parser.add_argument("--skip", nargs="*", default=[], help="methods to leave out (naive is slow on big models)")
    parser.add_argument("--sampler", nargs="+", default=["hf"], choices=["hf", "vllm"], help="vllm: add its rows")
    ns = parser.parse_args()
    if ns.device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    dtype = getattr(torch, ns.dtype or ("bfloat16" if ns.device == "cuda" else "float32"))

    if ns.model == "smollm2":  # a real chat model: chat prompts, rendered by its template for `generate`
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from sftrl_callbacks.pretrained import smollm2_checkpoint
        from sftrl_callbacks.prompts import render_prompts
        from sftrl_callbacks.toy.word_problems import make_word_problem_splits

        path = smollm2_checkpoint()
        tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
        splits = make_word_problem_splits(n_train=0, n_heldout_sft=0, n_heldout_problems=ns.prompts, seed=0)
        chats = list(splits.heldout_problems["prompt"])
        prompts, texts = chats, render_prompts(tokenizer, chats)
    else:
        tokenizer = build_tokenizer()
        splits = make_splits(n_train=20_000, n_heldout_sft=16, n_heldout_problems=ns.prompts, seed=0)
        if ns.model == "toy":
            model = toy_model(tokenizer, splits, ns.train_steps)
        else:
            model = random_model(tokenizer, *{"33m": (512, 8), "403m": (1024, 24)}[ns.model])
        prompts = texts = list(splits.heldout_problems["prompt"])
    model = model.to(device=ns.device, dtype=dtype)
    sync = torch.cuda.synchronize if ns.device == "cuda" else (lambda: None)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"{machine_summary()}; {ns.model} model ({params:.1f}M params, {dtype}) on {ns.device}; "
        f"{len(prompts)} prompts x {ns.n} samples, T=1.0, <= {ns.max_new_tokens} new tokens; "
        f"torch threads {torch.get_num_threads()}"
    )
    methods = {
        "naive per-prompt generate": lambda: naive(model, tokenizer, texts, ns.n, ns.max_new_tokens),
        "one batched generate": lambda: batched(model, tokenizer, texts, ns.n, ns.max_new_tokens),
        "static-cache generate" + (" (compiled)" if ns.compile else ""): lambda: batched(
            model, tokenizer, texts, ns.n, ns.max_new_tokens, cache_implementation="static"
        ),
        "HFSampler (this library)": lambda: ours(model, tokenizer, prompts, ns.n, ns.max_new_tokens),
        "HFSampler static=True": lambda: ours(
            model, tokenizer, prompts, ns.n, ns.max_new_tokens, HFSampler(show_progress=False, static=True)
        ),
    }
    if "vllm" in ns.sampler:
        from sftrl_callbacks.prompts import encode_prompts
        from sftrl_callbacks.vllm_sampler import VLLMSampler

        longest = max(len(ids) for ids in encode_prompts(tokenizer, prompts))
        engine = VLLMSampler(max_model_len=longest + ns.max_new_tokens, enforce_eager=ns.device == "cpu")
        start = time.perf_counter()
        engine.prepare(model)
        started = time.perf_counter() - start
        start = time.perf_counter()
        engine.prepare(model)
        print(f"  {engine.description}: engine start {started:.1f} s, weight push {time.perf_counter() - start:.2f} s")
        methods[engine.description] = lambda: ours(model, tokenizer, prompts, ns.n, ns.max_new_tokens, engine)
    if ns.compile:
        compiled = HFSampler(show_progress=False, compile=True)  # one sampler: compiled once, then reused
        methods["HFSampler compile=True"] = lambda: ours(model, tokenizer, prompts, ns.n, ns.max_new_tokens, compiled)
    if not ns.compile:
        model.generation_config.disable_compile = True
    runnable = {}
    for name, fn in methods.items():
        if any(name.startswith(skip) for skip in ns.skip):
            continue
        try:
            fn()  # warm-up at the timed shape
        except Exception as err:  # e.g. a static cache this transformers build cannot do on this device
            print(f"  {name:<38} failed: {type(err).__name__}: {str(err).splitlines()[0][:100]}")
            continue
        runnable[name] = fn
    best: dict[str, tuple[float, int]] = {}
    for _ in range(ns.repeats):
        for name, fn in runnable.items():
            best[name] = max(best.get(name, (0.0, 0)), timed(fn, sync))
    rates = {name: rate for name, (rate, _) in best.items()}
    for name, (rate, tokens) in best.items():
        print(f"  {name:<38} {rate:>10,.0f} tok/s   ({tokens} tokens)")
    ours_ = ("HFSampler", "VLLMSampler")
    for mine in [name for name in rates if name.startswith(ours_)]:
        for name, rate in rates.items():
            if not name.startswith(ours_):
                print(f"  {mine} / {name}: {rates[mine] / rate:.2f}x")


if __name__ == "__main__":
    main()
