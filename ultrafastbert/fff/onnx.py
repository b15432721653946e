"""The FFF as an ONNX graph can hold it: what ``FFF.forward`` computes while ``torch.onnx.export`` traces it.

The compiled ops (``ops.fff_infer``, ``ops.fff_forward``) have no ONNX form, so during an ONNX export every FFF
layer (any ``impl`` but ``"reference"``, which is exported as the dense masking it is) takes ``gather_fff``
instead, with no call from the user: per tree level, each token gathers its node's ``linear_in`` row, multiplies
and sums (``Gather``, ``Mul``, ``ReduceSum``) and routes; the ``linear_out`` rows of all the visited nodes are
gathered once at the end and weighted by their activations. Of the formulations tried, it ran fastest in ONNX
Runtime (one thread, width 768, depth 11, 128 tokens, AMD EPYC): 1.2 ms, against 1.5 ms gathering the output rows
per level, 7.3 ms for ``sparse.walk_forward``'s einsums, 11 ms for batched matmuls, 18.6 ms for the dense masking
reference; the compiled kernel takes 0.21 ms in PyTorch. Whole-model figures: ``benchmarks/onnx.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.compiler import is_compiling

from .reference import compute_dtype, tree_offsets


def exporting_to_onnx() -> bool:
    """True while ``torch.onnx.export`` traces the model (its ``torch.export`` capture). ``is_compiling`` is asked
    first: 0.1 us in eager, against 2 us for ``torch.onnx.is_in_onnx_export``."""
    return is_compiling() and torch.onnx.is_in_onnx_export()


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
