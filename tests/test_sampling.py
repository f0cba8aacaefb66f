from dataclasses import replace

import pytest
import torch

from sftrl_callbacks import HFSampler, SamplingParams

from .conftest import tiny_config_fields


@pytest.mark.parametrize("static", [False, True])
def test_greedy_matches_generate_across_prompt_lengths(trained, tokenizer, splits, static):
    prompts = list(splits.heldout_problems["prompt"][:8])
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    params = SamplingParams(max_new_tokens=40, temperature=0)
    ours = HFSampler(max_batch_rows=5, static=static).sample(trained, tokenizer, prompts, 2, params)
    for prompt, completions in zip(prompts, ours):
        enc = tokenizer(prompt, return_tensors="pt")
        out = trained.generate(**enc, max_new_tokens=40, do_sample=False)
        reference = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        assert [c.text for c in completions] == [reference, reference]
        assert not completions[0].truncated


def test_sampling_is_seeded_counts_per_prompt_and_restores_state(trained, tokenizer, splits):
    prompts = list(splits.heldout_problems["prompt"][:3])
    trained.train()
    trained.config.use_cache = False
    params = SamplingParams(max_new_tokens=30, temperature=1.0, seed=5)
    a = HFSampler().sample(trained, tokenizer, prompts, [4, 0, 2], params)
    b = HFSampler().sample(trained, tokenizer, prompts, [4, 0, 2], params)
    assert [len(x) for x in a] == [4, 0, 2]
    assert a == b
    assert trained.training and trained.config.use_cache is False and torch.is_grad_enabled()
    trained.eval()
    trained.config.use_cache = True


@pytest.mark.parametrize("static", [False, True])
def test_stop_strings_and_truncation(trained, tokenizer, splits, static):
    prompt = [splits.heldout_problems["prompt"][0]]
    sampler = HFSampler(static=static)
    stopped = sampler.sample(trained, tokenizer, prompt, 1, SamplingParams(temperature=0, stop_strings=("=",)))
    text = stopped[0][0].text
    assert text.endswith("=") and text.count("=") == 1 and not stopped[0][0].truncated
    assert stopped[0][0].n_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"])  # fewest tokens
    short = sampler.sample(trained, tokenizer, prompt, 1, SamplingParams(temperature=0, max_new_tokens=3))
    assert short[0][0].truncated and short[0][0].n_tokens == 3


def test_chat_prompts_use_the_template(trained, tokenizer):
    messages = [[{"role": "user", "content": "3+4=?"}]]
    plain = HFSampler().sample(trained, tokenizer, ["Q: 3+4=? A:"], 1, SamplingParams(temperature=0, max_new_tokens=20))
    chat = HFSampler().sample(trained, tokenizer, messages, 1, SamplingParams(temperature=0, max_new_tokens=20))
    assert plain == chat


def _family_models(tokenizer):
    """Tiny random Qwen2-, Qwen3- and Mistral-style models (grouped-query attention; Mistral with a
    sliding window shorter than the sequences) and the toy Llama wrapped in a LoRA adapter."""
    from transformers import (
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    from sftrl_callbacks.toy import build_model

    common = tiny_config_fields(tokenizer, num_key_value_heads=2)
    builders = {
        "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**common)),
        "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common)),
        "mistral-window-8": lambda: MistralForCausalLM(MistralConfig(sliding_window=8, **common)),
    }
    for name, build in builders.items():
        torch.manual_seed(0)
        yield name, build().eval()
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # a non-zero adapter
    yield "peft-lora-llama", peft.get_peft_model(build_model(tokenizer, seed=0), config).eval()


@pytest.mark.parametrize("static", [False, True])
def test_greedy_matches_generate_for_other_families_and_peft(tokenizer, splits, static):
    prompts = list(splits.heldout_problems["prompt"][:6])
    params = SamplingParams(max_new_tokens=12, temperature=0)
    for name, model in _family_models(tokenizer):
        sampler = HFSampler(max_batch_rows=6, static=static)
        if static and name.startswith("mistral-window"):
            with pytest.raises(ValueError, match="sliding-window"):
                sampler.sample(model, tokenizer, prompts, 2, params)
            continue
        ours = sampler.sample(model, tokenizer, prompts, 2, params)
        for prompt, completions in zip(prompts, ours):
            enc = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=12, do_sample=False)
            reference = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            assert [c.text for c in completions] == [reference, reference], name


