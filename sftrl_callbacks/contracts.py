"""The contracts of a pass@k measurement, without torch: what a `Sampler` receives and returns, what
`measure_pass_at_k` is asked to do (`PassAtKConfig`) and what it gives back (`PassAtKResult`).

Someone writing their own sampler reads this page: implement `Sampler.sample`, return `Completion`s, and
pass the object as `PassAtKCallback(..., sampler=...)`. The built-in samplers are chosen by name
(`PassAtKConfig.sampler`), so a config names its sampler in YAML recipes, background jobs and `sftrl eval`.
The CLI and the background job builder import only this module (no torch) until they sample.
"""

from __future__ import annotations

import gzip
import importlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .checks import check_options, check_types, keyword_options, require
from .io import atomic_file, write_json_atomic
from .passk import default_ks
from .records import PassAtKRecord
from .verifiers.reasoning import DEFAULT_DELIMITERS, ReasoningFormat

if TYPE_CHECKING:
    from datasets import Dataset

# name -> the factory of each sampler a config can name: the built-ins as "module:class", imported on first use
# (vLLM is optional); others added with `register_sampler`.
SAMPLERS: dict[str, str | Callable[..., Any]] = {
    "hf": "sftrl_callbacks.hf_sampler:HFSampler",
    "vllm": "sftrl_callbacks.vllm_sampler:VLLMSampler",
}


@dataclass
class SamplingParams:
    """How to sample. temperature 0 means greedy decoding."""

    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens generated per completion."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; 0 = greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1.0 = off)."})
    top_k: int = field(default=0, metadata={"help": "Keep only the k most likely tokens (0 = off)."})
    stop_strings: tuple[str, ...] = field(default=(), metadata={"help": "Stop a completion at any of these."})
    seed: int = field(default=0, metadata={"help": "Seed of the random draws (see prompt_seeds)."})
    prompt_seeds: tuple[int, ...] = field(
        default=(),
        metadata={
            "help": "One seed per prompt of a call: prompt i's samples come from random streams of its own, so they "
            "do not depend on which other prompts share the call (empty: derived from seed and the prompt's place)."
        },
    )

    def __post_init__(self) -> None:
        check_types(self)
        require(self, "max_new_tokens", self.max_new_tokens >= 1, "must be >= 1")
        require(self, "temperature", self.temperature >= 0, "must be >= 0 (0 = greedy)")
        require(self, "top_p", 0 < self.top_p <= 1, "must be in (0, 1]")
        require(self, "top_k", self.top_k >= 0, "must be >= 0 (0 = off)")
        self.stop_strings = tuple(self.stop_strings)
        self.prompt_seeds = tuple(int(s) for s in self.prompt_seeds)
        require(self, "prompt_seeds", all(s >= 0 for s in self.prompt_seeds), "seeds must be >= 0")


@dataclass(frozen=True)
class Completion:
    """One sampled completion."""

    text: str
    n_tokens: int
    truncated: bool  # hit max_new_tokens before EOS or a stop string


class SamplerHooks:
    """The optional parts of a sampler, with their defaults: a sampler may subclass this or define only what it
    needs (`Sampler` itself asks for `sample` alone). The library reads them through `sampler_hook`."""

    #: what made a measurement, recorded in every result (e.g. the engine and its version); None: the class name
    description: str | None = None
    #: most rows (prompts x samples) one `sample` call is given; the measurement cuts its problems to fit
    max_batch_rows: int = 1024
    #: False for a sampler with weights of its own (an engine): the trained model's forwards are not run, so
    #: sharded parameters need neither gathering nor ranks in step while it samples
    runs_model_forwards: bool = True
    #: True: `sftrl eval` and background jobs pass a checkpoint folder as `model` instead of a loaded model
    reads_checkpoint_folders: bool = False
    #: the most positions the sampler itself can hold (an engine's `max_model_len`), checked like the model's own
    #: context against the longest prompt plus `max_new_tokens`; None: only the model's context counts
    context_limit: int | None = None

    def check_model(self, model: Any) -> None:
        """At train start (and in `sftrl eval` before the first checkpoint): raise a one-line `ValueError` naming the
        cause and the way out for a model this sampler cannot run (an architecture or head size its engine does not
        support here), so it fails before step 1 rather than at a measurement."""

    def prepare(self, model: Any) -> None:
        """Once per measurement, before its first `sample` call, on every rank: take the weights of `model`."""

    def release(self) -> None:
        """Once per measurement, after its last `sample` call (also when sampling failed): give memory back."""

    def reset(self, reason: str) -> None:
        """After a measurement ran past its bound (`measurement_timeout_s`) and was interrupted: drop what it may
        have left half-made (an engine mid-step), so that the next measurement starts afresh."""


