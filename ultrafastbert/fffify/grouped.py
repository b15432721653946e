"""Converting a dense feedforward into a grouped-leaf FFF (``fffify --method grouped``) from its real inputs.

Every neuron of the dense layer is kept, weights copied: the most active ones go to the always-on shared leaf, the
rest are grouped into ``2**depth`` equal leaves by co-activation, and only the routing nodes are fitted.

- **Activation mass.** A neuron's contribution to a token's output is ``|a_i| * ||w_out_i||`` (its activation
  times the norm of its output weights): what dropping it for that token would cost, to first order.
- **Shared leaf**: the neurons of largest mean activation mass over the tokens.
- **Grouping**: balanced spherical k-means of the other neurons' activation-mass profiles over a sample of tokens
  (each neuron a vector of its mass on every token, unit norm): neurons that carry mass on the same tokens share a
  leaf, and every leaf gets exactly ``leaf_width`` neurons (assignment greedy by similarity under the size cap).
  Chosen over a graph split for its simplicity and because its objective (a token's mass concentrated in one
  group) is the one routing needs.
- **Routing nodes**, top down: a node's tokens are those its fitted ancestors send it; each is labelled by which
  half of the node's leaves holds more of its activation mass and weighted by the mass difference (a wrong turn
  for a token whose halves are equal costs nothing), and the node is the weighted logistic regression of that
  label on the token's input (L-BFGS, a small L2 penalty).
- **Leaf output bias**: per leaf, the mean output of the neurons a token routed there leaves out (over the
  training tokens routed there), so that what is dropped is replaced by its mean rather than by zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..fff import GroupedFFF
from ..fff.grouped import MAX_GROUPED_DEPTH

KMEANS_ITERATIONS = 20
PROFILE_TOKENS = 4096  # tokens whose activation mass makes each neuron's profile for the grouping
ROUTER_ITERATIONS = 60
ROUTER_L2 = 1e-4
CONCENTRATION_SHARES = (0.125, 0.25, 0.5)


@dataclass(frozen=True)
class GroupedShape:
    """How a dense feedforward of ``dense_width`` neurons is split: ``2**depth`` leaves of ``leaf_width`` and a
    shared leaf of ``shared_width`` (``shared_width + 2**depth * leaf_width == dense_width``)."""

    dense_width: int
    depth: int
    leaf_width: int
    shared_width: int

    @property
    def neurons_per_token(self) -> int:
        return self.shared_width + self.leaf_width

    @property
    def active_fraction(self) -> float:
        """Share of the dense layer's neurons one token evaluates."""
        return (self.shared_width + self.leaf_width) / self.dense_width

    @property
    def name(self) -> str:
        """E.g. ``g2x384+0`` (depth x leaf width + shared width)."""
        return f"g{self.depth}x{self.leaf_width}+{self.shared_width}"


def grouped_shape(dense_width: int, depth: int, active_fraction: float) -> GroupedShape:
    """The split of ``dense_width`` neurons into ``2**depth`` leaves and a shared leaf such that a token evaluates
    ``active_fraction`` of them (to the nearest neuron; leftovers of the division go to the shared leaf). A one-line
    ``ValueError`` when no such split exists."""
    if not 0 < active_fraction <= 1:
        raise ValueError(f"active fraction must lie in (0, 1], got {active_fraction}")
    if not 0 <= depth <= MAX_GROUPED_DEPTH:
        raise ValueError(f"grouped depth must lie in [0, {MAX_GROUPED_DEPTH}], got {depth}")
    leaves = 2**depth
    if leaves > dense_width:
        raise ValueError(
            f"depth {depth} makes {leaves} leaves, more than the {dense_width} neurons of the dense feedforward"
        )
    if depth == 0:
        if active_fraction != 1:
            raise ValueError(
                f"depth 0 routes nothing: every neuron is active (active fraction 1, got {active_fraction}); "
                "choose depth >= 1"
            )
        return GroupedShape(dense_width, 0, 0, dense_width)
    if active_fraction < 1 / leaves:
        needed = math.ceil(math.log2(1 / active_fraction))
        raise ValueError(
            f"active fraction {active_fraction} is below 1/{leaves}, the share of one of {leaves} leaves holding "
            f"every neuron; choose depth >= {needed} or a larger active fraction"
        )
    shared = round(dense_width * (active_fraction * leaves - 1) / (leaves - 1))
    leaf_width = (dense_width - shared) // leaves
    if leaf_width == 0:
        raise ValueError(
            f"active fraction {active_fraction} at depth {depth} leaves fewer neurons than leaves to route "
            f"({dense_width - shared} for {leaves}); choose a smaller depth or active fraction"
        )
    return GroupedShape(dense_width, depth, leaf_width, dense_width - leaves * leaf_width)


