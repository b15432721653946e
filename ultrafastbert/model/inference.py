"""Small inference helpers behind ``ultrafastbert fill-mask`` and ``ultrafastbert classify``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, PreTrainedTokenizerBase


@dataclass(frozen=True)
class TokenPrediction:
    """One candidate for a masked position."""

    token: str
    token_id: int
    probability: float


@dataclass(frozen=True)
class ClassPrediction:
    """The classifier's answer for one input: the best label and its probability, or the regression value."""

    label: str | None
    score: float


@torch.inference_mode()
def fill_mask(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, text: str, top_k: int = 5
) -> list[list[TokenPrediction]]:
    """The ``top_k`` most probable tokens for every ``<mask>`` in ``text``, in order of the masks; ``model`` is any
    masked LM of :func:`load_masked_lm`."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 in the command line arrive as lone surrogates
        raise ValueError("the text is not valid UTF-8: check the terminal's or the file's encoding") from None
    mask_token = tokenizer.mask_token
    if mask_token is None or mask_token not in text:
        raise ValueError(f"text must contain the mask token {mask_token!r}: {text!r}")
    encoded = tokenizer(text, return_tensors="pt", truncation=True, max_length=model.config.max_position_embeddings)
    input_ids = encoded["input_ids"]  # (1, S)
    logits = model(input_ids, encoded["attention_mask"]).logits[0]  # (S, V)
    positions = (input_ids[0] == tokenizer.mask_token_id).nonzero().flatten()
    if not len(positions):
        raise ValueError(f"the mask token was truncated away (max length {model.config.max_position_embeddings})")
    probabilities = logits[positions].softmax(dim=-1)  # (masks, V)
    best = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
    return [
        [
            TokenPrediction(tokenizer.convert_ids_to_tokens(int(token_id)), int(token_id), float(probability))
            for probability, token_id in zip(row_probabilities, row_ids, strict=True)
        ]
        for row_probabilities, row_ids in zip(best.values, best.indices, strict=True)
    ]


@torch.inference_mode()
def classify(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 32,
) -> list[ClassPrediction]:
    """Classify ``texts``; a text with a tab is a sentence pair (``first<TAB>second``), as in GLUE."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    predictions: list[ClassPrediction] = []
    max_length = model.config.max_position_embeddings
    for start in range(0, len(texts), batch_size):
        pairs = [text.split("\t", 1) for text in texts[start : start + batch_size]]
        rows = [tokenizer(*pair, truncation=True, max_length=max_length) for pair in pairs]
        encoded = tokenizer.pad(rows, return_tensors="pt")
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if "token_type_ids" in encoded and getattr(model.config, "type_vocab_size", 0) > 1:  # BERT's segments
            inputs["token_type_ids"] = encoded["token_type_ids"]
        logits = model(**inputs).logits  # (B, C)
        if model.num_labels == 1:
            predictions += [ClassPrediction(None, float(value)) for value in logits[:, 0]]
            continue
        probabilities = logits.softmax(dim=-1)
        best = probabilities.max(dim=-1)
        predictions += [
            ClassPrediction(model.config.id2label[int(index)], float(probability))
            for probability, index in zip(best.values, best.indices, strict=True)
        ]
    return predictions


# the weights of BERT's (and FFF-BERT's) masked-LM head; crammedBERT's decoder is tied to its embedding
MASKED_LM_HEAD_PREFIX = "cls."


def load_masked_lm(folder: str) -> nn.Module:
    """The masked LM saved in ``folder`` (crammedBERT, FFF-BERT or BERT, by its ``config.json``), in eval mode; a
    ``ValueError`` when the folder holds no trained masked-LM head (a bare encoder or a classifier of BERT's
    layout), which would otherwise predict with random weights."""
    model, info = AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
    missing = [key for key in info["missing_keys"] if key.startswith(MASKED_LM_HEAD_PREFIX)]
    if missing:
        saved = ", ".join(model.config.architectures or []) or "no recorded architecture"
        raise ValueError(f"{folder} holds no trained masked-LM head ({saved}; missing {', '.join(sorted(missing))})")
    return model.eval()


# the weights a sequence classifier adds to the encoder (crammedBERT: pooler., head.; BERT/FFF-BERT: classifier.)
HEAD_PREFIXES = ("pooler.", "head.", "classifier.")


def load_classifier(folder: str) -> nn.Module:
    """The sequence classifier saved in ``folder`` (crammedBERT, FFF-BERT or BERT, by its ``config.json``), in eval
    mode; a ``ValueError`` when the folder holds no trained classification head (a pretraining folder, say), which
    would otherwise classify with random weights."""
    model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    missing = [key for key in info["missing_keys"] if key.startswith(HEAD_PREFIXES)]
    if missing:
        saved = ", ".join(model.config.architectures or []) or "no recorded architecture"
        raise ValueError(
            f"{folder} holds no trained classification head ({saved}; missing {', '.join(sorted(missing))}): "
            "finetune it first, e.g. ultrafastbert finetune --model FOLDER --train-file ... --output-dir OUT"
        )
    return model.eval()
