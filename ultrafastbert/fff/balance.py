"""Loss-free routing balance for FFF trees: the bias rule of auxiliary-loss-free mixture-of-experts balancing,
applied to tree nodes.

A layer built with ``balance_rate > 0`` routes a token right at a node when ``logit + offset > 0`` and records,
in its training forwards, how many tokens reached each node. After each optimizer step
``update_routing_offsets`` moves every internal node's offset by ``balance_rate`` against the side that took
more of the tokens that reached it (``offset -= rate * sign(share_right - 1/2)``), then clears the counts. A node
no token reached, or one split exactly in half, keeps its offset. The offsets get no gradient: the neurons still
learn from ``GELU(logit)``, and the offsets only decide which of them a token visits.

The alternative measured against it is the auxiliary load-balancing loss of mixture-of-experts training, per tree
node (``FFF(balance_loss > 0)``, ``layer.routing_balance_loss``): training forwards leave it in the layer, and
``take_routing_loss`` hands it to the training loop, which adds it to the loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .layer import FFF
from .reference import nodes_per_tree


def balancing_layers(model: nn.Module) -> Iterator[FFF]:
    """The FFF layers of ``model`` (itself included) that balance their trees (``balance_rate > 0``)."""
    for module in model.modules():
        if isinstance(module, FFF) and module.routing_offset is not None:
            yield module


@contextlib.contextmanager
def count_visits_at(model: nn.Module, keep: Tensor | None) -> Iterator[None]:
    """Within the block, the FFF layers of ``model`` record the visits of the tokens ``keep`` selects (bool, the
    shape of the inputs' tokens, e.g. ``(B, S)``) and no others; ``None`` counts every token. Masked-language-model
    training passes the positions left uncorrupted: the trees then balance on text as it reads, not on ``[MASK]``
    tokens that inference never sees. Wrap the backward pass too when layers are recomputed there (gradient
    checkpointing), so the recomputed forwards count the same tokens."""
    layers = [module for module in model.modules() if isinstance(module, FFF)]
    for layer in layers:
        layer.visit_tokens = keep
    try:
        yield
    finally:
        for layer in layers:
            layer.visit_tokens = None


def take_routing_visits(
    model: nn.Module, all_reduce: Callable[[Tensor], Tensor] | None = None
) -> list[tuple[FFF, Tensor]]:
    """The visit counts ``(K, n)`` each FFF layer of ``model`` recorded since the last call (balancing layers
    always record in training forwards, others when ``record_visits`` is set), in layer order, clearing them.
    ``all_reduce`` sums them over processes (data-parallel training)."""
    taken = []
    for module in model.modules():
        if isinstance(module, FFF) and module.routing_visits is not None:
            visits = module.routing_visits
            module.routing_visits = None
            if all_reduce is not None:
                visits = all_reduce(visits)
            taken.append((module, visits.reshape(module.trees, nodes_per_tree(module.depth))))
    return taken


def routing_step(visits: Tensor, depth: int) -> Tensor:
    """Direction each internal node's offset moves, ``(K, 2^D - 1)`` in {-1, 0, 1}, from visit counts ``(K, n)``
    (local heap order): -1 where more than half of the tokens that reached the node went right (its right child,
    local ``2i+2``, got more than half of its visits), +1 where fewer did, 0 for an even split or no visits."""
    internal = nodes_per_tree(depth) // 2  # 2^D - 1
    reached = visits[:, :internal]
    went_right = visits[:, 2::2]
    return -torch.sign(2 * went_right - reached)


@torch.no_grad()
def move_routing_offsets(layer: FFF, visits: Tensor) -> None:
    """Move ``layer``'s routing offsets by ``balance_rate`` towards a 50/50 split of ``visits`` ``(K, n)``."""
    step = routing_step(visits, layer.depth)
    offset = layer.routing_offset.view(layer.trees, nodes_per_tree(layer.depth))
    offset[:, : step.shape[1]] += layer.balance_rate * step.to(device=offset.device, dtype=offset.dtype)


def update_routing_offsets(model: nn.Module, all_reduce: Callable[[Tensor], Tensor] | None = None) -> int:
    """Move the routing offsets of every balancing FFF layer of ``model`` towards a 50/50 split of the tokens its
    training forwards sent through each node since the last call, and clear the recorded counts (of every FFF
    layer). Call it after each optimizer step. ``all_reduce`` sums the counts over processes (data-parallel
    training), so that every process moves its offsets alike. Returns the number of layers whose offsets moved
    (layers without recorded visits are left alone)."""
    updated = 0
    for layer, visits in take_routing_visits(model, all_reduce):
        if layer.routing_offset is not None:
            move_routing_offsets(layer, visits)
            updated += 1
    return updated


def take_routing_loss(model: nn.Module) -> Tensor | None:
    """The load-balancing losses the FFF layers of ``model`` left since the last call, summed (None if none did),
    clearing them: add it to the loss before ``backward``."""
    total = None
    for module in model.modules():
        if isinstance(module, FFF) and module.routing_loss is not None:
            total = module.routing_loss if total is None else total + module.routing_loss
            module.routing_loss = None
    return total
