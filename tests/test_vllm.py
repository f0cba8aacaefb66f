"""VLLMSampler against the library's own sampler, with vLLM's real engine (its CPU build here).

vLLM pins its own transformers, so these tests run in an environment of their own, made by `.ci/run`
(`SFTRL_REQUIRE_VLLM=1 pytest -m vllm`); elsewhere they are skipped, and `SFTRL_REQUIRE_VLLM=1` turns a
missing vLLM into a failure, so that CI cannot pass by skipping them."""

import json
import os
from dataclasses import replace

import pytest
import torch

if os.environ.get("SFTRL_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM is not installed (.ci/run tests it in an environment of its own)")

from sftrl_callbacks import PassAtKCallback, VLLMSampler  # noqa: E402
from sftrl_callbacks.cli import main as sftrl  # noqa: E402
from sftrl_callbacks.contracts import SamplingParams  # noqa: E402
from sftrl_callbacks.hf_sampler import HFSampler  # noqa: E402
from sftrl_callbacks.io import read_jsonl  # noqa: E402
from sftrl_callbacks.measure import PassAtKConfig, load_result, measure_pass_at_k  # noqa: E402
from sftrl_callbacks.verifiers import AnswerVerifier  # noqa: E402
from tests import tracker_readback  # noqa: E402
from tests.conftest import make_trainer, tiny_config_fields  # noqa: E402

pytestmark = pytest.mark.vllm
# The toy model's context; no graph capture on CPU; a KV cache of 512 MiB each, so that the three engines of one
# test fit beside each other (on CPU, gpu_memory_utilization budgets the whole process's host memory).
ENGINE = {"max_model_len": 256, "enforce_eager": True, "kv_cache_memory_bytes": 2**29}


@pytest.fixture(scope="module")
def engine():
    """One engine for the module, as a training run keeps one: each test pushes its own model's weights."""
    return VLLMSampler(**ENGINE)


def parting(a: str, b: str) -> str:
    """Where two completions part, for the failure message."""
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"equal for {i} characters, then {a[i : i + 20]!r} vs {b[i : i + 20]!r}"


def assert_greedy_equal(vllm_out, hf_out):
    differing = [(v[0], h[0]) for v, h in zip(vllm_out, hf_out) if v[0] != h[0]]
    detail = "; ".join(parting(v.text, h.text) for v, h in differing[:3])
    assert not differing, f"{len(differing)} of {len(hf_out)} greedy completions differ: {detail}"


def test_greedy_equals_hfsampler_on_the_trained_toy_model(engine, trained, tokenizer, splits):
    prompts = splits.heldout_problems["prompt"]
    params = SamplingParams(max_new_tokens=48, temperature=0)
    hf = HFSampler().sample(trained, tokenizer, prompts, 1, params)
    out = engine.sample(trained, tokenizer, prompts, 1, params)
    assert_greedy_equal(out, hf)
    assert sum(not c[0].truncated for c in out) >= len(prompts) // 2  # most ended at EOS: the ending is compared
    # A stop string ends a completion at the token that completes it, kept, as HFSampler does (the engine has no
    # tokenizer: it is cut afterwards).
    stopped = SamplingParams(max_new_tokens=48, temperature=0, stop_strings=(";",))
    assert_greedy_equal(
        engine.sample(trained, tokenizer, prompts, 1, stopped),
        HFSampler().sample(trained, tokenizer, prompts, 1, stopped),
    )


def test_a_lora_adapter_goes_into_the_push_without_touching_the_model(engine, trained, tokenizer, splits):
    from peft import LoraConfig, get_peft_model

    from sftrl_callbacks.toy import build_model

    torch.manual_seed(0)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    base = build_model(tokenizer)  # not a deepcopy: the trainer left a patched forward bound to the original
    base.load_state_dict(trained.state_dict())
    model = get_peft_model(base, lora)
    with torch.no_grad():  # an adapter large enough to change greedy answers
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prompts = splits.heldout_problems["prompt"][:8]
    params = SamplingParams(max_new_tokens=32, temperature=0)
    hf = HFSampler().sample(model, tokenizer, prompts, 1, params)
    assert hf != HFSampler().sample(trained, tokenizer, prompts, 1, params)  # the adapter changes the answers
    assert_greedy_equal(engine.sample(model, tokenizer, prompts, 1, params), hf)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # the trained model is not written


