"""AdamW as the crammed recipe uses it: no weight decay on biases, norms and other 1-d parameters."""

from __future__ import annotations

import torch
from torch import nn


def build_adamw(
    model: nn.Module,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-12,
    weight_decay: float = 0.01,
) -> torch.optim.AdamW:
    """Two parameter groups: matrices (and embeddings) decay, vectors and scalars (biases, norms, scales) do not."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
