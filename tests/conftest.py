import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tokenizer():
    from sftrl_callbacks.toy import build_tokenizer

    return build_tokenizer()


# The held-out sets of `splits`, which the `trained` model's own training rows stay out of.
HELDOUT = dict(n_heldout_sft=48, n_heldout_problems=24, seed=0)


@pytest.fixture(scope="session")
def splits():
    """1,280 training rows: the runs on them are short (40 steps of 32 rows at most, or a few epochs), and
    every trainer tokenizes all of its rows when it is built. The held-out sets do not depend on n_train."""
    from sftrl_callbacks.toy import make_splits

    return make_splits(n_train=1280, **HELDOUT)


@pytest.fixture(scope="session")
def trained(tokenizer, tmp_path_factory):
    """A toy model after 150 real SFT steps (shared by tests that need a model that has learnt a little)."""
    from trl import SFTTrainer

    from sftrl_callbacks.demo import toy_sft_config
    from sftrl_callbacks.toy import build_model, make_splits

    out = tmp_path_factory.mktemp("trained")
    model = build_model(tokenizer, seed=0)
    train = make_splits(n_train=4000, **HELDOUT).train  # 1.2 epochs
    args = toy_sft_config(str(out), 150, [], save_strategy="no", learning_rate=3e-3)
    SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer).train()
    return model


def make_trainer(
    tmp_path, tokenizer, train, callbacks, max_steps=30, report_to=(), eval_dataset=None, model=None, **overrides
):
    from trl import SFTTrainer

    from sftrl_callbacks.demo import toy_sft_config
    from sftrl_callbacks.toy import build_model

    model = model or build_model(tokenizer, seed=0)
    overrides.setdefault("logging_steps", 5)
    overrides.setdefault("save_steps", 15)
    args = toy_sft_config(str(tmp_path / "out"), max_steps, list(report_to), **overrides)
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch):
    """A fresh offline W&B setup writing under tmp_path (wandb keeps process-wide settings otherwise)."""
    import wandb

    wandb.teardown()
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    yield tmp_path
    wandb.finish()
    wandb.teardown()