def test_pass_at_k_agrees_with_hfsampler_within_the_intervals(engine, trained, tokenizer, splits):
    config = PassAtKConfig(n=16, max_new_tokens=48, seed=3)
    results = {
        name: measure_pass_at_k(trained, tokenizer, splits.heldout_problems, AnswerVerifier(), config, sampler)
        for name, sampler in (("hf", HFSampler()), ("vllm", engine))
    }
    assert results["vllm"].sampler.startswith("VLLMSampler (vllm ")
    for k in (1, 4, 16):
        hf, vllm = results["hf"], results["vllm"]
        assert hf.ci[k]["low"] <= vllm.pass_at_k[k] <= hf.ci[k]["high"], (k, vllm.pass_at_k[k], hf.ci[k])
        assert vllm.ci[k]["low"] <= hf.pass_at_k[k] <= vllm.ci[k]["high"], (k, hf.pass_at_k[k], vllm.ci[k])
    assert all(0 < r.pass_at_k[1] < r.pass_at_k[16] < 1 for r in results.values())  # nothing trivial


def test_per_request_seeds_do_not_depend_on_the_batch(engine, trained, tokenizer, splits):
    # 24 prompts x 64 samples: more prompt tokens than one engine step takes (4096), where a prefill split over two
    # steps would rewind a seeded generator, which CPU generators refuse.
    prompts = splits.heldout_problems["prompt"]
    seeds = tuple(range(100, 100 + len(prompts)))
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=8, prompt_seeds=seeds)
    together = engine.sample(trained, tokenizer, prompts, 64, params)
    alone = engine.sample(trained, tokenizer, prompts[1:2], 64, replace(params, prompt_seeds=seeds[1:2]))
    assert together[1] == alone[0]
    assert engine.sample(trained, tokenizer, prompts, 64, params) == together
    assert len({c.text for c in together[0]}) > 1  # sampled, not greedy


def test_sft_run_with_vllm_in_process_in_the_background_and_in_sftrl_eval(tmp_path, tokenizer, splits, trained):
    """One toy SFT run (on from the trained model), three ways through vLLM: weights pushed in the training process,
    a background process whose engine loads each checkpoint folder, and `sftrl eval --sampler vllm`. Same weights
    and per-problem seeds: the same counts."""
    from sftrl_callbacks.toy import build_model

    settings = dict(
        verifier="answer", sampler="vllm", sampler_options=ENGINE, n=8, num_problems=12, max_new_tokens=48, seed=1
    )
    inline = PassAtKCallback({"heldout": splits.heldout_problems}, **settings)
    background = PassAtKCallback(
        {"background": splits.heldout_problems}, background=True, measure_at_start=False, **settings
    )
    model = build_model(tokenizer)  # a fresh object: the trainer patches the forward of the one it trains
    model.load_state_dict(trained.state_dict())
    callbacks = [inline, background]
    trainer = make_trainer(
        tmp_path, tokenizer, splits.train, callbacks, 40, ["tensorboard"], model=model, save_steps=20
    )
    trainer.train()
    assert inline.errors == background.errors == 0
    inline_c = {r.step: r.c_per_problem for r in inline.results["heldout"]}
    assert set(inline_c) == {0, 20, 40} and inline_c[40] != inline_c[0]  # it measured a model that changed
    assert {r.step: r.c_per_problem for r in background.results["background"]} == {20: inline_c[20], 40: inline_c[40]}

    out = tmp_path / "out"
    records = read_jsonl(out / "sftrl" / "metrics.jsonl")
    names = {r["name"] for r in records if r["name"].startswith("sftrl/passk/heldout/")}
    assert names == _hf_metric_names(trainer.model, tokenizer, splits)  # the names an HFSampler measurement logs
    board = tracker_readback.tensorboard(str(out / "runs"))
    assert {name for name, _ in board if name.startswith("sftrl/passk/")} >= names
    assert all(r["sampler"].startswith("VLLMSampler (vllm ") for r in records if r["name"] in names)

    problems = tmp_path / "problems.jsonl"
    splits.heldout_problems.to_json(problems)
    # Two checkpoints: the engine loads the first folder and reloads the second in place (a tied output layer too).
    # The CLI in this process (the background job was the second process): a child would import vLLM again.
    args = ["eval", str(out / "checkpoint-20"), str(out / "checkpoint-40"), "--problems", f"heldout={problems}"]
    args += ["--verifier", "answer", "--n", "8", "--num-problems", "12", "--max-new-tokens", "48", "--seed", "1"]
    args += ["--sampler", "vllm", "--sampler-options", *(f"{key}={json.dumps(value)}" for key, value in ENGINE.items())]
    assert sftrl(args) == 0
    for step in (20, 40):
        offline = load_result(str(out / f"checkpoint-{step}" / "sftrl" / "eval_passk_heldout.json"))
        assert offline.c_per_problem == inline_c[step] and offline.sampler.startswith("VLLMSampler")


