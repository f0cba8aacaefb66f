"""Held-out loss of a model on a prepared set: torch, no trainer.

The value is the token-weighted mean negative log-likelihood over every scored token of the whole
set: sum of per-token NLL / number of scored tokens. It is not a mean of per-batch means, so it does
not depend on the batch size or on how examples are grouped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .distributed import Shard, no_grad_for
from .verifiers.reasoning import ReasoningFormat

logger = logging.getLogger("sftrl_callbacks")

IGNORE_INDEX = -100
FORMATS = "prompt/completion, messages, plain text (`text`), or pre-tokenized input_ids[/labels]"


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    thinking: list[bool] | None = None  # per token: inside a thinking block (with a reasoning format)


@dataclass(frozen=True)
class LossResult:
    loss: float
    n_tokens: int
    n_examples: int
    # with a reasoning format and thinking tokens among the scored ones: the loss over each class of token
    thinking_loss: float | None = None
    thinking_tokens: int = 0
    answer_loss: float | None = None
    answer_tokens: int = 0


def thinking_mask(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], reasoning: ReasoningFormat) -> list[bool]:
    """Per token of `ids` (a whole sequence, prompt included, as SFTTrainer tokenized it): whether it lies in a
    thinking block, delimiters included. Each token is decoded alone and the pieces laid end to end, so a token
    is placed by the text it adds; a token that covers any character of a block counts as thinking. (A piece can
    differ from its share of the joint decoding, e.g. a lone byte of a multi-byte character, but the delimiters
    are found in the laid-out text all the same.)"""
    pieces = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    text, starts = "".join(pieces), []
    position = 0
    for piece in pieces:
        starts.append(position)
        position += len(piece)
    spans = reasoning.thinking_spans(text)
    mask = []
    for start, piece in zip(starts, pieces):
        end = start + max(len(piece), 1)
        mask.append(any(lo < end and start < hi for lo, hi in spans))
    return mask


def check_columns(dataset: Dataset, name: str = "held-out", text_field: str = "text") -> None:
    """Raise early when a dataset is empty or in none of the formats SFTTrainer accepts."""
    if len(dataset) == 0:
        raise ValueError(f"The {name} dataset is empty: give it at least one example.")
    cols = set(dataset.column_names)
    if not ({"input_ids"} <= cols or {"prompt", "completion"} <= cols or "messages" in cols or text_field in cols):
        raise ValueError(f"The {name} dataset has columns {sorted(cols)}; expected {FORMATS}.")


def _is_conversational(value: object) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def _chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list, **kwargs) -> dict:
    return dict(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs))


def _drops_assistant_text(tokenizer: PreTrainedTokenizerBase, messages: list) -> bool:
    """Whether the chat template leaves out part of an assistant turn (templates that strip `<think>` blocks
    from past turns, say): the loss would then score other text than the data holds."""
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    return any(
        isinstance(m.get("content"), str) and m["content"].strip() not in rendered
        for m in messages
        if m.get("role") == "assistant"
    )


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prepare_examples(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int | None = 1024,
    completion_only_loss: bool | None = None,
    assistant_only_loss: bool = False,
    dataset_text_field: str = "text",
    truncation_mode: str = "keep_start",
    name: str = "held-out",
    reasoning: ReasoningFormat | None = None,
) -> list[Example]:
    """Tokenize and mask a dataset as TRL's SFTTrainer does for training.

    - prompt/completion: loss on the completion only unless `completion_only_loss=False`; EOS is
      appended to a non-conversational completion.
    - messages: the whole conversation, or assistant tokens only with `assistant_only_loss=True`.
    - text: the whole text with EOS appended.
    - input_ids (+ labels): used as given.
    Then truncation to `max_length` and removal of examples with no scored token. With a `reasoning` format each
    example also marks its thinking tokens (`thinking_mask`), for the loss by token class.
    """
    check_columns(dataset, name, dataset_text_field)
    cols = set(dataset.column_names)
    if completion_only_loss is None:
        completion_only_loss = {"prompt", "completion"} <= cols
    eos = tokenizer.eos_token or ""
    examples = []
    cut_by_template: list[int] = []  # rows whose assistant text the chat template leaves out in part
    cut_by_length = 0  # rows with scored tokens past max_length
    for index, row in enumerate(dataset):
        if "input_ids" in row:
            ids = list(row["input_ids"])
            labels = list(row["labels"]) if row.get("labels") is not None else list(ids)
        elif "prompt" in row and "completion" in row:
            if _is_conversational(row["prompt"]):
                if _drops_assistant_text(tokenizer, row["prompt"] + row["completion"]):
                    cut_by_template.append(index)
                prompt_ids = _chat_ids(tokenizer, row["prompt"], add_generation_prompt=True)["input_ids"]
                full = _chat_ids(
                    tokenizer, row["prompt"] + row["completion"], return_assistant_tokens_mask=assistant_only_loss
                )
            else:
                completion = row["completion"] if row["completion"].endswith(eos) else row["completion"] + eos
                prompt_ids = tokenizer(row["prompt"])["input_ids"]
                full = dict(tokenizer(row["prompt"] + completion))
            ids = full["input_ids"]
            keep = [1] * len(ids)
            if completion_only_loss:
                start = _common_prefix(prompt_ids, ids)
                keep = [0] * start + [1] * (len(ids) - start)
            if "assistant_masks" in full:
                keep = [k & m for k, m in zip(keep, full["assistant_masks"])]
            labels = [t if k else IGNORE_INDEX for t, k in zip(ids, keep)]
        elif "messages" in row:
            if _drops_assistant_text(tokenizer, row["messages"]):
                cut_by_template.append(index)
            full = _chat_ids(tokenizer, row["messages"], return_assistant_tokens_mask=assistant_only_loss)
            ids = full["input_ids"]
            mask = full.get("assistant_masks", [1] * len(ids))
            labels = [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]
        else:
            text = row[dataset_text_field]
            text = text if text.endswith(eos) else text + eos
            ids = tokenizer(text)["input_ids"]
            labels = list(ids)
        if max_length is not None:
            cut = slice(None, max_length) if truncation_mode == "keep_start" else slice(-max_length, None)
            dropped = labels[max_length:] if truncation_mode == "keep_start" else labels[:-max_length]
            cut_by_length += any(t != IGNORE_INDEX for t in dropped)
            ids, labels = ids[cut], labels[cut]
        if any(t != IGNORE_INDEX for t in labels[1:]):
            thinking = thinking_mask(tokenizer, ids, reasoning) if reasoning is not None else None
            examples.append(Example(list(ids), list(labels), thinking))
    if not examples:
        raise ValueError(
            f"No example of the {name} dataset has a token to score after masking and truncation to "
            f"max_length={max_length}: raise max_length or check the prompt/completion columns."
        )
    if cut_by_template:
        logger.warning(
            "sftrl: the chat template leaves out part of the assistant text of %d of %d rows of the %s dataset "
            "(first: row %d), so their loss scores other text than the data holds; check the template (some strip "
            "reasoning blocks) or give pre-tokenized input_ids/labels",
            len(cut_by_template),
            len(dataset),
            name,
            cut_by_template[0],
        )
    if cut_by_length:
        logger.warning(
            "sftrl: %d of %d rows of the %s dataset have scored tokens past max_length=%s, cut as SFTTrainer cuts "
            "them: their loss covers only what is left; raise max_length to score whole completions",
            cut_by_length,
            len(dataset),
            name,
            max_length,
        )
    if len(examples) < len(dataset):
        logger.warning(
            "sftrl: %d of %d examples of the %s dataset have no token to score after masking and truncation to "
            "max_length=%s and are left out of its loss",
            len(dataset) - len(examples),
            len(dataset),
            name,
            max_length,
        )
    return examples


def examples_from_trainer_args(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    args: object,
    name: str,
    reasoning: ReasoningFormat | None = None,
):
    """`prepare_examples` with the masking options read from an `SFTConfig` (or defaults for other args)."""
    return prepare_examples(
        dataset,
        tokenizer,
        max_length=getattr(args, "max_length", 1024),
        completion_only_loss=getattr(args, "completion_only_loss", None),
        assistant_only_loss=getattr(args, "assistant_only_loss", False),
        dataset_text_field=getattr(args, "dataset_text_field", "text"),
        truncation_mode=getattr(args, "truncation_mode", "keep_start"),
        name=name,
        reasoning=reasoning,
    )


def heldout_loss(
    model: PreTrainedModel,
    examples: Sequence[Example],
    batch_size: int = 32,
    pad_token_id: int = 0,
    shard: Shard | None = None,
) -> LossResult:
    """Token-weighted mean NLL of `model` over all scored tokens of `examples` (see module doc).

    With a `shard` of several ranks each rank scores its share and the sums are gathered: every rank
    returns the value one process would (to float rounding)."""
    if not examples:
        raise ValueError("heldout_loss needs at least one example.")
    shard = shard or Shard()
    mine = shard.mine(examples)
    parts = shard.run("held-out loss", _nll_sum, model, mine, batch_size, pad_token_id, model=model)
    total_nll, total_tokens = sum(p[0] for p in parts), sum(p[1] for p in parts)
    thinking_nll, thinking_tokens = sum(p[2] for p in parts), sum(p[3] for p in parts)
    by_class = {}
    if thinking_tokens:  # the set has thinking among its scored tokens: the two classes apart
        answer_tokens = total_tokens - thinking_tokens
        by_class = dict(
            thinking_loss=thinking_nll / thinking_tokens,
            thinking_tokens=thinking_tokens,
            answer_loss=(total_nll - thinking_nll) / answer_tokens if answer_tokens else None,
            answer_tokens=answer_tokens,
        )
    return LossResult(loss=total_nll / total_tokens, n_tokens=total_tokens, n_examples=len(examples), **by_class)


def _nll_sum(model: PreTrainedModel, examples: Sequence[Example], batch_size: int, pad_token_id: int) -> tuple:
    """(sum of per-token NLL, scored tokens, the same two over thinking tokens) over `examples`; zeros for none."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens, thinking_nll, thinking_tokens = 0.0, 0, 0.0, 0
    # Length-sorted batches waste less compute on padding; the sum makes order irrelevant.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    try:
        with no_grad_for(model):
            for start in range(0, len(order), batch_size):
                batch = [examples[i] for i in order[start : start + batch_size]]
                width = max(len(e.input_ids) for e in batch)
                ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
                labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                thinking = torch.zeros((len(batch), width), dtype=torch.bool)
                for row, e in enumerate(batch):
                    n = len(e.input_ids)
                    ids[row, :n] = torch.tensor(e.input_ids)
                    labels[row, :n] = torch.tensor(e.labels)
                    mask[row, :n] = 1
                    if e.thinking is not None:
                        thinking[row, :n] = torch.tensor(e.thinking)
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                targets = labels[:, 1:].to(device)
                nll = F.cross_entropy(
                    logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                    targets.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="none",
                )
                scored_thinking = thinking[:, 1:].reshape(-1).to(device) & (targets.reshape(-1) != IGNORE_INDEX)
                total_nll += nll.sum().item()
                total_tokens += int((targets != IGNORE_INDEX).sum())
                thinking_nll += nll[scored_thinking].sum().item()
                thinking_tokens += int(scored_thinking.sum())
    finally:
        model.train(was_training)
    return total_nll, total_tokens, thinking_nll, thinking_tokens