def activation_mass(X: Tensor, first: nn.Linear, activation: nn.Module, second: nn.Linear) -> Tensor:
    """``(T, W)``: each neuron's ``|activation| * ||output weights||`` on each token of ``X`` ``(T, H)``."""
    with torch.no_grad():
        return activation(first(X)).abs_() * second.weight.norm(dim=0)


def concentration(mass: Tensor) -> dict[str, float]:
    """How concentrated the activation mass ``(T, W)`` is per token: the mean share of a token's mass in its top
    12.5%, 25% and 50% of neurons (a uniform spread gives the shares themselves)."""
    ordered = mass.sort(dim=1, descending=True).values.cumsum(1)
    total = ordered[:, -1].clamp_min(1e-12)
    width = mass.shape[1]
    return {
        f"top{100 * share:g}%": float((ordered[:, round(share * width) - 1] / total).mean())
        for share in CONCENTRATION_SHARES
    }


def balanced_kmeans(profiles: Tensor, groups: int, size: int, generator: torch.Generator) -> Tensor:
    """Group labels ``(n,)`` of the rows of ``profiles`` ``(n, T)`` (n = groups * size): spherical k-means whose
    every group holds exactly ``size`` rows (greedy assignment by similarity under the cap)."""
    rows = nn.functional.normalize(profiles, dim=1)
    centroids = rows[torch.randperm(rows.shape[0], generator=generator)[:groups]]
    labels = torch.zeros(rows.shape[0], dtype=torch.long)
    for _ in range(KMEANS_ITERATIONS):
        similarity = rows @ centroids.T  # (n, groups)
        new = _capped_assignment(similarity, size)
        if torch.equal(new, labels):
            break
        labels = new
        centroids = nn.functional.normalize(torch.zeros(groups, rows.shape[1]).index_add_(0, labels, rows), dim=1)
    return labels


def _capped_assignment(similarity: Tensor, size: int) -> Tensor:
    """Each row to a group, most similar pairs first, no group over ``size`` rows."""
    n, groups = similarity.shape
    order = similarity.flatten().argsort(descending=True).tolist()
    labels = [-1] * n
    filled = [0] * groups
    left = n
    for pair in order:
        row, group = divmod(pair, groups)
        if labels[row] < 0 and filled[group] < size:
            labels[row] = group
            filled[group] += 1
            left -= 1
            if not left:
                break
    return torch.tensor(labels)


