import math

import pytest
import torch
from datasets import Dataset

from sftrl_callbacks.heldout import heldout_loss, prepare_examples
from sftrl_callbacks.toy import make_splits

from .conftest import make_trainer


@pytest.mark.parametrize("fmt", ["prompt_completion", "messages", "text"])
def test_masking_matches_sfttrainer(tmp_path, tokenizer, fmt):
    data = make_splits(n_train=16, fmt=fmt, n_heldout_sft=2, n_heldout_problems=2, seed=1).train
    trainer = make_trainer(tmp_path, tokenizer, data, [], max_steps=1)
    ours = prepare_examples(data, tokenizer, max_length=128)
    theirs = trainer.train_dataset
    # SFTTrainer shuffles nothing here; compare as sets of (ids, labels) to be order-proof.
    assert sorted((e.input_ids, e.labels) for e in ours) == sorted(zip(theirs["input_ids"], theirs["labels"]))
    if fmt == "prompt_completion":
        assert all(e.labels[0] == -100 for e in ours)  # the prompt is masked


def test_loss_is_token_weighted_mean_over_the_set(trained, tokenizer, splits):
    examples = prepare_examples(splits.heldout_sft, tokenizer)
    result = heldout_loss(trained, examples, batch_size=7)
    # Independent: one example at a time through the model's own loss (mean over its tokens),
    # re-weighted by its token count.
    total, count = 0.0, 0
    trained.eval()
    with torch.no_grad():
        for e in examples:
            out = trained(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels]))
            n = sum(1 for t in e.labels[1:] if t != -100)
            total += out.loss.item() * n
            count += n
    assert result.n_tokens == count
    assert math.isclose(result.loss, total / count, abs_tol=1e-4)
    assert math.isclose(heldout_loss(trained, examples, batch_size=64).loss, result.loss, abs_tol=1e-5)


def test_bad_heldout_sets_fail_early(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        prepare_examples(Dataset.from_dict({"prompt": [], "completion": []}), tokenizer)
    with pytest.raises(ValueError, match="expected prompt/completion"):
        prepare_examples(Dataset.from_dict({"question": ["1+1"]}), tokenizer)
