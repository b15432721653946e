"""Initialising an FFF from a dense feedforward's real inputs ``X`` ``(T, H)`` and outputs ``Y`` ``(T, H)``.

- ``random``: the FFF's own random initialisation; the output bias starts at the mean of ``Y``. Uses no data
  beyond that mean: the baseline the data-driven methods must beat.
- ``pca`` and ``split``: each tree is grown top-down on the tokens that reach each node. A node's neuron is the
  direction ``u`` of its tokens' inputs chosen below, centred on the tokens' median projection and scaled to unit
  spread, ``logit = (u.x - median) / spread``: the node sends half of its tokens to each child, and its GELU
  neuron responds along the same direction. ``pca`` takes the inputs' principal direction (splits the input
  distribution where it is widest); ``split`` takes the input direction most covariant with the part of the
  dense output not yet explained (the top singular pair of ``X_c^T R``), so routing separates tokens whose
  outputs differ. Trees are grown one after another, each on the residual the earlier ones leave. After each
  tree, the output weights of all nodes so far and the output bias are the ridge least-squares fit of ``Y`` on the
  nodes' GELU activations along each token's path: for a fixed routing, the best output layer there is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..fff import FFF, nodes_per_tree, visited_nodes_reference

POWER_ITERATIONS = 24


@torch.no_grad()
def initialise(
    fff: FFF,
    bias: Tensor,
    X: Tensor,
    Y: Tensor,
    method: str,
    ridge: float,
    init_tokens: int,
    generator: torch.Generator,
) -> None:
    """Set ``fff``'s weights and the output ``bias`` (in place) by ``method`` from inputs ``X`` and targets ``Y``
    (float32, ``(T, H)``); routing is chosen on at most ``init_tokens`` of the tokens, the output fit uses all."""
    if method == "random":
        fff.reset_parameters()
        bias.copy_(Y.mean(0))
        return
    if method not in ("pca", "split"):
        raise ValueError(f"unknown initialisation {method!r}")
    depth, trees, n = fff.depth, fff.trees, nodes_per_tree(fff.depth)
    choose = torch.randperm(X.shape[0], generator=generator)[: min(init_tokens, X.shape[0])]
    Xs, Ys = X[choose], Y[choose]
    weight_in = torch.zeros(trees * n, X.shape[1])
    bias_in = torch.zeros(trees * n)
    residual = Ys - Ys.mean(0)
    for tree in range(trees):
        _grow_tree(Xs, residual, weight_in, bias_in, tree * n, depth, method, generator)
        grown = (tree + 1) * n
        weight_out, out_bias = _fit_outputs(Xs, Ys, weight_in[:grown], bias_in[:grown], depth, tree + 1, ridge)
        residual = Ys - _predict(Xs, weight_in[:grown], bias_in[:grown], weight_out, out_bias, depth, tree + 1)
    fff.linear_in.weight.copy_(weight_in)
    fff.linear_in.bias.copy_(bias_in)
    weight_out, out_bias = _fit_outputs(X, Y, weight_in, bias_in, depth, trees, ridge)
    fff.linear_out.weight.copy_(weight_out)
    bias.copy_(out_bias)


def _grow_tree(
    X: Tensor,
    R: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    first: int,
    depth: int,
    method: str,
    generator: torch.Generator,
) -> None:
    """Fill rows ``[first, first + n)`` of ``weight_in``/``bias_in`` with one tree grown top-down (heap order)."""
    members = {0: torch.arange(X.shape[0])}
    inner = 2**depth - 1  # heap indices below this route; the rest are leaves
    for node in range(nodes_per_tree(depth)):
        tokens = members.pop(node)
        direction, centre, spread = _node_direction(X[tokens], R[tokens], method, generator)
        weight_in[first + node] = direction / spread
        bias_in[first + node] = -centre / spread
        if node < inner:
            right = (X[tokens] @ weight_in[first + node] + bias_in[first + node]) > 0
            members[2 * node + 1], members[2 * node + 2] = tokens[~right], tokens[right]


def _node_direction(X: Tensor, R: Tensor, method: str, generator: torch.Generator) -> tuple[Tensor, float, float]:
    """(unit direction, median projection, spread of projections) for the tokens ``X`` reaching a node."""
    H = X.shape[1]
    if X.shape[0] < 2:  # too few tokens to estimate anything: a random direction through the token (if any)
        direction = F.normalize(torch.randn(H, generator=generator), dim=0)
        centre = float(X[0] @ direction) if X.shape[0] else 0.0
        return direction, centre, 1.0
    centred = X - X.mean(0)
    if method == "pca":
        matrix = centred.T @ centred  # (H, H), symmetric
        left = matrix
    else:
        cross = centred.T @ (R - R.mean(0))  # (H, H): inputs x unexplained outputs
        matrix = cross @ cross.T  # its top eigenvector is the top left singular vector of cross
        left = matrix
    vector = F.normalize(torch.randn(H, generator=generator), dim=0)
    for _ in range(POWER_ITERATIONS):
        vector = F.normalize(left @ vector, dim=0)
    if not torch.isfinite(vector).all() or float(vector.norm()) == 0.0:
        vector = F.normalize(torch.randn(H, generator=generator), dim=0)
    projection = X @ vector
    centre = float(projection.median())
    spread = float(projection.std())
    return vector, centre, spread if spread > 1e-6 else 1.0


def _activations(X: Tensor, weight_in: Tensor, bias_in: Tensor, depth: int, trees: int) -> Tensor:
    """``(T, K*n + 1)``: each node's GELU activation where the token's path visits it (0 elsewhere), and a 1."""
    logits = F.linear(X, weight_in, bias_in)
    visited = visited_nodes_reference(X, weight_in, bias_in, depth, trees).flatten(1)
    design = torch.zeros(X.shape[0], weight_in.shape[0] + 1)
    design.scatter_(1, visited, F.gelu(logits.gather(1, visited)))
    design[:, -1] = 1.0
    return design


def _fit_outputs(
    X: Tensor, Y: Tensor, weight_in: Tensor, bias_in: Tensor, depth: int, trees: int, ridge: float, chunk: int = 8192
) -> tuple[Tensor, Tensor]:
    """Ridge least squares of ``Y`` on the path activations: (``linear_out.weight`` ``(H, K*n)``, bias ``(H,)``).
    The ridge is ``ridge`` times the mean diagonal of the normal matrix (the bias column unpenalised)."""
    columns = weight_in.shape[0] + 1
    gram = torch.zeros(columns, columns, dtype=torch.float64)
    cross = torch.zeros(columns, Y.shape[1], dtype=torch.float64)
    for start in range(0, X.shape[0], chunk):
        design = _activations(X[start : start + chunk], weight_in, bias_in, depth, trees).double()
        gram += design.T @ design
        cross += design.T @ Y[start : start + chunk].double()
    penalty = ridge * float(gram.diagonal()[:-1].mean().clamp_min(1e-12))
    gram[:-1, :-1] += penalty * torch.eye(columns - 1, dtype=torch.float64)
    solution = torch.linalg.solve(gram, cross).float()  # (K*n + 1, H)
    return solution[:-1].T.contiguous(), solution[-1].clone()


def _predict(
    X: Tensor, weight_in: Tensor, bias_in: Tensor, weight_out: Tensor, bias: Tensor, depth: int, trees: int
) -> Tensor:
    return _activations(X, weight_in, bias_in, depth, trees)[:, :-1] @ weight_out.T + bias
