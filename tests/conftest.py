import contextlib
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
    """A toy model after 150 real SFT steps (shared by tests that need a model that has learnt a little).

    Its weights are kept in the sftrl cache under a hash of the code that trains them, so that later sessions,
    and the vLLM tests' environment after the main suite, load them instead of training again."""
    from safetensors.torch import load_file, save
    from trl import SFTTrainer

    from sftrl_callbacks.demo import toy_sft_config
    from sftrl_callbacks.io import atomic_file
    from sftrl_callbacks.toy import build_model, make_splits

    model = build_model(tokenizer, seed=0)
    cache = _trained_cache_path()
    if cache.exists():
        missing, unexpected = model.load_state_dict(load_file(cache), strict=False)
        assert missing == ["lm_head.weight"] and not unexpected  # tied to the embedding, which is loaded
        return model
    out = tmp_path_factory.mktemp("trained")
    train = make_splits(n_train=4000, **HELDOUT).train  # 1.2 epochs
    args = toy_sft_config(str(out), 150, [], save_strategy="no", learning_rate=3e-3)
    SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer).train()
    with atomic_file(cache, "wb") as f:  # safetensors keeps a tensor once: the tied output layer is left out
        f.write(save({name: w for name, w in model.state_dict().items() if name != "lm_head.weight"}))
    return model


def _trained_cache_path():
    """The key: this file, the toy world and the SFT settings it trains with, and torch's version. Not the
    versions of transformers and TRL, which differ in the vLLM environment: the tests use `trained` as some model
    that has learnt a little, and compare each path with another on the same weights."""
    import hashlib
    from pathlib import Path

    import sftrl_callbacks.demo
    import sftrl_callbacks.toy
    from sftrl_callbacks.pretrained import default_cache_dir

    toy = Path(sftrl_callbacks.toy.__file__).parent
    digest = hashlib.sha256(torch.__version__.encode())
    for path in [Path(__file__), Path(sftrl_callbacks.demo.__file__), *sorted(toy.glob("*.py"))]:
        digest.update(path.read_bytes())
    return default_cache_dir() / "tests" / f"trained-{digest.hexdigest()[:16]}.safetensors"


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


@contextlib.contextmanager
def offline_wandb(directory):
    """A fresh offline W&B setup writing under `directory`, its run finished at the end (wandb keeps process-wide
    settings otherwise)."""
    import wandb

    wandb.teardown()
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("WANDB_DIR", str(directory))
            yield directory
            wandb.finish()
    finally:
        wandb.teardown()


@pytest.fixture
def wandb_dir(tmp_path):
    with offline_wandb(tmp_path):
        yield tmp_path


@pytest.fixture(scope="session")
def logged_run(tmp_path_factory, tokenizer, splits):
    """One 30-step toy run reporting to W&B offline, with the held-out loss every 10 steps and pass@k at the saves
    (15 and 30) on the same trainer: the held-out loss and pass@k callback tests each read back what they logged."""
    from sftrl_callbacks import HeldOutLossCallback, PassAtKCallback
    from sftrl_callbacks.toy import StepVerifier

    tmp_path = tmp_path_factory.mktemp("logged")
    loss = HeldOutLossCallback({"mixed": splits.heldout_sft}, every_n_steps=10)
    passk = PassAtKCallback(
        {"mixed": splits.heldout_problems}, verifier=StepVerifier(), n=8, num_problems=6, max_new_tokens=40
    )
    with offline_wandb(tmp_path):
        trainer = make_trainer(
            tmp_path, tokenizer, splits.train, [passk, loss], max_steps=30, report_to=["wandb"], save_steps=15
        )
        trainer.train()
    return tmp_path, trainer


def tiny_config_fields(tokenizer, **overrides) -> dict:
    """Config fields of a tiny random decoder (2 layers, hidden 64) for `tokenizer`'s vocabulary."""
    return (
        dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
        | overrides
    )
