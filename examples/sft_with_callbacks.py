"""SFT with the sftrl callbacks, driven by a YAML recipe (torchtune style: the recipe is the whole config).

    python examples/sft_with_callbacks.py --config recipes/toy.yaml          # CPU, a minute
    accelerate launch examples/sft_with_callbacks.py --config recipes/qwen3-4b-math.yaml

Recipe keys: `model` (a hub id / path, or "toy"), `dataset` (hub id / local files, split names, or
"toy"), `sft` (any SFTConfig field), `heldout_loss` (HeldOutLossConfig fields), `passk`
(PassAtKCallbackConfig fields plus `verifier`), `readiness` (RLReadinessConfig fields).
"""

from __future__ import annotations

import argparse

import yaml
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from sftrl_callbacks import (
    HeldOutLossCallback,
    HeldOutLossConfig,
    PassAtKCallback,
    PassAtKCallbackConfig,
    RLReadinessCallback,
    RLReadinessConfig,
)


def load_data(spec: dict):
    """Returns train, held-out SFT examples and held-out problems (prompt + answer)."""
    if spec.get("name") == "toy":
        from sftrl_callbacks.toy import make_splits

        splits = make_splits(
            n_train=spec.get("n_train", 20_000),
            n_heldout_sft=spec.get("n_heldout_sft", 256),
            n_heldout_problems=spec.get("n_heldout_problems", 64),
            seed=spec.get("seed", 0),
        )
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
    if recipe["model"] == "toy":
        from sftrl_callbacks.toy import build_model, build_tokenizer

        tokenizer = build_tokenizer()
        model = build_model(tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(recipe["model"])
        model = AutoModelForCausalLM.from_pretrained(recipe["model"], dtype=recipe.get("dtype", "auto"))

    callbacks = [HeldOutLossCallback({"heldout": heldout}, config=HeldOutLossConfig(**recipe.get("heldout_loss", {})))]
    if "passk" in recipe:
        passk = dict(recipe["passk"])
        verifier = passk.pop("verifier", "answer")
        callbacks.append(
            PassAtKCallback({"problems": problems}, verifier=verifier, config=PassAtKCallbackConfig(**passk))
        )
    callbacks.append(RLReadinessCallback(config=RLReadinessConfig(**recipe.get("readiness", {}))))
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**recipe["sft"]),
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train()
    print(f"RL start: {callbacks[-1].rl_start['path'] if callbacks[-1].rl_start else 'none chosen'}")


if __name__ == "__main__":
    main()