def _within_sampling_error(counts: torch.Tensor, expected: torch.Tensor) -> None:
    """Frequencies within 5 binomial standard deviations of `expected`, and none where it is 0."""
    n = counts.sum()
    freq = counts.double() / n
    sigma = (expected * (1 - expected) / n).sqrt()
    assert torch.all((freq - expected).abs() <= 5 * sigma + 1e-12), (freq, expected)
    assert torch.all(counts[expected == 0] == 0)


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8), (1.5, 4, 0.9)],
)
def test_picked_tokens_follow_the_tempered_truncated_distribution(temperature, top_k, top_p):
    from sftrl_callbacks.hf_sampler import _pick_tokens

    logits = torch.tensor([2.0, 1.0, 0.3, -0.2, -1.0, float("-inf"), 0.6], dtype=torch.float64)
    # The expected distribution, built independently: temper, keep the top k, then the smallest set of the
    # most likely tokens whose mass reaches top_p, renormalise.
    probs = torch.softmax(logits / temperature, -1)
    order = probs.argsort(descending=True)
    keep = torch.zeros_like(probs, dtype=torch.bool)
    mass = 0.0
    for rank, token in enumerate(order.tolist()):
        if (top_k and rank >= top_k) or mass >= top_p or probs[token] == 0:
            break
        keep[token] = True
        mass += float(probs[token])
    expected = torch.where(keep, probs, 0.0)
    expected = expected / expected.sum()

    draws = 40_000
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    uniforms = torch.rand(draws, generator=torch.Generator().manual_seed(0))
    tokens = _pick_tokens(logits.float().expand(draws, -1), params, uniforms)
    _within_sampling_error(torch.bincount(tokens, minlength=len(logits)), expected)


def test_first_sampled_token_follows_the_model(tokenizer, splits):
    """End to end through HFSampler: the first token's frequencies match the model's softmax at temperature."""
    from sftrl_callbacks.toy import build_model

    model = build_model(tokenizer, seed=1).eval()
    prompt = splits.heldout_problems["prompt"][0]
    with torch.no_grad():
        logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].double()
    expected_by_token = torch.softmax(logits / 0.5, -1)
    texts = [tokenizer.decode([t], skip_special_tokens=True) for t in range(len(expected_by_token))]
    names = sorted(set(texts))
    expected = torch.zeros(len(names), dtype=torch.float64)
    for text, p in zip(texts, expected_by_token):
        expected[names.index(text)] += p
    params = SamplingParams(max_new_tokens=1, temperature=0.5, seed=0)
    samples = HFSampler(show_progress=False).sample(model, tokenizer, [prompt], 8192, params)[0]
    counts = torch.zeros(len(names), dtype=torch.long)
    for completion in samples:
        counts[names.index(completion.text)] += 1
    assert expected.max() < 0.5  # a spread-out distribution, not a near-greedy one
    _within_sampling_error(counts, expected)