def _hf_metric_names(model, tokenizer, splits) -> set[str]:
    config = PassAtKConfig(n=8, num_problems=2, max_new_tokens=8)
    result = measure_pass_at_k(
        model, tokenizer, splits.heldout_problems, AnswerVerifier(), config, HFSampler(), "heldout"
    )
    return set(result.metrics())


@pytest.mark.slow
def test_the_real_model_through_vllm_in_an_sft_run_and_greedy_against_hfsampler(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from sftrl_callbacks.pretrained import smollm2_checkpoint
    from sftrl_callbacks.toy.word_problems import make_word_problem_splits

    path = smollm2_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = make_word_problem_splits(n_train=16, n_heldout_sft=4, n_heldout_problems=4, seed=0)
    callback = PassAtKCallback(
        {"problems": data.heldout_problems},
        verifier="math-verify",
        sampler="vllm",
        sampler_options={"max_model_len": 512, "enforce_eager": True, "kv_cache_memory_bytes": 2**29},
        n=4,
        max_new_tokens=64,
        seed=1,
    )
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=5e-4,  # one step that changes the sampled answers
        max_length=512,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        report_to=[],
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=data.train, processing_class=tokenizer, callbacks=[callback]
    )
    trainer.train()
    assert callback.errors == 0
    results = callback.results["problems"]
    assert [r.step for r in results] == [0, 1]  # before and after the step
    assert all(r.sampler.startswith("VLLMSampler") for r in results)
    before, after = ([c["completion"] for e in r.examples for c in e["completions"]] for r in results)
    assert before != after  # same seeds, new weights in the engine
    # Greedy, chat prompts through the template, ended by <|im_end|>: the engine's weights are the trained ones.
    params = SamplingParams(max_new_tokens=64, temperature=0)
    prompts = data.heldout_problems["prompt"]
    hf = HFSampler().sample(trainer.model, tokenizer, prompts, 1, params)
    assert_greedy_equal(callback.sampler.sample(trainer.model, tokenizer, prompts, 1, params), hf)
    assert any(not c[0].truncated for c in hf)


def test_a_direct_call_after_the_weights_changed_samples_the_new_weights(engine, trained, tokenizer, splits):
    """The same model object with weights changed in place (as an optimizer step changes them) is pushed again:
    the engine does not answer from the weights it was given before."""
    import copy

    model = copy.deepcopy(trained)
    prompts = splits.heldout_problems["prompt"][:12]
    params = SamplingParams(max_new_tokens=24, temperature=0)
    before = engine.sample(model, tokenizer, prompts, 1, params)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    after = engine.sample(model, tokenizer, prompts, 1, params)
    assert_greedy_equal(after, HFSampler().sample(model, tokenizer, prompts, 1, params))
    assert [c[0].text for c in after] != [c[0].text for c in before]


def test_the_engines_own_context_is_checked_before_sampling(trained, tokenizer, splits, caplog):
    """`max_model_len` shorter than the longest prompt plus `max_new_tokens`: the warning the model's own context
    gives, naming the engine's (the engine would cut completions there and they would count as wrong)."""
    import logging

    from sftrl_callbacks.measure import PassAtKConfig, check_prompts_fit

    sampler = VLLMSampler(max_model_len=24)  # made, not started: the engine starts at the first measurement
    config = PassAtKConfig(n=1, temperature=0.0, max_new_tokens=40)
    with caplog.at_level(logging.WARNING, logger="sftrl_callbacks"):
        check_prompts_fit(trained, tokenizer, splits.heldout_problems, config, "p", sampler)
    assert (
        "past the sampler's context (VLLMSampler (vllm" in caplog.text
        and "max_model_len) of 24 positions" in caplog.text
    )
    assert "lower max_new_tokens to at most" in caplog.text and sampler.llm is None


