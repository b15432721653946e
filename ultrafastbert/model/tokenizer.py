"""Tokenizer of the published checkpoints: a ``tokenizer.json`` (WordPiece, normaliser, post-processing templates
single ``"$A <sep>"`` and pair ``"<cls> $A <sep> $B <sep>"``) plus the original special-token names."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerFast

ORIGINAL_SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "cls_token": "<cls>",
    "sep_token": "<sep>",
    "mask_token": "<mask>",
}


class CrammedBertTokenizer(PreTrainedTokenizerFast):
    """``PreTrainedTokenizerFast`` whose special tokens default to the original ones, so that a folder holding
    only ``tokenizer.json`` (no ``tokenizer_config.json``) still knows its ``<mask>``, ``<pad>``, ... tokens.
    The templates live in ``tokenizer.json`` itself. No token types: the models have no segment embedding."""

    model_input_names = ["input_ids", "attention_mask"]

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> CrammedBertTokenizer:
        # Not in ``__init__``: a subclass ``__init__`` makes ``transformers`` rebuild the backend from the bare
        # vocabulary and lose the WordPiece settings of ``tokenizer.json``.
        for name, token in ORIGINAL_SPECIAL_TOKENS.items():
            kwargs.setdefault(name, token)
        return super().from_pretrained(*args, **kwargs)
