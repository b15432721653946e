# Written by save_pretrained from ultrafastbert/fff/sparse.py: edit the package, not this copy.
"""Pure-PyTorch conditional FFF: only the visited nodes are touched, forward and backward.

Per tree level every token gathers the one ``linear_in`` row and the one ``linear_out`` column (stored as a row
of ``weight_out_t = linear_out.weight.T``) of the node it sits on, so the work is ``K*(D+1)`` neurons per token
instead of ``K*n``. The backward pass scatter-adds into the visited rows only; because the original routing is
hard (not differentiated), these are exactly the gradients of the dense masking reference.

These functions are the portable fallback and the contract the native kernels implement:
``walk_forward`` -> ``(out, nodes, logits)`` and ``walk_backward`` -> the four gradients. A balancing layer's
``routing_offset`` (``reference``) changes only which child a token goes to; ``logits`` stay the neurons' own, so
the backward pass needs no offset.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .fff_reference import compute_dtype, tree_offsets

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_derivative(z: Tensor) -> Tensor:
    """d/dz of the exact (erf) GELU: Phi(z) + z * phi(z)."""
    return 0.5 * (1.0 + torch.erf(z * _INV_SQRT_2)) + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI


def walk_forward(
    x: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    weight_out_t: Tensor,
    depth: int,
    trees: int,
    routing_offset: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Conditional forward for ``x`` ``(N, H)``; ``weight_out_t`` is ``(K*n, H)``; ``routing_offset`` ``(K*n,)``
    or None (a token goes right when ``logit + offset > 0``).

    Returns the output ``(N, H)`` in ``x.dtype``, the visited global node indices ``(N, K, D+1)`` (int64) and
    their logits ``(N, K, D+1)`` in the compute dtype (what the backward pass needs).
    """
    dtype = compute_dtype(x.dtype)
    tokens, width = x.shape
    xc = x.to(dtype)
    offsets = tree_offsets(trees, depth, x.device).view(1, trees)
    local = torch.zeros(tokens, trees, dtype=torch.long, device=x.device)
    out = torch.zeros(tokens, width, dtype=dtype, device=x.device)
    nodes, logits = [], []
    for _ in range(depth + 1):
        node = local + offsets  # (N, K)
        z = torch.einsum("nkh,nh->nk", weight_in[node].to(dtype), xc) + bias_in[node].to(dtype)
        out += torch.einsum("nk,nkh->nh", F.gelu(z), weight_out_t[node].to(dtype))
        nodes.append(node)
        logits.append(z)
        route = z if routing_offset is None else z + routing_offset[node].to(dtype)
        local = 2 * local + 1 + (route > 0).long()
    return out.to(x.dtype), torch.stack(nodes, dim=2), torch.stack(logits, dim=2)


def walk_backward(
    grad_out: Tensor, x: Tensor, weight_in: Tensor, weight_out_t: Tensor, nodes: Tensor, logits: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``walk_forward`` for ``x``, ``weight_in``, ``bias_in`` and ``weight_out_t``.

    Weight gradients are dense tensors of the parameters' shapes with non-zero rows only at visited nodes.
    """
    dtype = logits.dtype
    tokens, width = x.shape
    g = grad_out.to(dtype)
    xc = x.to(dtype)
    grad_x = torch.zeros(tokens, width, dtype=dtype, device=x.device)
    grad_weight_in = torch.zeros(weight_in.shape, dtype=dtype, device=x.device)
    grad_bias_in = torch.zeros(weight_in.shape[0], dtype=dtype, device=x.device)
    grad_weight_out_t = torch.zeros(weight_out_t.shape, dtype=dtype, device=x.device)
    for level in range(nodes.shape[2]):
        node, z = nodes[:, :, level], logits[:, :, level]  # (N, K)
        flat = node.reshape(-1)
        d_activation = torch.einsum("nh,nkh->nk", g, weight_out_t[node].to(dtype))
        dz = d_activation * gelu_derivative(z)
        grad_x += torch.einsum("nk,nkh->nh", dz, weight_in[node].to(dtype))
        grad_weight_in.index_add_(0, flat, (dz.unsqueeze(-1) * xc.unsqueeze(1)).reshape(-1, width))
        grad_bias_in.index_add_(0, flat, dz.reshape(-1))
        grad_weight_out_t.index_add_(0, flat, (F.gelu(z).unsqueeze(-1) * g.unsqueeze(1)).reshape(-1, width))
    return (
        grad_x.to(x.dtype),
        grad_weight_in.to(weight_in.dtype),
        grad_bias_in.to(weight_in.dtype),
        grad_weight_out_t.to(weight_out_t.dtype),
    )


class SparseFFFFunction(torch.autograd.Function):
    """Autograd wrapper of ``walk_forward``/``walk_backward`` taking ``linear_out.weight`` as it is stored."""

    @staticmethod
    def forward(ctx, x, weight_in, bias_in, weight_out, depth: int, trees: int, routing_offset=None):  # type: ignore[override]
        weight_out_t = weight_out.t().contiguous()
        out, nodes, logits = walk_forward(x, weight_in, bias_in, weight_out_t, depth, trees, routing_offset)
        ctx.save_for_backward(x, weight_in, weight_out_t, nodes, logits)
        ctx.mark_non_differentiable(nodes)
        return out, nodes

    @staticmethod
    def backward(ctx, grad_out, _grad_nodes):  # type: ignore[override]
        x, weight_in, weight_out_t, nodes, logits = ctx.saved_tensors
        grad_x, grad_w_in, grad_b_in, grad_w_out_t = walk_backward(
            grad_out.contiguous(), x, weight_in, weight_out_t, nodes, logits
        )
        return grad_x, grad_w_in, grad_b_in, grad_w_out_t.t(), None, None, None


def sparse_fff(
    x: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    weight_out: Tensor,
    depth: int,
    trees: int,
    routing_offset: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Differentiable conditional FFF on ``x`` ``(N, H)``: returns ``(out, visited nodes)``. ``routing_offset``
    only routes and gets no gradient."""
    return SparseFFFFunction.apply(x, weight_in, bias_in, weight_out, depth, trees, routing_offset)