def fit_router(X: Tensor, right: Tensor, weight: Tensor) -> tuple[Tensor, float]:
    """Weighted logistic regression of ``right`` (bool ``(T,)``) on ``X`` ``(T, H)``: (weight ``(H,)`` and bias as
    one ``(H+1,)`` vector, the weighted share of tokens it sends the right way)."""
    if X.shape[0] == 0 or bool(right.all()) or not bool(right.any()):
        vector = torch.zeros(X.shape[1] + 1)
        vector[-1] = 1.0 if X.shape[0] and bool(right.all()) else -1.0
        return vector, 1.0
    mean, scale = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = (X - mean) / scale
    weight = weight / weight.sum().clamp_min(1e-12)
    target = right.float()
    parameters = torch.zeros(X.shape[1] + 1, requires_grad=True)
    optimizer = torch.optim.LBFGS([parameters], max_iter=ROUTER_ITERATIONS, line_search_fn="strong_wolfe")

    def loss_and_grad() -> Tensor:
        optimizer.zero_grad()
        logits = Z @ parameters[:-1] + parameters[-1]
        loss = (weight * nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")).sum()
        loss = loss + ROUTER_L2 * parameters[:-1].square().sum()
        loss.backward()
        return loss

    optimizer.step(loss_and_grad)
    with torch.no_grad():
        direction = parameters[:-1] / scale
        vector = torch.cat([direction, (parameters[-1] - mean @ direction).reshape(1)])
        correct = ((X @ direction + vector[-1] > 0) == right).float()
        return vector, float((weight * correct).sum())


@dataclass
class GroupedLayerStats:
    """What converting one layer measured (on the training tokens unless named held-out)."""

    concentration: dict[str, float]
    router_accuracy: list[float]  # per routing level, the mass-weighted share of right turns (mean over nodes)
    best_leaf_share: float  # share of tokens routed to the leaf of most mass
    kept_mass: float  # share of a token's activation mass in its shared leaf and routed leaf (mean)
    best_kept_mass: float  # the same had every token reached its best leaf


@torch.no_grad()
def convert_layer(
    layer: GroupedFFF,
    bias: Tensor,
    dense: nn.Module,
    X: Tensor,
    Y: Tensor,
    generator: torch.Generator,
) -> GroupedLayerStats:
    """Fill ``layer`` (and the output ``bias``, in place) from the dense BERT feedforward ``dense`` (a ``BertLayer``:
    ``intermediate.dense``, its activation, ``output.dense``) and its inputs ``X`` / outputs ``Y`` ``(T, H)``."""
    first, second = dense.intermediate.dense, dense.output.dense
    activation = dense.intermediate.intermediate_act_fn
    leaves, leaf_width, shared_width = layer.leaves, layer.leaf_width, layer.shared_width
    mass = activation_mass(X, first, activation, second)  # (T, W)
    stats_concentration = concentration(mass[: PROFILE_TOKENS * 4])
    shared = mass.mean(0).argsort(descending=True)[:shared_width]
    rest = torch.ones(mass.shape[1], dtype=torch.bool)
    rest[shared] = False
    routed = rest.nonzero().squeeze(1)
    sample = torch.randperm(X.shape[0], generator=generator)[: min(PROFILE_TOKENS, X.shape[0])]
    if leaf_width:
        labels = balanced_kmeans(mass[sample][:, routed].T, leaves, leaf_width, generator)
        members = [routed[labels == leaf] for leaf in range(leaves)]
    else:
        members = [routed[:0] for _ in range(leaves)]
    for leaf, neurons in enumerate(members):
        layer.leaf_in_weight[leaf].copy_(first.weight[neurons])
        layer.leaf_in_bias[leaf].copy_(first.bias[neurons])
        layer.leaf_out_weight[leaf].copy_(second.weight[:, neurons].T)
    layer.shared_in_weight.copy_(first.weight[shared])
    layer.shared_in_bias.copy_(first.bias[shared])
    layer.shared_out_weight.copy_(second.weight[:, shared].T)
    layer.leaf_out_bias.zero_()
    bias.copy_(second.bias)

    leaf_mass = torch.stack([mass[:, neurons].sum(1) for neurons in members], 1)  # (T, L)
    reach = torch.zeros(X.shape[0], dtype=torch.long)  # heap node each token is at
    accuracy: list[list[float]] = [[] for _ in range(layer.depth)]
    for level in range(layer.depth):
        span = leaves >> level  # leaves under a node of this level
        for node in range(2**level - 1, 2 ** (level + 1) - 1):
            tokens = (reach == node).nonzero().squeeze(1)
            first_leaf = (node - (2**level - 1)) * span
            left = leaf_mass[tokens, first_leaf : first_leaf + span // 2].sum(1)
            right = leaf_mass[tokens, first_leaf + span // 2 : first_leaf + span].sum(1)
            vector, correct = fit_router(X[tokens], right > left, (right - left).abs())
            layer.router_weight[node].copy_(vector[:-1])
            layer.router_bias[node] = vector[-1]
            if tokens.numel():
                accuracy[level].append(correct)
                went_right = (X[tokens] @ vector[:-1] + vector[-1]) > 0
                reach[tokens] = 2 * node + 1 + went_right.long()
    chosen = layer.route(X)
    for leaf in range(leaves):  # what the leaf leaves out, replaced by its mean over the tokens routed there
        tokens = chosen == leaf
        if tokens.any():
            layer.leaf_out_bias[leaf] = (Y[tokens] - layer(X[tokens]) - bias).mean(0)
    total = mass.sum(1).clamp_min(1e-12)
    shared_mass = mass[:, shared].sum(1)
    return GroupedLayerStats(
        concentration=stats_concentration,
        router_accuracy=[sum(level) / len(level) for level in accuracy if level],
        best_leaf_share=float((chosen == leaf_mass.argmax(1)).float().mean()) if leaves > 1 else 1.0,
        kept_mass=float(((shared_mass + leaf_mass.gather(1, chosen.unsqueeze(1)).squeeze(1)) / total).mean()),
        best_kept_mass=float(((shared_mass + leaf_mass.max(1).values) / total).mean()),
    )
