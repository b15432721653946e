"""Causal-LM pretraining batches: the packed sequences of ``mlm.py`` are their own labels.

A decoder predicts every token from those before it, and ``transformers``' causal LMs shift the labels by one
inside their loss, so a batch is the sequences themselves, as inputs and as labels, with nothing masked: each
sequence of ``S`` tokens gives ``S - 1`` predictions. Documents run across sequence borders as for MLM, each
ending with ``<sep>``, which a decoder therefore learns as its end of document (``generate`` stops there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .mlm import IGNORE_INDEX


def causal_rows(
    input_ids: torch.Tensor, generators: Sequence[torch.Generator] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` of a causal-LM batch ``(B, S)``: the ids, twice. ``generators`` (one per row, as the
    training loop hands a masker) go unused: nothing is random."""
    return input_ids, input_ids.clone()


def predicted_tokens(labels: torch.Tensor) -> int:
    """The tokens a causal LM's loss averages over in a batch ``(B, S)`` of labels: every labelled one but each
    row's first, which no earlier token predicts."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
