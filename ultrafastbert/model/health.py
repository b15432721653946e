"""Tree health of a model's FFF layers: how evenly tokens spread over each tree's nodes and leaves.

Hard routing can kill paths: a node no token reaches gets no gradient and stays as initialised, and a tree whose
tokens all take one side is a narrower network than its size says. Measured on real text, per layer:

- ``unvisited_leaf_fraction``: leaves no token reached;
- ``unvisited_node_fraction_per_level``: the same for each level, root (level 0) first;
- ``leaf_entropy_ratio``: entropy of the leaf-usage distribution over ``log(number of leaves)`` (1 = uniform,
  0 = every token in one leaf), averaged over the trees;
- ``root_left_share``: share of tokens going left at the root (0.5 = balanced), averaged over the trees.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..fff import FFF, nodes_per_tree


@dataclass
class TreeHealth:
    """Routing statistics of one FFF layer (``trees`` trees of depth ``depth``) over ``tokens`` tokens."""

    trees: int
    depth: int
    tokens: int
    unvisited_leaf_fraction: float
    unvisited_node_fraction_per_level: list[float]
    leaf_entropy_ratio: float
    root_left_share: float | None  # None at depth 0: there is no left or right


def node_visits(nodes: Tensor, depth: int, trees: int) -> Tensor:
    """Visit counts ``(K, n)`` per tree and local heap index, from global visited nodes ``(N, K, D+1)``: tree ``k``
    owns global indices ``[k*n, (k+1)*n)``, so counting global indices and folding them by tree is enough."""
    per_tree = nodes_per_tree(depth)
    return torch.bincount(nodes.flatten(), minlength=trees * per_tree).reshape(trees, per_tree).cpu()


def tree_health(visits: Tensor, depth: int) -> TreeHealth:
    """Statistics from visit counts ``(K, n)`` (``node_visits``); every token visits each tree's root once."""
    trees = visits.shape[0]
    tokens = int(visits[0, 0])
    if tokens == 0:
        raise ValueError("tree health needs at least one token")
    unvisited_per_level = []
    for level in range(depth + 1):
        level_visits = visits[:, 2**level - 1 : 2 ** (level + 1) - 1]
        unvisited_per_level.append(float((level_visits == 0).float().mean()))
    leaves = visits[:, 2**depth - 1 :].double()  # (K, 2^D)
    if depth == 0:
        entropy_ratio = 1.0
    else:
        share = leaves / leaves.sum(dim=1, keepdim=True)
        entropy = -(share * torch.log(share.clamp_min(1e-300))).sum(dim=1)  # 0 log 0 counts as 0
        entropy_ratio = float((entropy / math.log(2**depth)).mean())
    root_left = None if depth == 0 else float((visits[:, 1].double() / tokens).mean())
    return TreeHealth(
        trees=trees,
        depth=depth,
        tokens=tokens,
        unvisited_leaf_fraction=unvisited_per_level[-1],
        unvisited_node_fraction_per_level=unvisited_per_level,
        leaf_entropy_ratio=entropy_ratio,
        root_left_share=root_left,
    )


def health_record(layers: list[TreeHealth]) -> dict[str, list[float | None]]:
    """Per-layer figures of ``layers`` for a metrics record: unvisited leaves, leaf entropy ratio, root left
    share (rounded to 4 places)."""
    return {
        "unvisited_leaves": [round(h.unvisited_leaf_fraction, 4) for h in layers],
        "leaf_entropy": [round(h.leaf_entropy_ratio, 4) for h in layers],
        "root_left": [None if h.root_left_share is None else round(h.root_left_share, 4) for h in layers],
    }


def health_postfix(layers: list[TreeHealth]) -> str:
    """A progress-bar summary of the worst layer: the largest unvisited-leaf fraction and the root left share
    furthest from 1/2, e.g. ``dead 64% root 2%``."""
    dead = max(h.unvisited_leaf_fraction for h in layers)
    roots = [h.root_left_share for h in layers if h.root_left_share is not None]
    root = f" root {max(roots, key=lambda share: abs(share - 0.5)):.0%}" if roots else ""
    return f"dead {dead:.0%}{root}"


@torch.no_grad()
def model_tree_health(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor | None]]) -> list[TreeHealth]:
    """``TreeHealth`` of every FFF layer of ``model`` (of any family, in layer order) over the non-padding tokens
    of ``batches`` of ``(input_ids (B, S), attention_mask (B, S) or None)``. Empty for a model without FFF layers."""
    layers = [module for module in model.modules() if isinstance(module, FFF)]
    if not layers:
        return []
    visits = [torch.zeros(layer.trees, nodes_per_tree(layer.depth), dtype=torch.long) for layer in layers]
    keep: list[Tensor | None] = [None]

    def recorder(index: int):
        def hook(layer: FFF, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
            x = inputs[0].reshape(-1, layer.width)
            if keep[0] is not None:
                x = x[keep[0]]
            visits[index] += node_visits(layer.visited_nodes(x), layer.depth, layer.trees)

        return hook

    handles = [layer.register_forward_hook(recorder(index)) for index, layer in enumerate(layers)]
    was_training = model.training
    model.eval()
    try:
        for input_ids, attention_mask in batches:
            keep[0] = None if attention_mask is None else attention_mask.reshape(-1).bool()
            model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [tree_health(counts, layer.depth) for counts, layer in zip(visits, layers, strict=True)]