def sampler_hook(sampler: Any, name: str) -> Any:
    """`sampler`'s optional hook or setting `name` (see `SamplerHooks`), or its default (a method that does nothing
    for `prepare` / `release`)."""
    if not hasattr(SamplerHooks, name):
        raise AttributeError(f"{name!r} is not a sampler hook: see SamplerHooks")
    value = getattr(sampler, name, None)
    if value is not None:
        return value
    return getattr(SamplerHooks(), name)  # bound, so the default methods are callable as the sampler's own


@runtime_checkable
class Sampler(Protocol):
    def sample(
        self,
        model: Any,
        tokenizer: Any,
        prompts: Sequence[str | list],
        n: int | Sequence[int],
        params: SamplingParams,
    ) -> list[list[Completion]]:
        """`n` completions (or `n[i]` for prompt i) for each prompt, in prompt order.

        `model` is the model being trained (a `PreTrainedModel`, possibly wrapped by PEFT / DDP / FSDP) or, for a
        sampler with `reads_checkpoint_folders = True`, a saved checkpoint's folder (`sftrl eval`, background
        jobs). `tokenizer` is the trainer's: prompts are token ids it makes (`prompts.encode_prompts`), and a
        `Completion`'s text is its decoding of the tokens before EOS, keeping a stop string that ended it. A
        sampler may say what it is in `description` (e.g. its engine's version): results record it."""
        ...


def register_sampler(name: str, factory: Callable[..., Sampler]) -> None:
    """Let `PassAtKConfig(sampler=name)` - so `PassAtKCallback(sampler=name)`, YAML recipes, background jobs and
    `sftrl eval --sampler name` - build `factory(**sampler_options)`. A background job imports the factory's module
    to find it, so register it at the top level of an importable module."""
    if not name or not callable(factory):
        raise ValueError("register_sampler(name, factory) needs a non-empty name and a callable factory.")
    SAMPLERS[name] = factory


def sampler_factory(name: str) -> Callable[..., Sampler]:
    """The factory registered as `name` (a built-in's module is imported here)."""
    if name not in SAMPLERS:
        raise ValueError(
            f"Unknown sampler {name!r}: use one of {sorted(SAMPLERS)}, register yours with register_sampler, or "
            "pass a Sampler object."
        )
    factory = SAMPLERS[name]
    if isinstance(factory, str):
        module, cls = factory.split(":")
        factory = getattr(importlib.import_module(module), cls)
    return factory


def make_sampler(name: str, options: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None) -> Sampler:
    """The sampler registered as `name`, made with `options` as keywords, checked against its factory first.
    `defaults` are the caller's preferences (a worker's `show_progress=False`, `sftrl eval --max-batch-rows`): each
    goes only to a factory that takes it, and `options` override it."""
    factory = sampler_factory(name)
    check_options("Sampler", name, factory, options)
    taken, _ = keyword_options(factory)
    kwargs = {key: value for key, value in (defaults or {}).items() if key in taken}
    return factory(**{**kwargs, **(options or {})})


def describe_sampler(sampler: Any) -> str:
    """What made a measurement: the sampler's own `description` (engine and version) or its class name."""
    return str(sampler_hook(sampler, "description") or type(sampler).__name__)


