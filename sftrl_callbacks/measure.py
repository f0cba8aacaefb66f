"""One pass@k measurement of a model on a set of problems: sample -> verify -> counts -> curve.

Shared by `PassAtKCallback` (during training) and `sftrl eval` (on saved checkpoints), so both give
the same numbers for the same model, problems and seed.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from datasets import Dataset

from .checks import check_types, require
from .distributed import Shard
from .io import atomic_file, write_json_atomic
from .passk import bootstrap_ci, default_ks, extrapolate_pass_at_k, pass_at_k_curve
from .records import PassAtKRecord
from .sampling import HFSampler, Sampler, SamplingParams, encode_prompts
from .streams import prompt_seeds
from .verifiers import GuardedVerifier, Verifier

logger = logging.getLogger("sftrl_callbacks")

# Completions kept per problem for the result's `examples` (of its first `num_saved_examples` problems).
COMPLETIONS_KEPT = 4
# Bootstrap resamples of an extrapolated interval: each one refits the beta-binomial, so fewer than the
# `ci_resamples` of the unbiased intervals (which cost a few array operations each).
EXTRAPOLATION_RESAMPLES = 200


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
        require(self, "top_p", 0 < self.top_p <= 1, "must be in (0, 1]")
        require(self, "top_k", self.top_k >= 0, "must be >= 0 (0 = off)")
        require(self, "max_new_tokens", self.max_new_tokens >= 1, "must be >= 1")
        require(self, "stop_strings", all(self.stop_strings), "empty stop strings would stop every completion at once")
        require(self, "num_problems", self.num_problems is None or self.num_problems >= 1, "must be >= 1 or None")
        require(self, "time_budget_s", self.time_budget_s is None or self.time_budget_s >= 0, "must be >= 0 or None")
        require(self, "prompt_column", bool(self.prompt_column), "name the prompt column")
        require(self, "answer_column", bool(self.answer_column), "name the answer column")
        require(self, "num_saved_examples", self.num_saved_examples >= 0, "must be >= 0")
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

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop_strings=tuple(self.stop_strings),
            seed=self.seed,
        )


def check_problems(problems: Dataset, config: PassAtKConfig, name: str = "problems") -> None:
    """Raise early when the problem set `name` is empty, lacks its columns or has rows no verifier can score."""
    where = f"problem set {name!r}"
    if len(problems) == 0:
        raise ValueError(f"The {where} is empty: give it at least one problem.")
    for column in (config.prompt_column, config.answer_column):
        if column not in problems.column_names:
            raise ValueError(
                f"The {where} has no {column!r} column (columns: {problems.column_names}); "
                f"set prompt_column / answer_column."
            )
    used = problems.select(range(config.num_used(len(problems))))
    for column, what in ((config.answer_column, "answer"), (config.prompt_column, "prompt")):
        empty = [i for i, v in enumerate(used[column]) if v is None or (isinstance(v, str) and not v.strip())]
        if empty:
            raise ValueError(
                f"The {where} has {len(empty)} row(s) with an empty {what} in column {column!r} "
                f"(rows {empty[:5]}): they could never be verified; fill or drop them."
            )
    bad = [i for i, p in enumerate(used[config.prompt_column]) if not isinstance(p, (str, list))]
    if bad:
        raise ValueError(
            f"The {where}'s {config.prompt_column!r} column must hold text or a list of chat messages; "
            f"row {bad[0]} holds {type(used[bad[0]][config.prompt_column]).__name__}."
        )


def context_length(model: Any) -> int | None:
    """The most positions the model attends over (`max_position_embeddings`), None when it does not say."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def check_prompts_fit(model: Any, tokenizer: Any, problems: Dataset, config: PassAtKConfig, name: str) -> None:
    """Raise when a prompt cannot be rendered (chat messages, no chat template); warn when the longest prompt plus
    `max_new_tokens` runs past the model's context, where a long completion would be sampled at positions the
    model was not trained for (garbage, or an index error with learned position embeddings)."""
    prompts = config.used_prompts(problems)
    try:
        lengths = [len(ids) for ids in encode_prompts(tokenizer, prompts)]
    except ValueError as err:
        raise ValueError(f"Problem set {name!r}: {err}") from err
    limit = context_length(model)
    longest = max(lengths)
    if limit is not None and longest + config.max_new_tokens > limit:
        logger.warning(
            "sftrl: problem set %r: its longest prompt (%d tokens) plus max_new_tokens=%d is %d, past the model's "
            "context of %d positions: long completions would be sampled where the model was not trained; lower "
            "max_new_tokens to at most %d or shorten the prompts",
            name,
            longest,
            config.max_new_tokens,
            longest + config.max_new_tokens,
            limit,
            max(limit - longest, 0),
        )


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
    completions: list[dict[str, Any]] | None = None  # every completion, with save_completions (not in the JSON)

    def to_record(self, step: int | None = None) -> PassAtKRecord:
        """The typed record the callbacks publish (measured and extrapolated ks kept apart)."""
        return PassAtKRecord(
            step=self.step if step is None else step,
            dataset=self.dataset,
            pass_at_k=dict(self.pass_at_k),
            extrapolated={k: v["estimate"] for k, v in self.extrapolated.items()},
            extra={
                "mean_completion_tokens": self.mean_completion_tokens,
                "truncation_rate": self.truncation_rate,
                "num_problems": self.num_problems,
                "samples": int(sum(self.n_per_problem)),
                "verifier_timeouts": self.verifier_timeouts,
            },
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
            "num_problems": self.num_problems,
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


def measure_pass_at_k(
    model: Any,
    tokenizer: Any,
    problems: Dataset,
    verifier: Verifier,
    config: PassAtKConfig,
    sampler: Sampler | None = None,
    dataset_name: str = "problems",
    step: int | None = None,
    shard: Shard | None = None,
    checked: bool = False,
) -> PassAtKResult:
    """Sample, verify and estimate pass@k for `problems` (see `PassAtKConfig`).

    With a `shard` of several ranks the problems are split across them and the counts gathered: every
    rank returns the whole result (see `_Draw.round` for why it does not depend on the number of ranks).
    Under DeepSpeed ZeRO-3 give it the engine's optimizer, `current_shard(engine.optimizer)`, so that sampling
    can gather the parameters once (see `sftrl_callbacks.distributed`).
    """
    if not checked:  # PassAtKCallback checked its sets once, at construction and at train start
        check_problems(problems, config, dataset_name)
        check_prompts_fit(model, tokenizer, problems, config, dataset_name)
    sampler = sampler or HFSampler()
    shard = shard or Shard()
    if not isinstance(verifier, GuardedVerifier):
        verifier = GuardedVerifier(verifier, config.verifier_timeout_s)
    start = time.time()
    requested = config.num_used(len(problems))
    rows = [problems[i] for i in range(requested)]
    deadline = None if config.time_budget_s is None else start + config.time_budget_s
    draw = _Draw(sampler, model, tokenizer, rows, verifier, config, shard, deadline)

    first_n = config.n if config.allocation == "uniform" else config.initial_n
    first = draw.round(0, list(range(len(rows))), [first_n] * len(rows))
    done = sorted(first)  # a time budget can leave problems out
    rows, tallies = [rows[i] for i in done], [first[i] for i in done]
    draw.rows, draw.ids = rows, [draw.ids[i] for i in done]  # later rounds index the problems kept
    counts_n = np.array([t.n for t in tallies], dtype=np.int64)
    counts_c = np.array([t.c for t in tallies], dtype=np.int64)

    first_round_c = counts_c.copy()
    if config.allocation == "dynamic":
        budget = config.n * len(rows) - int(counts_n.sum())
        round_index = 1
        while budget > 0 and shard.all(deadline is None or time.time() < deadline):
            open_ = np.flatnonzero((counts_c == 0) & (counts_n < config.max_n_per_problem))
            if open_.size == 0:
                break
            per = min(config.initial_n, max(1, budget // open_.size))
            extra = [int(min(per, config.max_n_per_problem - counts_n[i])) for i in open_]
            more = draw.round(round_index, open_.tolist(), extra)
            for i, tally in more.items():
                counts_n[i] += tally.n
                counts_c[i] += tally.c
                tallies[i] = tallies[i].joined(tally)
            budget -= sum(t.n for t in more.values())
            round_index += 1
    tokens = [x for t in tallies for x in t.tokens]
    truncated = [x for t in tallies for x in t.truncated]
    kept = [t.kept for t in tallies]
    if truncated and all(truncated) and not counts_c.any():
        logger.warning(
            "sftrl: pass@k of %r%s: all %d completions hit max_new_tokens=%d and none was verified correct, so "
            "pass@k is meaningless here (the answer never came): raise max_new_tokens",
            dataset_name,
            "" if step is None else f" at step {step}",
            len(truncated),
            config.max_new_tokens,
        )

    # Unbiased estimates need the same n for every problem: the uniform first round. Dynamic
    # rounds add samples only where the first round found nothing, so every k above initial_n (and
    # every extrapolated k) comes from the beta-binomial fit to all counts.
    round_n = counts_n if config.allocation == "uniform" else np.minimum(counts_n, first_n)
    round_c = counts_c if config.allocation == "uniform" else first_round_c
    ks = config.measured_ks() if len(rows) else []
    result_curve = pass_at_k_curve(round_n, round_c, ks) if ks else {}
    ci = {}
    for k in ks:
        interval = bootstrap_ci(round_n, round_c, k, resamples=config.ci_resamples, seed=config.seed)
        ci[k] = {"low": interval.low, "high": interval.high, "method": interval.method}
    extrapolated = {}
    for k in config.extrapolated_ks():
        interval = extrapolate_pass_at_k(counts_n, counts_c, k, resamples=EXTRAPOLATION_RESAMPLES, seed=config.seed)
        extrapolated[k] = {
            "estimate": interval.estimate,
            "low": interval.low,
            "high": interval.high,
            "method": interval.method,
        }

    examples = []
    for row, completions in list(zip(rows, kept))[: config.num_saved_examples]:
        examples.append(
            {"prompt": row[config.prompt_column], "answer": row[config.answer_column], "completions": completions}
        )
    every = None
    if config.save_completions:
        every = [
            {"problem": i, "prompt": row[config.prompt_column], "answer": row[config.answer_column], **completion}
            for i, (row, tally) in enumerate(zip(rows, tallies))
            for completion in tally.every
        ]
    return PassAtKResult(
        dataset=dataset_name,
        step=step,
        n_per_problem=counts_n.tolist(),
        c_per_problem=counts_c.tolist(),
        pass_at_k=result_curve,
        ci=ci,
        extrapolated=extrapolated,
        mean_completion_tokens=float(np.mean(tokens)) if tokens else 0.0,
        truncation_rate=float(np.mean(truncated)) if truncated else 0.0,
        num_problems=len(rows),
        num_problems_requested=requested,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        allocation=config.allocation,
        sampler=type(sampler).__name__,
        verifier=verifier.name,
        wall_time_s=time.time() - start,
        examples=examples,
        verifier_timeouts=sum(t.timeouts for t in tallies),
        completions=every,
    )


@dataclass
class _Tally:
    """One problem's samples in one or more rounds."""

    n: int
    c: int
    tokens: list[int]
    truncated: list[bool]
    kept: list[dict]  # the first few completions (text, verdict, tokens, truncated), for the JSON
    timeouts: int = 0  # completions counted wrong because the verifier timed out
    every: list[dict] = field(default_factory=list)  # all of them, with save_completions

    def joined(self, other: _Tally) -> _Tally:
        return _Tally(
            self.n + other.n,
            self.c + other.c,
            self.tokens + other.tokens,
            self.truncated + other.truncated,
            (self.kept + other.kept)[:COMPLETIONS_KEPT],
            self.timeouts + other.timeouts,
            self.every + other.every,
        )


@dataclass
class _Draw:
    """Sampling rounds of one measurement."""

    sampler: Any
    model: Any
    tokenizer: Any
    rows: list[dict]
    verifier: GuardedVerifier
    config: PassAtKConfig
    shard: Shard
    deadline: float | None

    def __post_init__(self) -> None:
        self.ids = list(range(len(self.rows)))  # each row's place in the measured set: its samples' seed

    def round(self, index: int, problems: list[int], counts: list[int]) -> dict[int, _Tally]:
        """`counts[j]` samples of problem `problems[j]`, from every rank: problem -> tally.

        The problems are dealt to the ranks one by one (shares differ by at most one problem, whatever the
        batch size), and each rank samples its share in chunks of one batched call. The samples of a problem
        come from streams seeded by (seed, round, problem) (`SamplingParams.prompt_seeds`), so with
        `HFSampler` they depend neither on the number of ranks nor on the batch size, up to floating-point
        differences in the logits of differently composed batches. A time budget stops a rank between its
        chunks, after its first.
        """
        mine = self.shard.mine(range(len(problems)))
        size = max(1, getattr(self.sampler, "max_batch_rows", 1024) // max(counts, default=1))
        chunks = [mine[lo : lo + size] for lo in range(0, len(mine), size)]
        parts = self.shard.run(
            "pass@k sampling",
            self._draw,
            index,
            chunks,
            problems,
            counts,
            model=self.model,
            gather_parameters=self.config.gather_parameters,
        )
        return {i: tally for part in parts for i, tally in part.items()}

    def _draw(self, index, chunks, problems, counts) -> dict[int, _Tally]:
        out: dict[int, _Tally] = {}
        params = self.config.sampling_params()
        for position, chunk in enumerate(chunks):
            if position and self.deadline is not None and time.time() > self.deadline:
                break
            part = [problems[k] for k in chunk]
            asked = [counts[k] for k in chunk]
            prompts = [self.rows[i][self.config.prompt_column] for i in part]
            seeds = prompt_seeds(params.seed, [(index, self.ids[i]) for i in part])
            # `seed` too, distinct per chunk, for samplers that take one seed a call
            chunk_params = replace(params, seed=seeds[0], prompt_seeds=seeds)
            samples = self.sampler.sample(self.model, self.tokenizer, prompts, asked, chunk_params)
            got = [len(s) for s in samples] if isinstance(samples, Sequence) else None
            if got != asked:
                raise ValueError(
                    f"Sampler {type(self.sampler).__name__}.sample returned "
                    f"{got if got is not None else type(samples).__name__} completions per prompt for counts "
                    f"{asked}: it must return exactly n[i] completions for prompt i."
                )
            # One verifier call per problem, so a hang or a fault is one problem's, not the whole batch's.
            for i, completions in zip(part, samples):
                texts = [c.text for c in completions]
                before = self.verifier.timeouts
                verdicts = self.verifier.check(texts, [self.rows[i]] * len(texts))
                tokens, truncated = [c.n_tokens for c in completions], [c.truncated for c in completions]
                timeouts = self.verifier.timeouts - before
                records = [
                    {"completion": text, "correct": bool(ok), "tokens": int(n), "truncated": bool(cut)}
                    for text, ok, n, cut in zip(texts, verdicts, tokens, truncated)
                ]
                every = records if self.config.save_completions else []
                out[i] = _Tally(
                    len(texts), int(sum(verdicts)), tokens, truncated, records[:COMPLETIONS_KEPT], timeouts, every
                )
        return out
