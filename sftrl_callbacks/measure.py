"""One pass@k measurement of a model on a set of problems: sample -> verify -> counts -> curve.

Shared by `PassAtKCallback` (during training) and `sftrl eval` (on saved checkpoints), so both give
the same numbers for the same model, problems and seed. What it is asked and what it returns are in
`contracts` (`PassAtKConfig`, `PassAtKResult`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from datasets import Dataset

from .contracts import (
    PassAtKConfig,
    PassAtKResult,
    Sampler,
    describe_sampler,
    load_result,
    make_sampler,
    sampler_hook,
)
from .distributed import Shard
from .passk import bootstrap_ci, bootstrap_mean_ci, extrapolate_pass_at_k, pass_at_k_curve
from .prompts import encode_prompts, prompt_seeds, render_prompts
from .verifiers import GuardedVerifier, Verifier, trait
from .verifiers.grading import describe_delimiter_tokens, grade, warn_if_unseen
from .verifiers.reasoning import ReasoningFormat

logger = logging.getLogger("sftrl_callbacks")

__all__ = ["PassAtKConfig", "PassAtKResult", "load_result", "measure_pass_at_k"]

# Completions kept per problem for the result's `examples` (of its first `num_saved_examples` problems).
COMPLETIONS_KEPT = 4
# Bootstrap resamples of an extrapolated interval: each one refits the beta-binomial, so fewer than the
# `ci_resamples` of the unbiased intervals (which cost a few array operations each).
EXTRAPOLATION_RESAMPLES = 200


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


def check_prompts_fit(
    model: Any, tokenizer: Any, problems: Dataset, config: PassAtKConfig, name: str, sampler: Any = None
) -> None:
    """Raise when a prompt cannot be rendered (chat messages, no chat template); warn when the longest prompt plus
    `max_new_tokens` runs past the model's context, where a long completion would be sampled at positions the
    model was not trained for (garbage, or an index error with learned position embeddings), or past the sampler's
    own (an engine's `max_model_len`), where completions would be cut and counted wrong."""
    prompts = config.used_prompts(problems)
    try:
        lengths = [len(ids) for ids in encode_prompts(tokenizer, prompts)]
    except ValueError as err:
        raise ValueError(f"Problem set {name!r}: {err}") from err
    longest = max(lengths)
    limits = [
        (
            context_length(model),
            "the model's context",
            "long completions would be sampled where the model was not trained",
        ),
        (
            sampler_hook(sampler, "context_limit") if sampler is not None else None,
            f"the sampler's context ({describe_sampler(sampler)}: max_model_len)",
            "the engine would cut completions there, counted wrong",
        ),
    ]
    for limit, whose, what in limits:
        if limit is not None and longest + config.max_new_tokens > limit:
            logger.warning(
                "sftrl: problem set %r: its longest prompt (%d tokens) plus max_new_tokens=%d is %d, past %s of %d "
                "positions: %s; lower max_new_tokens to at most %d or shorten the prompts",
                name,
                longest,
                config.max_new_tokens,
                longest + config.max_new_tokens,
                whose,
                limit,
                what,
                max(limit - longest, 0),
            )


def explain_reasoning_format(tokenizer: Any, problems: dict[str, Dataset], config: PassAtKConfig) -> None:
    """Say once, at train start, how the reasoning format meets this tokenizer and these prompts: delimiters that
    take several tokens (fine: grading reads text) and prompts whose template opens the thinking block."""
    reasoning = config.reasoning_format()
    if reasoning is None:
        return
    pieces = {d: n for d, n in describe_delimiter_tokens(reasoning, tokenizer).items() if n != 1}
    if pieces:
        logger.info(
            "sftrl: reasoning delimiter(s) %s are not single tokens of the %s (%s tokens); completions are graded "
            "on their text, so this only means the model writes them piece by piece",
            " / ".join(map(repr, pieces)),
            type(tokenizer).__name__,
            " / ".join(map(str, pieces.values())),
        )
    for name, ds in problems.items():
        rendered = render_prompts(tokenizer, config.used_prompts(ds))
        opened = sum(reasoning.prompt_opens_block(text) for text in rendered)
        if opened:
            logger.info(
                "sftrl: %d of %d prompts of %r end inside a %r block (the chat template's generation prompt opens "
                "it): their completions are read as continuing the thought, answered after %r",
                opened,
                len(rendered),
                name,
                reasoning.open,
                reasoning.close,
            )


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
    sampler = sampler or make_sampler(config.sampler, config.sampler_options)
    if not checked:  # PassAtKCallback checked its sets once, at construction and at train start
        check_problems(problems, config, dataset_name)
        check_prompts_fit(model, tokenizer, problems, config, dataset_name, sampler)
    shard = shard or Shard()
    if not isinstance(verifier, GuardedVerifier):
        verifier = GuardedVerifier(verifier, config.verifier_timeout_s)
    start = time.time()
    requested = config.num_used(len(problems))
    rows = [problems[i] for i in range(requested)]
    deadline = None if config.time_budget_s is None else start + config.time_budget_s
    reasoning = config.reasoning_format()
    opened = [False] * len(rows)
    if reasoning is not None:  # read from each rendered prompt once, never guessed from a completion
        rendered = render_prompts(tokenizer, config.used_prompts(problems))
        opened = [reasoning.prompt_opens_block(text) for text in rendered]
    draw = _Draw(sampler, model, tokenizer, rows, verifier, config, shard, deadline, reasoning, opened)

    # a sampler with weights of its own (vLLM) takes the model's now, on every rank
    shard.run("preparing the sampler", sampler_hook(sampler, "prepare"), model)
    try:
        tallies, counts_n, counts_c, first_round_c, rows = _sample_rounds(draw, rows, config, shard, deadline)
    finally:
        sampler_hook(sampler, "release")()
    tokens = [x for t in tallies for x in t.tokens]
    truncated = [x for t in tallies for x in t.truncated]
    kept = [t.kept for t in tallies]
    where = f"pass@k of {dataset_name!r}" + ("" if step is None else f" at step {step}")
    reasoning_summary = None
    if reasoning is not None:
        texts = [c["completion"] for t in tallies for c in t.kept]
        opened_here = sum(draw.opened[i] for i in range(len(rows)))
        delimited = sum(t.delimited for t in tallies)
        if shard.rank == 0 and not delimited:
            warn_if_unseen(reasoning, texts, opened_here, where)
        grades = [g for t in tallies for g in t.grades]
        reasoning_summary = {
            "delimiters": [reasoning.open, reasoning.close],
            "delimiter_tokens": describe_delimiter_tokens(reasoning, tokenizer),
            "prompts_opening_block": opened_here,
            "completions_with_delimiters": delimited,
            "seen": bool(delimited or opened_here),
            "mean_thinking_tokens": _mean([g[0] for g in grades]),
            "mean_answer_tokens": _mean([g[1] for g in grades]),
            "unfinished_thought_rate": _mean([g[2] for g in grades]),
        }
    mean_score = None
    scored = verifier.returns_scores or any(s not in (0.0, 1.0) for t in tallies for s in t.scores)
    if scored and len(rows):  # decided on the gathered scores, so every rank logs the same metrics
        interval = bootstrap_mean_ci(
            [np.mean(t.scores) for t in tallies], resamples=config.ci_resamples, seed=config.seed
        )
        mean_score = {
            "estimate": interval.estimate,
            "low": interval.low,
            "high": interval.high,
            "method": interval.method,
            "threshold": config.score_threshold,
        }
    if truncated and all(truncated) and not counts_c.any():
        logger.warning(
            "sftrl: %s: all %d completions hit max_new_tokens=%d and none was verified correct, so "
            "pass@k is meaningless here (the answer never came): raise max_new_tokens",
            where,
            len(truncated),
            config.max_new_tokens,
        )

    # Unbiased estimates need the same n for every problem: the uniform first round. Dynamic
    # rounds add samples only where the first round found nothing, so every k above initial_n (and
    # every extrapolated k) comes from the beta-binomial fit to all counts.
    round_n = counts_n if config.allocation == "uniform" else np.minimum(counts_n, config.initial_n)
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
        top_k=config.top_k,
        stop_strings=list(config.stop_strings),
        seed=config.seed,
        allocation=config.allocation,
        sampler=describe_sampler(sampler),
        verifier=verifier.description,
        wall_time_s=time.time() - start,
        examples=examples,
        verifier_timeouts=sum(t.timeouts for t in tallies),
        truncated_per_problem=[int(sum(t.truncated)) for t in tallies],
        reasoning=reasoning_summary,
        mean_score=mean_score,
        completions=every,
    )