@dataclass
class PassAtKConfig:
    """What `PassAtKCallback` / `sftrl eval` sample and how they estimate pass@k."""

    n: int = field(default=64, metadata={"help": "Samples per problem (the paper: 256 for pass@64)."})
    ks: list[int] | None = field(default=None, metadata={"help": "k values to log (default 1, 2, 4, ..., n)."})
    extrapolate_ks: list[int] = field(
        default_factory=list,
        metadata={"help": "k values above n, estimated from a beta-binomial fit (empirical Bayes), e.g. [256]."},
    )
    allocation: str = field(
        default="uniform",
        metadata={
            "help": "'uniform': n samples per problem. 'dynamic': initial_n each, then the rest of the n x problems "
            "budget in rounds to problems still unsolved (pass@k then comes from the beta-binomial fit)."
        },
    )
    initial_n: int = field(default=16, metadata={"help": "First-round samples per problem with allocation='dynamic'."})
    max_n_per_problem: int = field(default=256, metadata={"help": "Cap per problem with allocation='dynamic'."})
    sampler: str = field(
        default="hf",
        metadata={
            "help": "Which registered sampler draws the completions: 'hf' (HFSampler, the library's own batched "
            "decode loop), 'vllm' (VLLMSampler: vLLM's engine, installed apart) or one added with register_sampler. "
            "A Sampler object passed to PassAtKCallback(sampler=...) replaces it."
        },
    )
    sampler_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Keywords for the named sampler, checked against its factory when it is made, e.g. "
            "{'max_batch_rows': 512} for 'hf'; for 'vllm' its engine options: gpu_memory_utilization, "
            "max_model_len, enforce_eager, dtype, tensor_parallel_size, ... (docs/pass-at-k.md)."
        },
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 = off)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens per completion."})
    stop_strings: list[str] = field(default_factory=list, metadata={"help": "Extra stop strings."})
    num_problems: int | None = field(default=None, metadata={"help": "Use the first N problems (None: all)."})
    time_budget_s: float | None = field(
        default=None, metadata={"help": "Stop sampling new problems after this many seconds (logs how many were done)."}
    )
    gather_parameters: bool = field(
        default=True,
        metadata={
            "help": "Under FSDP2 or DeepSpeed ZeRO-3, hold the whole parameters on every rank while sampling, as "
            "TRL's ds3_gather_for_generation does: faster, but each rank needs the whole model's memory. False "
            "samples with the parameters sharded (every rank's forwards in step)."
        },
    )
    verifier_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Keywords for a verifier named by a string, checked against its factory when it is made, e.g. "
            "{'timeout_s': 10, 'workers': 4} for 'math-verify' or {'pattern': 'Answer: (.+)'} for 'answer'."
        },
    )
    score_threshold: float = field(
        default=1.0,
        metadata={
            "help": "For verifiers that return scores (a reward function): a completion at or above it counts as "
            "correct for pass@k; the mean score and its interval are logged as mean_score."
        },
    )
    reasoning_delimiters: list[str] | None = field(
        default_factory=lambda: list(DEFAULT_DELIMITERS),
        metadata={
            "help": "The thinking block's opening and closing delimiters; verifiers grade only the text after the "
            "last closing one, a block left open is a wrong answer (an unfinished thought). Completions without "
            "them are graded whole. None (`--reasoning-delimiters none`) grades every completion whole."
        },
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column with the prompt (text or messages)."})
    answer_column: str = field(default="answer", metadata={"help": "Column with the reference answer."})
    num_saved_examples: int = field(
        default=3,
        metadata={
            "help": "Problems whose first completions (with verdict, tokens, truncation) go into the JSON and the "
            "trackers' completions table."
        },
    )
    save_completions: bool = field(
        default=False,
        metadata={
            "help": "Also write every completion (prompt, completion, verdict, expected answer, tokens, truncated) "
            "to <output_dir>/sftrl/completions/step-<step>_<set>.jsonl.gz."
        },
    )
    ci_resamples: int = field(default=1000, metadata={"help": "Bootstrap resamples for confidence intervals."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling and of the bootstrap."})
    verifier_timeout_s: float | None = field(
        default=60.0,
        metadata={
            "help": "Longest wait for one verifier call (one problem's completions); a call that takes longer counts "
            "as wrong and is reported. Verifiers that bound their own time (`bounded = True`, e.g. math-verify) "
            "are called directly; None calls every verifier directly, without a limit."
        },
    )

    def __post_init__(self) -> None:
        if self.reasoning_delimiters is not None and list(self.reasoning_delimiters) in ([], [None]):
            self.reasoning_delimiters = None  # `--reasoning-delimiters none` on the command line
        check_types(self)
        require(self, "n", self.n >= 1, "samples per problem must be >= 1")
        if self.ks is not None:
            require(self, "ks", len(self.ks) > 0 and min(self.ks) >= 1, "give positive integers (or None)")
            require(self, "ks", max(self.ks) <= self.n, f"k above n={self.n}: raise n or put k in extrapolate_ks")
            self.ks = sorted({int(k) for k in self.ks})
        require(self, "extrapolate_ks", all(k >= 1 for k in self.extrapolate_ks), "give positive integers")
        require(self, "allocation", self.allocation in ("uniform", "dynamic"), "use 'uniform' or 'dynamic'")
        if self.allocation == "dynamic":
            require(self, "initial_n", 1 <= self.initial_n <= self.n, f"must be in [1, n={self.n}]")
            require(self, "max_n_per_problem", self.max_n_per_problem >= self.initial_n, "must be >= initial_n")
        require(
            self,
            "temperature",
            self.temperature > 0 or self.n == 1,
            "must be > 0 (0 is greedy: all n samples would be the same and pass@k would equal pass@1)",
        )
        require(self, "sampler", self.sampler in SAMPLERS, f"use one of {sorted(SAMPLERS)} (or register_sampler)")
        require(self, "top_p", 0 < self.top_p <= 1, "must be in (0, 1]")
        require(self, "top_k", self.top_k >= 0, "must be >= 0 (0 = off)")
        require(self, "max_new_tokens", self.max_new_tokens >= 1, "must be >= 1")
        require(self, "stop_strings", all(self.stop_strings), "empty stop strings would stop every completion at once")
        require(self, "num_problems", self.num_problems is None or self.num_problems >= 1, "must be >= 1 or None")
        require(self, "time_budget_s", self.time_budget_s is None or self.time_budget_s >= 0, "must be >= 0 or None")
        require(self, "prompt_column", bool(self.prompt_column), "name the prompt column")
        require(self, "answer_column", bool(self.answer_column), "name the answer column")
        require(self, "num_saved_examples", self.num_saved_examples >= 0, "must be >= 0")
        require(self, "score_threshold", math.isfinite(self.score_threshold), "must be a finite number")
        ReasoningFormat.check_config(self)
        require(self, "ci_resamples", self.ci_resamples >= 100, "a 95 % bootstrap interval needs >= 100 resamples")
        require(
            self,
            "verifier_timeout_s",
            self.verifier_timeout_s is None or self.verifier_timeout_s > 0,
            "must be > 0 or None",
        )

    def measured_ks(self) -> list[int]:
        """The ks estimated directly, unbiased: those of `ks` up to the samples every problem gets."""
        per_problem = self.n if self.allocation == "uniform" else self.initial_n
        return [k for k in self.ks or default_ks(self.n) if k <= per_problem]

    def extrapolated_ks(self) -> list[int]:
        """The ks from the beta-binomial fit: `extrapolate_ks` and the rest of `ks` (above `initial_n` when
        dynamic)."""
        measured = set(self.measured_ks())
        return sorted(set(self.extrapolate_ks) | {k for k in self.ks or default_ks(self.n) if k not in measured})

    def num_used(self, available: int) -> int:
        """How many problems a measurement uses: the first `num_problems` of those `available` (all when None)."""
        return available if self.num_problems is None else min(self.num_problems, available)

    def used_prompts(self, problems: Dataset) -> list:
        """The prompts of the problems a measurement uses."""
        return problems[: self.num_used(len(problems))][self.prompt_column]

    def reasoning_format(self) -> ReasoningFormat | None:
        return ReasoningFormat.from_delimiters(self.reasoning_delimiters)

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop_strings=tuple(self.stop_strings),
            seed=self.seed,
        )


# The reasoning figures a measurement logs as metrics (the rest of `PassAtKResult.reasoning` stays in its JSON).
REASONING_METRICS = ("mean_thinking_tokens", "mean_answer_tokens", "unfinished_thought_rate")


@dataclass
class PassAtKResult:
    dataset: str
    step: int | None
    n_per_problem: list[int]  # samples drawn of each problem (PassAtKConfig.n is the number asked per problem)
    c_per_problem: list[int]  # of them verified correct
    pass_at_k: dict[int, float]
    ci: dict[int, dict[str, Any]]
    extrapolated: dict[int, dict[str, Any]]
    mean_completion_tokens: float
    truncation_rate: float
    num_problems: int
    num_problems_requested: int
    temperature: float
    top_p: float
    max_new_tokens: int
    allocation: str
    sampler: str
    verifier: str
    wall_time_s: float
    examples: list[dict[str, Any]]
    verifier_timeouts: int = 0  # completions counted wrong because the verifier timed out
    # the other sampling settings that change the numbers (None in files written before they were recorded)
    top_k: int | None = None
    stop_strings: list[str] | None = None
    seed: int | None = None
    truncated_per_problem: list[int] | None = None  # of each problem's samples, how many hit max_new_tokens
    # with a reasoning format: its delimiters, how many prompts opened the block, mean thinking / answer tokens, the
    # share of completions that ended inside a thought, and how many completions held a delimiter at all
    reasoning: dict[str, Any] | None = None
    # with a verifier that returns scores: the mean score over problems, its bootstrap interval and the threshold
    mean_score: dict[str, Any] | None = None
    completions: list[dict[str, Any]] | None = None  # every completion, with save_completions (not in the JSON)

    def to_record(self, step: int | None = None) -> PassAtKRecord:
        """The typed record the callbacks publish (measured and extrapolated ks kept apart)."""
        extra = {
            "mean_completion_tokens": self.mean_completion_tokens,
            "truncation_rate": self.truncation_rate,
            "num_problems": self.num_problems,
            "samples": int(sum(self.n_per_problem)),
            "verifier_timeouts": self.verifier_timeouts,
        }
        if self.reasoning and self.reasoning["seen"]:  # a plain model's run gets no thinking metrics
            extra.update({key: self.reasoning[key] for key in REASONING_METRICS})
        if self.mean_score is not None:
            extra.update(
                mean_score=self.mean_score["estimate"],
                mean_score_low=self.mean_score["low"],
                mean_score_high=self.mean_score["high"],
            )
        return PassAtKRecord(
            step=self.step if step is None else step,
            dataset=self.dataset,
            pass_at_k=dict(self.pass_at_k),
            extrapolated={k: v["estimate"] for k, v in self.extrapolated.items()},
            extra=extra,
            context_=self.context(),
        )

    def metrics(self) -> dict[str, float]:
        """`{metric name: value}` as the callbacks log them (names from `records`)."""
        return self.to_record().metrics()

    def context(self) -> dict[str, Any]:
        """How every metric of this result was measured (goes next to each JSONL record)."""
        return {
            "dataset": self.dataset,
            "n": int(max(self.n_per_problem))
            if self.allocation == "uniform"
            else f"dynamic, {sum(self.n_per_problem)} total",
            "temperature": self.temperature,
            "top_p": self.top_p,
            **({"top_k": self.top_k} if self.top_k else {}),
            **({"stop_strings": self.stop_strings} if self.stop_strings else {}),
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "num_problems": self.num_problems,
            "sampler": self.sampler,
            "verifier": self.verifier,
            **({"reasoning_delimiters": self.reasoning["delimiters"]} if self.reasoning else {}),
            "estimator": "unbiased (Chen et al. 2021); k above the samples per problem: beta-binomial EB",
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["completions"]  # written apart (write_completions): one measurement can hold 10^5 of them
        return data

    def write_completions(self, path: str) -> None:
        """Every completion as gzip-compressed JSONL, one object a completion (needs save_completions)."""
        if self.completions is None:
            raise ValueError("this result holds no completions: measure with save_completions=True")
        with atomic_file(path, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8") as f:
            for row in self.completions:
                f.write(json.dumps({"step": self.step, "set": self.dataset, **row}, default=str) + "\n")

    def save(self, path: str) -> None:
        write_json_atomic(path, self.to_json())


def load_result(path: str) -> PassAtKResult:
    """A `PassAtKResult` from its JSON file (older files call the counts `n` and `c`)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    for old, new in (("n", "n_per_problem"), ("c", "c_per_problem")):
        if old in data:
            data[new] = data.pop(old)
    for key in ("pass_at_k", "ci", "extrapolated"):
        data[key] = {int(k): v for k, v in data[key].items()}
    return PassAtKResult(**data)