def test_a_head_size_the_cpu_engine_cannot_run_is_refused_before_step_1(tmp_path, tokenizer, splits):
    """A Qwen2 with 16-dimensional heads (hidden 64, 4 heads): vLLM's CPU attention has no kernel for it, and once
    failed inside `LLM.generate` at every measurement (and then hung the engine). Now the run stops at train start
    with one line, before any step, and no engine is started."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**tiny_config_fields(tokenizer, num_key_value_heads=2))  # hidden 64, 4 heads
    passk = PassAtKCallback(splits.heldout_problems, sampler="vllm", sampler_options=ENGINE, n=1, temperature=0.0)
    trainer = make_trainer(tmp_path, tokenizer, splits.train, [passk], max_steps=5, model=Qwen2ForCausalLM(config))
    with pytest.raises(ValueError, match="CPU attention has no kernel for attention heads of 16 dimensions") as err:
        trainer.train()
    assert "hidden size 64 / 4 heads" in str(err.value) and "use sampler='hf'" in str(err.value)
    assert trainer.state.global_step == 0 and passk.sampler.llm is None


def test_an_engine_that_raised_is_dropped_and_the_next_call_gets_a_new_one(trained, tokenizer, splits, caplog):
    """A request the engine refuses mid-call (a prompt longer than its `max_model_len`): the sampler never reuses
    that engine; the next call starts a new one and samples as before."""
    import logging

    from vllm.exceptions import VLLMValidationError

    sampler = VLLMSampler(**{**ENGINE, "max_model_len": 32})
    prompts = splits.heldout_problems["prompt"][:4]
    params = SamplingParams(max_new_tokens=8, temperature=0)
    first = sampler.sample(trained, tokenizer, prompts, 1, params)
    engine = sampler.llm
    with (
        caplog.at_level(logging.WARNING, logger="sftrl_callbacks"),
        pytest.raises(VLLMValidationError, match="maximum context length is 32"),
    ):
        sampler.sample(trained, tokenizer, ["Q: " + "1+" * 40 + "1=? A:"], 1, params)
    assert sampler.llm is None and "vLLM's engine stopped" in caplog.text and "it is dropped" in caplog.text
    again = sampler.sample(trained, tokenizer, prompts, 1, params)
    assert sampler.llm is not None and sampler.llm is not engine
    assert [c[0].text for c in again] == [c[0].text for c in first]


def test_an_engine_that_hangs_mid_measurement_is_interrupted_and_rebuilt(
    tmp_path, tokenizer, splits, trained, monkeypatch
):
    """vLLM's scheduler made to spin (where the issue's hung engine spun) during the step-2 measurement: the bound
    interrupts it, the measurement is recorded as failed, the engine is dropped, and the step-4 measurement runs on
    a new engine."""
    import copy

    from transformers import TrainerCallback
    from vllm.v1.core.sched.scheduler import Scheduler

    armed = {"now": False}
    schedule = Scheduler.schedule

    def spinning_schedule(self, *args, **kwargs):
        if armed["now"]:
            armed["now"] = False
            while True:
                pass
        return schedule(self, *args, **kwargs)

    monkeypatch.setattr(Scheduler, "schedule", spinning_schedule)

    class ArmAtStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            armed["now"] = state.global_step == 2

    passk = PassAtKCallback(
        {"p": splits.heldout_problems.select(range(4))},
        sampler="vllm",
        sampler_options=ENGINE,
        n=2,
        max_new_tokens=16,
        every_n_steps=2,
        measurement_timeout_s=5,
        on_train_end=False,
    )
    model = copy.deepcopy(trained)
    trainer = make_trainer(
        tmp_path, tokenizer, splits.train, [ArmAtStep2(), passk], max_steps=4, model=model, save_strategy="no"
    )
    trainer.train()
    assert trainer.state.global_step == 4 and passk.errors == 1
    assert [r.step for r in passk.results["p"]] == [0, 4]
    records = read_jsonl(tmp_path / "out" / "sftrl" / "metrics.jsonl")
    (event,) = [r for r in records if r["name"].startswith("sftrl/failure/")]
    assert event["step"] == 2 and event["error"].startswith("MeasurementTimeout: still running after its 5 s bound")
    assert passk.sampler.llm is not None  # the new engine of the step-4 measurement


def test_an_engine_too_small_for_one_sequence_is_refused_before_step_1(tmp_path, tokenizer, splits, trained):
    """A KV cache that cannot hold one sequence of `max_model_len`: refused at train start with what it needs and
    what it gets, instead of the engine refusing at its start in the first measurement."""
    import copy

    options = {**ENGINE, "kv_cache_memory_bytes": 2**16}
    passk = PassAtKCallback(splits.heldout_problems, sampler="vllm", sampler_options=options, n=1, temperature=0.0)
    trainer = make_trainer(tmp_path, tokenizer, splits.train, [passk], max_steps=5, model=copy.deepcopy(trained))
    with pytest.raises(ValueError, match=r"one sequence of max_model_len=256 needs 0\.\d+ GiB of KV cache") as err:
        trainer.train()
    assert "lower max_model_len, raise gpu_memory_utilization" in str(err.value) and trainer.state.global_step == 0
