"""A character-level tokenizer built in code: no download, exact round trips."""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
# Letters are in the vocabulary even though the task never uses most of them:
# `generate(stop_strings=...)` needs them to build its stop-string tables.
CHARACTERS = string.digits + string.ascii_letters + " +-*/=?:;#.,()\n"

# The template renders a conversation as the same plain text the prompt/completion format uses,
# so every SFT data format of the toy task trains the same model behaviour.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Q: ' + message['content'] + ' A:' }}"
    "{% elif message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<eos>' }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Return the toy world's character tokenizer (pad, eos, bos and a chat template set)."""
    vocab = {token: i for i, token in enumerate([PAD, EOS, BOS, *CHARACTERS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([PAD, EOS, BOS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, bos_token=BOS, padding_side="left"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