def test_static_decoding_keeps_every_buffer_at_one_address(trained, tokenizer, splits):
    """Rows leave the batch by moving the kept ones to the front of the same buffers, so the KV cache and
    the mask the decode forward reads start at one address for the whole call (what CUDA graphs need)."""
    from sftrl_callbacks.hf_sampler import _PreallocatedLayer

    seen = []

    def record(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache.layers and isinstance(cache.layers[0], _PreallocatedLayer):  # a decode step, not the prefill
            keys = cache.layers[0]._k
            seen.append((len(keys), keys.data_ptr(), kwargs["attention_mask"].data_ptr()))

    handle = trained.register_forward_pre_hook(record, with_kwargs=True)
    try:
        prompts = list(splits.heldout_problems["prompt"][:4])
        out = HFSampler(static=True).sample(trained, tokenizer, prompts, 16, SamplingParams(max_new_tokens=40))
    finally:
        handle.remove()
    assert [len(c) for c in out] == [16] * 4
    batch_sizes, cache_addresses, mask_addresses = (set(column) for column in zip(*seen))
    assert len(batch_sizes) > 1  # rows did leave the batch
    assert len(cache_addresses) == 1 and len(mask_addresses) == 1


@pytest.mark.slow
def test_compiled_static_decoding_matches_the_default_greedy_output(trained, tokenizer, splits):
    """compile=True (torch.compile of the decode step; inductor on CPU here, CUDA graphs on a GPU).

    10 new tokens: no answer ends sooner, so the batch never shrinks and inductor compiles one graph (each costs
    seconds of C++ compilation with a cold cache). Shrinking is the static path's, tested uncompiled."""
    prompts = list(splits.heldout_problems["prompt"][:6])
    params = SamplingParams(max_new_tokens=10, temperature=0)
    reference = HFSampler().sample(trained, tokenizer, prompts, 3, params)
    compiled = HFSampler(compile=True)
    assert compiled.sample(trained, tokenizer, prompts, 3, params) == reference
    assert all(c.truncated for completions in reference for c in completions)  # no row ended early
    assert compiled.sample(trained, tokenizer, prompts, 3, params) == reference  # compiled once, used again


@pytest.mark.parametrize("static", [False, True])
def test_sampled_completions_stop_at_the_first_stop_string(trained, tokenizer, splits, static):
    """Stop strings that span tokens, found on the device at every token: a completion that contains one
    ends right there (its tokens are the fewest that contain it), and one without a stop string never had one."""
    stops = ("=1", "+2", ";")
    prompts = list(splits.heldout_problems["prompt"][:4])
    params = SamplingParams(max_new_tokens=40, temperature=1.0, stop_strings=stops, seed=1)
    out = HFSampler(static=static).sample(trained, tokenizer, prompts, 32, params)
    stopped = 0
    for completion in (c for completions in out for c in completions):
        hits = [completion.text.find(s) + len(s) for s in stops if s in completion.text]
        if not hits:
            continue
        stopped += 1
        assert min(hits) == len(completion.text) and not completion.truncated
        assert completion.n_tokens == len(tokenizer(completion.text, add_special_tokens=False)["input_ids"])
    assert stopped >= 32  # the stop strings were hit often enough to mean something


def _byte_level_bpe(splits):
    """A GPT-2-style byte-level BPE tokenizer (as Llama 3, Qwen and Mistral use) trained here on toy text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([r["prompt"] + r["completion"] for r in splits.train], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>")


@pytest.mark.parametrize("static", [False, True])
def test_stop_strings_across_byte_level_bpe_tokens_match_generate(splits, static):
    """Greedy, so the tokens are `generate`'s: a completion stops at the first token whose text completes a
    stop string (here strings that start inside one multi-character token and end in another) and keeps
    exactly the text up to it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _byte_level_bpe(splits)
    assert "Ġ12" in tokenizer.convert_ids_to_tokens(tokenizer(" 12+3")["input_ids"])  # multi-character tokens
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**tiny_config_fields(tokenizer))).eval()
    prompts = list(splits.heldout_problems["prompt"][:4])
    generated = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt")
        generated.append(model.generate(**enc, max_new_tokens=30, do_sample=False)[0, enc["input_ids"].shape[1] :])
    # A stop string per prompt from its own greedy output: the last character of one token and the first of
    # the next, where both are printable and one is several characters long.
    stops = []
    for ids in generated:
        pieces = [tokenizer.decode([t]) for t in ids]
        for a, b in zip(pieces, pieces[1:]):
            if a.isprintable() and b.isprintable() and a.isascii() and b.isascii() and max(len(a), len(b)) > 1:
                stops.append(a[-1] + b[0])
                break
    assert len(stops) >= 2, stops
    params = SamplingParams(max_new_tokens=30, temperature=0, stop_strings=tuple(stops))
    ours = HFSampler(static=static).sample(model, tokenizer, prompts, 1, params)
    for ids, [completion] in zip(generated, ours):
        texts = [tokenizer.decode(ids[:k], skip_special_tokens=True) for k in range(1, 31)]
        k = next((k for k, text in enumerate(texts, 1) if any(s in text for s in stops)), None)
        if k is None:  # no stop string in 30 tokens
            assert (completion.text, completion.n_tokens, completion.truncated) == (texts[-1], 30, True)
            continue
        end = min(texts[k - 1].find(s) + len(s) for s in stops if s in texts[k - 1])
        assert (completion.text, completion.n_tokens, completion.truncated) == (texts[k - 1][:end], k, False)


