"""Tokenizer of the published checkpoints: a ``tokenizer.json`` (WordPiece, normaliser, post-processing templates
single ``"$A <sep>"`` and pair ``"<cls> $A <sep> $B <sep>"``) plus the original special-token names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# The original special tokens. A tokenizer trained here gives them ids in this order: <pad> = 0 (the word
# embedding's padding index), <cls> = 1, <sep> = 2, <mask> = 3, <unk> = 4, <s> = 5, </s> = 6.
SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "cls_token": "<cls>",
    "sep_token": "<sep>",
    "mask_token": "<mask>",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
}
TOKENIZER_FILE = "tokenizer.json"


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``folder`` (a checkpoint of either format, or a tokenizer folder trained here):
    ``AutoTokenizer`` over its ``tokenizer.json``; ``FileNotFoundError`` naming the folder when that file is absent."""
    folder = Path(folder)
    if not (folder / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(
            f"{folder} has no {TOKENIZER_FILE}: the tokenizer must be saved beside the model "
            "(tokenizer.save_pretrained(folder))"
        )
    return AutoTokenizer.from_pretrained(str(folder))


class CrammedBertTokenizer(PreTrainedTokenizerFast):
    """``PreTrainedTokenizerFast`` whose special tokens default to the original ones, so that a folder holding
    only ``tokenizer.json`` (no ``tokenizer_config.json``) still knows its ``<mask>``, ``<pad>``, ... tokens.
    The templates live in ``tokenizer.json`` itself. No token types: the models have no segment embedding."""

    model_input_names = ["input_ids", "attention_mask"]

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> CrammedBertTokenizer:
        # Not in ``__init__``: a subclass ``__init__`` makes ``transformers`` rebuild the backend from the bare
        # vocabulary and lose the WordPiece settings of ``tokenizer.json``.
        for name, token in SPECIAL_TOKENS.items():
            kwargs.setdefault(name, token)
        return super().from_pretrained(*args, **kwargs)
