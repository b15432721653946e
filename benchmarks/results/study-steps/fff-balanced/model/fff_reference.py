# Written by save_pretrained from ultrafastbert/fff/reference.py: edit the package, not this copy.
"""The oracle: the dense masking computation of the original UltraFastBERT training code.

Every logit of every node is computed, GELU'd, multiplied by a 0/1 mask of the nodes the token visits, and
sent through a dense ``linear_out``. It is slow on purpose (it does the work of a ``K*n``-wide dense FF), and it
is the definition every fast path in this package is tested against.

Reduced-precision inputs (bfloat16, float16) are computed in float32 and the result is rounded once, so that
routing is decided on float32 logits by every implementation alike.

A layer that balances its trees (``FFF(balance_rate > 0)``) passes a per-node ``routing_offset`` ``(K*n,)``: a
token goes right at a node when ``logit + offset > 0`` (added in the compute dtype). The offset only routes; the
neuron's activation is ``GELU(logit)`` as without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def nodes_per_tree(depth: int) -> int:
    """Number of nodes of one balanced binary tree of the given depth (depth 0 is one node)."""
    return 2 ** (depth + 1) - 1


def neurons_per_token(depth: int, trees: int = 1) -> int:
    """Neurons one token evaluates: one per level of each of the ``trees`` trees."""
    return trees * (depth + 1)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic is carried out in: float32 for reduced-precision inputs, else the input's own."""
    return torch.float32 if dtype in REDUCED_PRECISION else dtype


def tree_offsets(trees: int, depth: int, device: torch.device | None = None) -> Tensor:
    """First global node index of every tree, shape ``(K,)``: tree ``k`` owns ``[k*n, (k+1)*n)``."""
    return torch.arange(trees, device=device) * nodes_per_tree(depth)


def routing_logits(logits: Tensor, routing_offset: Tensor | None) -> Tensor:
    """What routing compares with 0: ``logits`` ``(N, K*n)`` plus the per-node ``routing_offset`` ``(K*n,)`` when
    there is one, added in the logits' dtype."""
    if routing_offset is None:
        return logits
    return logits + routing_offset.to(logits.dtype)


def visited_nodes_from_logits(logits: Tensor, depth: int, trees: int) -> Tensor:
    """Walk every tree on precomputed routing logits ``(N, K*n)`` (``routing_logits``); returns global node
    indices ``(N, K, D+1)``.

    A token goes right when its logit is strictly positive, so a logit of exactly 0 (or NaN) goes left.
    """
    tokens = logits.shape[0]
    per_tree = logits.reshape(tokens, trees, nodes_per_tree(depth))
    node = torch.zeros(tokens, trees, 1, dtype=torch.long, device=logits.device)  # local heap index
    path = []
    for _ in range(depth + 1):
        path.append(node)
        went_right = per_tree.gather(2, node) > 0
        node = 2 * node + 1 + went_right.long()
    local = torch.cat(path, dim=2)  # (N, K, D+1)
    return local + tree_offsets(trees, depth, logits.device).view(1, trees, 1)


def fff_reference(
    x: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    weight_out: Tensor,
    depth: int,
    trees: int,
    routing_offset: Tensor | None = None,
) -> Tensor:
    """Dense masking FFF forward. ``x`` is ``(N, H)``; weights as in ``nn.Linear``: ``(K*n, H)``, ``(K*n,)``,
    ``(H, K*n)``; ``routing_offset`` ``(K*n,)`` or None. Differentiable; the routing (the mask) is not, exactly as
    in the original code."""
    dtype = compute_dtype(x.dtype)
    logits = F.linear(x.to(dtype), weight_in.to(dtype), bias_in.to(dtype))  # (N, K*n)
    route = routing_logits(logits.detach(), routing_offset)
    visited = visited_nodes_from_logits(route, depth, trees).flatten(1)  # (N, K*(D+1))
    mask = torch.zeros_like(logits).scatter_(1, visited, 1.0)
    hidden = F.gelu(logits) * mask
    return F.linear(hidden, weight_out.to(dtype)).to(x.dtype)  # (N, H)


def visited_nodes_reference(
    x: Tensor, weight_in: Tensor, bias_in: Tensor, depth: int, trees: int, routing_offset: Tensor | None = None
) -> Tensor:
    """Global indices of the nodes each token of ``x`` ``(N, H)`` visits, ``(N, K, D+1)``, root first."""
    dtype = compute_dtype(x.dtype)
    with torch.no_grad():
        logits = F.linear(x.to(dtype), weight_in.to(dtype), bias_in.to(dtype))
        return visited_nodes_from_logits(routing_logits(logits, routing_offset), depth, trees)
