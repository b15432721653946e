"""Shared helper for finetuning tests: a tiny pretrained folder (random masked-LM weights and a tokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch

from ultrafastbert.data.tokenizer import train_tokenizer
from ultrafastbert.model.crammedbert.configuration import CrammedBertConfig
from ultrafastbert.model.crammedbert.modeling import CrammedBertForMaskedLM


def tiny_pretrained(folder: Path, words: list[str], vocab_size: int = 60, max_positions: int = 32):
    """Save a 1-layer UltraFastBERT-2x2 masked LM (hidden 32) with a tokenizer trained on ``words`` into
    ``folder``; returns the tokenizer. Seeded, so its weights do not depend on what earlier tests drew."""
    torch.manual_seed(0)
    tokenizer = train_tokenizer([" ".join(words)] * 20, vocab_size=vocab_size, output_dir=folder)
    config = CrammedBertConfig.from_preset(
        "tiny-ufb-2x2",
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        classifier_hidden_size=32,
    )
    CrammedBertForMaskedLM(config).save_pretrained(folder)
    return tokenizer