def test_a_prompts_samples_depend_on_its_seed_not_on_the_rest_of_the_batch(trained, tokenizer, splits):
    """Per-prompt seeds: the same prompt and seed give the same samples alone, among other prompts, in another
    place of the call and with another batch size (what lets ranks split problems any way they like)."""
    prompts = list(splits.heldout_problems["prompt"][:4])
    seeds = (11, 22, 33, 44)
    params = SamplingParams(max_new_tokens=30, temperature=1.0, prompt_seeds=seeds)
    together = HFSampler().sample(trained, tokenizer, prompts, 6, params)
    alone = HFSampler().sample(trained, tokenizer, prompts[2:3], 6, replace(params, prompt_seeds=(33,)))
    reordered = HFSampler(max_batch_rows=6).sample(
        trained, tokenizer, prompts[::-1], 6, replace(params, prompt_seeds=seeds[::-1])
    )
    assert alone[0] == together[2]
    assert reordered[::-1] == together
    assert len({c.text for c in together[0]}) > 1  # the 6 samples of a prompt are not one stream repeated
    other = HFSampler().sample(trained, tokenizer, prompts[2:3], 6, replace(params, prompt_seeds=(34,)))
    assert other[0] != together[2]
    with pytest.raises(ValueError, match="prompt_seeds has 1 seeds for 4 prompts"):
        HFSampler().sample(trained, tokenizer, prompts, 1, SamplingParams(prompt_seeds=(1,)))


def test_per_sample_uniform_streams_are_uniform_and_independent():
    from sftrl_callbacks.streams import Uniforms

    draws = Uniforms([1, 2, 3], [300, 0, 300], torch.device("cpu"))
    rows = torch.arange(600)
    u = torch.stack([draws.at(t, rows) for t in range(300)], 1).double()  # crosses a block boundary
    assert u.min() >= 0 and u.max() < 1
    counts = torch.histc(u.flatten(), bins=10, min=0, max=1)
    _within_sampling_error(counts.long(), torch.full((10,), 0.1, dtype=torch.float64))
    # Neighbouring tokens of a stream, and neighbouring streams, are uncorrelated (|r| < 5 / sqrt(N)).
    for a, b in ((u[:, :-1], u[:, 1:]), (u[:-1], u[1:]), (u[:300], u[300:])):
        r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert abs(r) < 5 / a.numel() ** 0.5
    assert torch.equal(Uniforms([3], [300], torch.device("cpu")).at(7, torch.arange(300)), u[300:, 7].float())


def test_folder_weights_give_a_tied_output_layer_its_own_name(tokenizer, tmp_path):
    """What VLLMSampler reloads a checkpoint folder from (no vLLM needed): every saved tensor, and the tied output
    layer, which the folder holds only as the input embedding, under its own name too."""
    from safetensors.torch import load_file

    from sftrl_callbacks.toy import build_model
    from sftrl_callbacks.weights import folder_weights

    model = build_model(tokenizer, seed=0)
    assert model.config.tie_word_embeddings
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in saved
    given = dict(folder_weights(str(tmp_path)))
    assert set(given) == set(saved) | {"lm_head.weight"}
    assert torch.equal(given["lm_head.weight"], saved["model.embed_tokens.weight"])
    model.config.tie_word_embeddings = False  # untied: the output layer is saved and given once, as itself
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() + 1)
    model.save_pretrained(tmp_path / "untied")
    untied = dict(folder_weights(str(tmp_path / "untied")))
    assert torch.equal(untied["lm_head.weight"], model.lm_head.weight.detach())
    with pytest.raises(ValueError, match="no \\*.safetensors file"):
        list(folder_weights(str(tmp_path / "nowhere")))


def test_eos_ids_read_a_checkpoint_folder_given_as_a_path(tmp_path, tokenizer):
    """A `pathlib.Path` is a folder as a `str` is: its generation config's EOS ids end completions too."""
    from transformers import GenerationConfig

    from sftrl_callbacks.prompts import eos_ids

    GenerationConfig(eos_token_id=[5, 7]).save_pretrained(tmp_path)
    assert eos_ids(tmp_path, tokenizer) == eos_ids(str(tmp_path), tokenizer) == {5, 7, tokenizer.eos_token_id}
    assert eos_ids(tmp_path / "missing", tokenizer) == {tokenizer.eos_token_id}
