# Written by save_pretrained from ultrafastbert/fff/onnx.py: edit the package, not this copy.
"""The FFF as an ONNX graph can hold it: what ``FFF.forward`` computes while ``torch.onnx.export`` traces it.

The compiled ops (``ops.fff_infer``, ``ops.fff_forward``) have no ONNX form, so during an ONNX export every FFF
layer (any ``impl`` but ``"reference"``, which is exported as it is) takes ``onnx_fff`` instead, with no call from
the user. For trees of depth up to ``DENSE_MAX_DEPTH`` that is the dense masking reference, whose two matrix
products ONNX Runtime runs faster than any gather form while the trees are small; deeper trees take
``gather_fff``: per tree level, each token gathers its node's ``linear_in`` row, multiplies and sums (``Gather``,
``Mul``, ``ReduceSum``) and routes; the ``linear_out`` rows of all the visited nodes are gathered once at the end
and weighted by their activations.

The crossover and the formulations tried are measured in ``benchmarks/README.md`` (ONNX Runtime section).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.compiler import is_compiling

from .fff_reference import compute_dtype, fff_reference, tree_offsets, visited_nodes_reference

# Deepest tree exported as the dense masking computation (127 nodes a tree); deeper ones are exported as gathers.
DENSE_MAX_DEPTH = 6


def exporting_to_onnx() -> bool:
    """True while ``torch.onnx.export`` traces the model (its ``torch.export`` capture). ``is_compiling`` is asked
    first: 0.1 us in eager, against 2 us for ``torch.onnx.is_in_onnx_export``."""
    return is_compiling() and torch.onnx.is_in_onnx_export()


def onnx_fff(
    x: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    weight_out: Tensor,
    depth: int,
    trees: int,
    routing_offset: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The FFF on ``x`` ``(N, H)`` as an ONNX export computes it (``weight_out`` as ``linear_out`` stores it): the
    output ``(N, H)`` and the visited global node indices ``(N, K, D+1)`` (left out of the graph when unused)."""
    if depth <= DENSE_MAX_DEPTH:
        out = fff_reference(x, weight_in, bias_in, weight_out, depth, trees, routing_offset)
        return out, visited_nodes_reference(x, weight_in, bias_in, depth, trees, routing_offset)
    return gather_fff(x, weight_in, bias_in, weight_out.t(), depth, trees, routing_offset)


def gather_fff(
    x: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    weight_out_t: Tensor,
    depth: int,
    trees: int,
    routing_offset: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Conditional FFF forward on ``x`` ``(N, H)`` from gathers: the output ``(N, H)`` in ``x.dtype`` and the
    visited global node indices ``(N, K, D+1)``. ``weight_out_t`` is ``linear_out.weight.T`` ``(K*n, H)``;
    ``routing_offset`` ``(K*n,)`` or None, as in ``reference``. Computed in ``compute_dtype``; differentiable, but
    meant for export (training uses the ops or ``sparse``)."""
    dtype = compute_dtype(x.dtype)
    tokens = x.shape[0]
    features = x.to(dtype).unsqueeze(1)  # (N, 1, H)
    offsets = tree_offsets(trees, depth, x.device).view(1, trees)
    local = torch.zeros(tokens, trees, dtype=torch.long, device=x.device)  # heap index within each tree
    nodes, activations = [], []
    for _ in range(depth + 1):
        node = local + offsets  # (N, K)
        logits = (F.embedding(node, weight_in).to(dtype) * features).sum(-1) + bias_in[node].to(dtype)  # (N, K)
        route = logits if routing_offset is None else logits + routing_offset[node].to(dtype)
        nodes.append(node)
        activations.append(F.gelu(logits))
        local = 2 * local + 1 + (route > 0).long()
    visited = torch.stack(nodes, dim=2)  # (N, K, D+1)
    weights = torch.stack(activations, dim=2).reshape(tokens, -1, 1)  # (N, K*(D+1), 1)
    rows = F.embedding(visited.reshape(tokens, -1), weight_out_t).to(dtype)  # (N, K*(D+1), H)
    return (weights * rows).sum(1).to(x.dtype), visited