def _sample_rounds(draw: _Draw, rows: list[dict], config: PassAtKConfig, shard: Shard, deadline: float | None):
    """The uniform first round, then (allocation='dynamic') rounds for the problems still unsolved."""
    first_n = config.n if config.allocation == "uniform" else config.initial_n
    first = draw.round(0, list(range(len(rows))), [first_n] * len(rows))
    done = sorted(first)  # a time budget can leave problems out
    rows, tallies = [rows[i] for i in done], [first[i] for i in done]
    draw.rows, draw.ids = rows, [draw.ids[i] for i in done]  # later rounds index the problems kept
    draw.opened = [draw.opened[i] for i in done]
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
    return tallies, counts_n, counts_c, first_round_c, rows


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
    scores: list[float] = field(default_factory=list)
    grades: list[tuple[int, int, bool]] = field(default_factory=list)  # (thinking, answer tokens, unfinished)
    delimited: int = 0  # completions holding a reasoning delimiter

    def joined(self, other: _Tally) -> _Tally:
        return _Tally(
            self.n + other.n,
            self.c + other.c,
            self.tokens + other.tokens,
            self.truncated + other.truncated,
            (self.kept + other.kept)[:COMPLETIONS_KEPT],
            self.timeouts + other.timeouts,
            self.every + other.every,
            self.scores + other.scores,
            self.grades + other.grades,
            self.delimited + other.delimited,
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
    reasoning: ReasoningFormat | None
    opened: list[bool]  # whether each row's prompt leaves a thinking block open

    def __post_init__(self) -> None:
        self.ids = list(range(len(self.rows)))  # each row's place in the measured set: its samples' seed
        self._counting_tokenizer: Any = None

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
        size = max(1, sampler_hook(self.sampler, "max_batch_rows") // max(counts, default=1))
        chunks = [mine[lo : lo + size] for lo in range(0, len(mine), size)]
        # A sampler that does not run the model's forwards (vLLM's engine holds its own copy of the weights) needs
        # neither the forwards in step nor the whole parameters.
        forwards = sampler_hook(self.sampler, "runs_model_forwards")
        parts = self.shard.run(
            "pass@k sampling",
            self._draw,
            index,
            chunks,
            problems,
            counts,
            model=self.model if forwards else None,
            gather_parameters=self.config.gather_parameters,
        )
        return {i: tally for part in parts for i, tally in part.items()}

    def _draw(self, index, chunks, problems, counts) -> dict[int, _Tally]:
        out: dict[int, _Tally] = {}
        params = self.config.sampling_params()
        # A chunk's completions are graded while the next chunk is sampled, unless the verifier must run in this
        # thread (verifier_timeout_s=None: signal-based timeouts).
        overlap = self.verifier.timeout_s is not None or trait(self.verifier.verifier, "bounded")
        with ThreadPoolExecutor(1, thread_name_prefix="sftrl-grading") if overlap else contextlib.nullcontext() as pool:
            pending = []
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
                if pool is None:
                    out.update(self._tally(part, samples))
                else:
                    pending.append(pool.submit(self._tally, part, samples))
            for future in pending:
                out.update(future.result())
        return out

    def _tally(self, part: list[int], samples: list) -> dict[int, _Tally]:
        """Grade one chunk's completions, one verifier call per problem (a hang or a fault is one problem's)."""
        out: dict[int, _Tally] = {}
        for i, completions in zip(part, samples):
            texts = [c.text for c in completions]
            tokens, truncated = [c.n_tokens for c in completions], [c.truncated for c in completions]
            before = self.verifier.timeouts
            grades = grade(
                self.verifier,
                texts,
                tokens,
                self.rows[i],
                self.config.score_threshold,
                self.reasoning,
                self.opened[i],
                self._count_tokens,
            )
            timeouts = self.verifier.timeouts - before
            records = [
                {"completion": text, "correct": g.correct, "score": g.score, "tokens": int(n), "truncated": cut}
                for text, g, n, cut in zip(texts, grades, tokens, truncated)
            ]
            if self.reasoning is not None:
                for record, g in zip(records, grades):
                    record.update(thinking_tokens=g.thinking_tokens, unfinished=g.unfinished)
            every = records if self.config.save_completions else []
            out[i] = _Tally(
                len(texts),
                sum(g.correct for g in grades),
                tokens,
                truncated,
                records[:COMPLETIONS_KEPT],
                timeouts,
                every,
                [g.score for g in grades],
                [(g.thinking_tokens, g.answer_tokens, g.unfinished) for g in grades],
                sum(g.delimited for g in grades),
            )
        return out

    def _count_tokens(self, texts: list[str]) -> list[int]:
        # Its own copy: this runs beside the sampler, and a fast tokenizer's call sets state (padding, truncation).
        if self._counting_tokenizer is None:
            self._counting_tokenizer = copy.deepcopy(self.tokenizer)
        return [len(ids) for ids in self._counting_tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else 0.0
