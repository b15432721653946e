"""The FFF kernels as PyTorch operators (``torch.ops.ultrafastbert.*``), following the ``torch.library`` pattern.

The schemas, fake (meta) implementations and autograd formula live here, so tracing, ``torch.compile`` and
fake tensors work whether or not the native library is built; the CPU implementations come from
``csrc/fff_cpu.cpp`` once ``kernels.available()`` has loaded it. Semantics are those of ``sparse.walk_forward``
/ ``sparse.walk_backward`` (the pure-PyTorch contract):

- ``fff_infer(x, weight_in, bias_in, weight_out_t, depth, trees) -> out``: inference, saves nothing.
- ``fff_forward(...) -> (out, nodes, logits)``: training forward; ``nodes`` (int64) and ``logits`` (float32),
  both ``(N, K, D+1)``, are what the backward needs.
- ``fff_backward(grad_out, x, weight_in, weight_out_t, nodes, logits) -> (grad_x, grad_weight_in,
  grad_bias_in, grad_weight_out_t)``.

``x`` is ``(N, H)``; ``weight_out_t`` is ``linear_out.weight.T`` made contiguous, ``(K*n, H)``. float32 and
bfloat16 (computed in float32, rounded once).
"""

from __future__ import annotations

import torch
from torch import Tensor

_LIB = torch.library.Library("ultrafastbert", "DEF")  # schemas here; CPU implementations in csrc/fff_cpu.cpp
_TAGS = (torch.Tag.pt2_compliant_tag,)
_LIB.define(
    "fff_infer(Tensor x, Tensor weight_in, Tensor bias_in, Tensor weight_out_t, int depth, int trees) -> Tensor",
    tags=_TAGS,
)
_LIB.define(
    "fff_forward(Tensor x, Tensor weight_in, Tensor bias_in, Tensor weight_out_t, int depth, int trees)"
    " -> (Tensor, Tensor, Tensor)",
    tags=_TAGS,
)
_LIB.define(
    "fff_backward(Tensor grad_out, Tensor x, Tensor weight_in, Tensor weight_out_t, Tensor nodes, Tensor logits)"
    " -> (Tensor, Tensor, Tensor, Tensor)",
    tags=_TAGS,
)

fff_infer = torch.ops.ultrafastbert.fff_infer.default
fff_forward = torch.ops.ultrafastbert.fff_forward.default
fff_backward = torch.ops.ultrafastbert.fff_backward.default


@torch.library.register_fake("ultrafastbert::fff_infer")
def _fff_infer_fake(x: Tensor, weight_in: Tensor, bias_in: Tensor, weight_out_t: Tensor, depth: int, trees: int):
    return x.new_empty(x.shape)


@torch.library.register_fake("ultrafastbert::fff_forward")
def _fff_forward_fake(x: Tensor, weight_in: Tensor, bias_in: Tensor, weight_out_t: Tensor, depth: int, trees: int):
    path = (x.shape[0], trees, depth + 1)
    return x.new_empty(x.shape), x.new_empty(path, dtype=torch.long), x.new_empty(path, dtype=torch.float32)


@torch.library.register_fake("ultrafastbert::fff_backward")
def _fff_backward_fake(
    grad_out: Tensor, x: Tensor, weight_in: Tensor, weight_out_t: Tensor, nodes: Tensor, logits: Tensor
):
    return (
        x.new_empty(x.shape),
        weight_in.new_empty(weight_in.shape),
        weight_in.new_empty(weight_in.shape[:1]),
        (weight_out_t.new_empty(weight_out_t.shape)),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, weight_in, _bias_in, weight_out_t, _depth, _trees = inputs
    _out, nodes, logits = output
    ctx.save_for_backward(x, weight_in, weight_out_t, nodes, logits)
    ctx.mark_non_differentiable(nodes, logits)


def _backward(ctx, grad_out: Tensor, _grad_nodes, _grad_logits):
    x, weight_in, weight_out_t, nodes, logits = ctx.saved_tensors
    grad_x, grad_weight_in, grad_bias_in, grad_weight_out_t = fff_backward(
        grad_out.contiguous(), x, weight_in, weight_out_t, nodes, logits
    )
    return grad_x, grad_weight_in, grad_bias_in, grad_weight_out_t, None, None


torch.library.register_autograd("ultrafastbert::fff_forward", _backward, setup_context=_setup_context)
