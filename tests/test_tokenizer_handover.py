"""Background pass@k samples with the trainer's own tokenizer, not whatever loads back from the checkpoint.

The toy tokenizer, saved beside a Qwen2 model, loads back through `AutoTokenizer` as a `Qwen2Tokenizer` that
drops the spaces: a background job that trusted the checkpoint's tokenizer measured other prompts, silently.
"""

import logging
import pickle

import pytest
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from sftrl_callbacks import PassAtKCallback
from sftrl_callbacks.background import hand_over_tokenizer

from .conftest import make_trainer


def _qwen2(tokenizer, seed=0):
    import torch

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def _reloaded(tokenizer, tmp_path):
    folder = tmp_path / "qwen2-saved"
    _qwen2(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, AutoTokenizer.from_pretrained(folder)


def test_the_toy_tokenizer_does_not_survive_a_qwen2_checkpoint(tokenizer, tmp_path):
    """The premise of the tests below (if transformers changes this, they test less)."""
    _, back = _reloaded(tokenizer, tmp_path)
    prompt = "Q: 3+4-2=? A:"
    assert back(prompt)["input_ids"] != tokenizer(prompt)["input_ids"]
    assert back.decode(back(prompt)["input_ids"]) == "Q:3+4-2=?A:"


@pytest.mark.slow
def test_background_pass_at_k_equals_inline_on_qwen2_with_that_tokenizer(tmp_path, tokenizer, splits):
    """One Qwen2 run measured twice at each save: in the training process and by the background job."""
    from trl import SFTTrainer

    from sftrl_callbacks.demo import toy_sft_config

    one_step = splits.heldout_problems.filter(lambda row: row["steps"] == 1)
    settings = dict(verifier="toy-steps", n=8, num_problems=8, max_new_tokens=30, seed=3)
    inline = PassAtKCallback({"inline": one_step}, **settings)
    background = PassAtKCallback({"background": one_step}, background=True, **settings)
    args = toy_sft_config(str(tmp_path / "out"), 60, [], save_steps=30, learning_rate=3e-3, logging_steps=30)
    trainer = SFTTrainer(
        model=_qwen2(tokenizer),
        args=args,
        train_dataset=splits.train,
        processing_class=tokenizer,
        callbacks=[inline, background],
    )
    trainer.train()
    assert inline.errors == background.errors == 0
    here = {r.step: r for r in inline.results["inline"]}
    there = {r.step: r for r in background.results["background"]}
    assert sorted(here) == sorted(there) == [0, 30, 60]  # step 0: both measured in the training process
    # The model learnt the answer format (its completions depend on the prompts' exact text); how many answers
    # it gets right after 60 steps moved with package versions, so it is not asserted.
    assert any("####" in c["completion"] for e in here[60].examples for c in e["completions"])
    for step in (30, 60):
        assert there[step].c_per_problem == here[step].c_per_problem
        assert there[step].examples == here[step].examples  # the same completions of the same prompts


def test_background_mode_refuses_a_tokenizer_it_cannot_hand_over(tmp_path, tokenizer, splits):
    unpicklable = pickle.loads(pickle.dumps(tokenizer))
    unpicklable.postprocess = lambda text: text  # a lambda cannot be pickled
    passk = PassAtKCallback(splits.heldout_problems, verifier="toy-steps", n=2, max_new_tokens=8, background=True)
    trainer = make_trainer(tmp_path, unpicklable, splits.train, [passk], max_steps=2, save_steps=1)
    with pytest.raises(ValueError, match="cannot hand the trainer's tokenizer to its background process: pickling"):
        trainer.train()
    assert not (tmp_path / "out" / "checkpoint-1").exists()  # refused before the first step


class _ReloadsAsAnother:
    """Pickles as another tokenizer, as a tokenizer class with a lossy `__reduce__` would."""

    def __init__(self, tokenizer, other):
        self.tokenizer, self.other = tokenizer, other

    def __call__(self, *args, **kwargs):
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.__dict__["tokenizer"], name)

    def __reduce__(self):
        return (pickle.loads, (pickle.dumps(self.other),))


def test_a_tokenizer_whose_copy_tokenizes_differently_is_refused(tmp_path, tokenizer):
    _, back = _reloaded(tokenizer, tmp_path)
    drifting = _ReloadsAsAnother(tokenizer, back)
    with pytest.raises(ValueError, match=r"pickled copy tokenizes prompt 'Q: 1\+2=\? A:' differently"):
        hand_over_tokenizer(drifting, ["Q: 1+2=? A:"], str(tmp_path / "tok.pkl"))
    assert not (tmp_path / "tok.pkl").exists()
    path = hand_over_tokenizer(tokenizer, ["Q: 1+2=? A:"], str(tmp_path / "tok.pkl"))
    with open(path, "rb") as f:
        assert pickle.load(f)("Q: 1+2=? A:")["input_ids"] == tokenizer("Q: 1+2=? A:")["input_ids"]


def test_sftrl_eval_warns_when_the_checkpoints_tokenizer_changes_the_prompts(tmp_path, tokenizer, splits, caplog):
    from sftrl_callbacks.cli import main
    from sftrl_callbacks.toy import build_model

    folder, _ = _reloaded(tokenizer, tmp_path)
    problems = tmp_path / "problems.jsonl"
    splits.heldout_problems.select(range(3)).to_json(problems)
    args = ["--problems", str(problems), "--n", "2", "--max-new-tokens", "4", "--verifier", "toy-steps"]
    with caplog.at_level(logging.WARNING, logger="sftrl_callbacks"):
        assert main(["eval", str(folder), *args]) == 0
    assert "does not give back 3 of 3 prompts of 'problems'" in caplog.text
    assert repr(splits.heldout_problems[0]["prompt"]) in caplog.text  # the first example, as it was

    caplog.clear()
    llama = tmp_path / "llama-saved"  # the toy Llama's checkpoint loads its tokenizer back as it was
    build_model(tokenizer).save_pretrained(llama)
    tokenizer.save_pretrained(llama)
    with caplog.at_level(logging.WARNING, logger="sftrl_callbacks"):
        assert main(["eval", str(llama), *args]) == 0
    assert "does not give back" not in caplog.text
