"""Regrade a run's saved completions with and without the reasoning format, and print what changed.

    python benchmarks/reasoning_regrade.py outputs/smollm2-135m-reasoning-cpu [TOKENIZER_DIR]

Reads `<output_dir>/sftrl/completions/step-*.jsonl.gz` (a run with `save_completions=True`), grades every
completion with math-verify twice - whole (as before the reasoning format) and by its answer region (as
`PassAtKCallback` does) - and prints per step how many verdicts changed, which way and why; then the held-out loss
by token class from `metrics.jsonl`, and what the reasoning bookkeeping costs per completion (splitting and counting
thinking tokens with the tokenizer, the one extra work a measurement does; SmolLM2's tokenizer by default).
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import sys
import time
from collections import Counter

from sftrl_callbacks.io import read_jsonl
from sftrl_callbacks.verifiers import GuardedVerifier, MathVerifyVerifier, ReasoningFormat
from sftrl_callbacks.verifiers.grading import grade


def why(region, whole_ok: bool) -> str:
    if region.unfinished:
        return "unfinished thought (no answer), whole text held a right answer" if whole_ok else "unfinished"
    if not region.answer.strip():
        return "nothing after the thinking, whole text held a right answer"
    if whole_ok:
        return "right answer only inside the thinking, wrong one after it"
    return "a wrong draft inside the thinking made the whole text ambiguous; the answer after it is right"


def main(output_dir: str, tokenizer_dir: str | None = None) -> None:
    fmt = ReasoningFormat()
    verifier = MathVerifyVerifier(workers=2, timeout_s=5)
    guarded = GuardedVerifier(verifier, None)
    files = sorted(
        glob.glob(os.path.join(output_dir, "sftrl", "completions", "step-*.jsonl.gz")),
        key=lambda p: int(re.search(r"step-(\d+)_", p)[1]),
    )
    every = []
    print(
        "| step | completions | correct, whole | correct, answer region | changed | whole right -> wrong | "
        "whole wrong -> right | unfinished | with a block |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    reasons: Counter = Counter()
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        every += rows
        whole = [g.correct for r in rows for g in grade(guarded, [r["completion"]], [1], r, 1.0)]
        region = [g.correct for r in rows for g in grade(guarded, [r["completion"]], [1], r, 1.0, fmt)]
        assert region == [r["correct"] for r in rows], f"{path}: the saved verdicts are not the answer-region ones"
        down = up = 0
        for r, a, b in zip(rows, whole, region):
            if a != b:
                reasons[why(fmt.split(r["completion"]), a)] += 1
                down, up = down + (a and not b), up + (b and not a)
        unfinished = sum(fmt.split(r["completion"]).unfinished for r in rows)
        blocks = sum(fmt.open in r["completion"] or fmt.close in r["completion"] for r in rows)
        step = rows[0]["step"]
        print(
            f"| {step} | {len(rows)} | {sum(whole)} | {sum(region)} | {down + up} | {down} | {up} | "
            f"{unfinished} | {blocks} |"
        )
    print("\nWhy verdicts changed:")
    for reason, count in reasons.most_common():
        print(f"- {count}: {reason}")

    metrics = read_jsonl(os.path.join(output_dir, "sftrl", "metrics.jsonl"))
    curves: dict[str, dict[int, float]] = {}
    for r in metrics:
        field = r["name"].rsplit("/", 1)[-1]
        if r["name"].startswith("sftrl/heldout/") and field in ("loss", "loss_thinking", "loss_answer"):
            curves.setdefault(field, {})[r["step"]] = r["value"]
    print("\n| step | held-out loss | thinking tokens | answer tokens |\n|---|---|---|---|")
    for step in sorted(curves.get("loss", {})):
        values = [curves.get(f, {}).get(step) for f in ("loss", "loss_thinking", "loss_answer")]
        print(f"| {step} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in values) + " |")

    from transformers import AutoTokenizer

    from sftrl_callbacks.pretrained import smollm2_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or smollm2_checkpoint())
    texts = [r["completion"] for r in every]
    start = time.perf_counter()
    regions = [fmt.split(t) for t in texts]
    split_s = time.perf_counter() - start
    start = time.perf_counter()
    thinking = [r.thinking for r in regions if r.thinking and not r.unfinished]
    if thinking:
        tokenizer(thinking, add_special_tokens=False)
    count_s = time.perf_counter() - start
    per = 1e6 / max(len(texts), 1)
    print(
        f"\nReasoning bookkeeping on {len(texts)} completions: splitting {split_s * per:.1f} us and counting thinking "
        f"tokens {count_s * per:.1f} us per completion ({(split_s + count_s) * 1e3:.1f} ms in all)"
    )
    from sftrl_callbacks.heldout import prepare_examples
    from sftrl_callbacks.toy.word_problems import make_word_problem_splits

    rows = make_word_problem_splits(n_train=10, n_heldout_sft=32, n_heldout_problems=1, style="reasoning").heldout_sft
    timings = {}
    for label, reasoning in (("without", None), ("with", fmt)):
        start = time.perf_counter()
        prepare_examples(rows, tokenizer, max_length=512, reasoning=reasoning)
        timings[label] = time.perf_counter() - start
    print(
        f"Held-out preparation of {len(rows)} reasoning rows (once, at train start): {timings['without'] * 1e3:.0f} ms "
        f"without the thinking mask, {timings['with'] * 1e3:.0f} ms with it"
    )
    verifier.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
