"""The FFF kernels as PyTorch operators (``torch.ops.ultrafastbert.*``), following the ``torch.library`` pattern.

The schemas, fake implementations and autograd formula live here, so tracing, ``torch.compile``, ``torch.export``
and fake tensors work whether or not the native library is built; the CPU implementations come from ``csrc/``
once ``kernels.available()`` has loaded it. Semantics are those of ``docs/design.md`` §1, implemented in pure
PyTorch by ``sparse.walk_forward`` / ``sparse.walk_backward``; call the ops through the typed wrappers below:

- ``fff_infer(x, weight_in, bias_in, weight_out_t, depth, trees, routing_offset=None) -> out``: inference, saves
  nothing; ``routing_offset`` is a balancing layer's (``balance``), used for routing only.
- ``fff_forward(...) -> (out, nodes, logits)``: training forward, differentiable.
- ``fff_backward(grad_out, x, weight_in, weight_out_t, nodes, logits) -> (grad_x, grad_weight_in,
  grad_bias_in, grad_weight_out_t)``.

On CUDA the implementations are the Triton kernels of ``triton_kernels``, registered by ``triton_ops`` when the
package is imported, where torch has CUDA and Triton is installed; Triton itself is imported on the first CUDA
call.

Every input check the kernel can make without reading values is also made by the fake implementations
(``check_forward_inputs``, ``check_backward_inputs``), with the kernel's messages, so a wrong shape or dtype fails
while ``torch.compile`` or ``torch.export`` traces, not when the compiled graph first runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .reference import nodes_per_tree

KERNEL_DTYPES = (torch.float32, torch.bfloat16)
MAX_DEPTH = 24  # the kernel's kMaxDepth
# Device types ("cuda") whose FFF ops run the Triton kernels: filled by triton_ops.register_triton_kernels. The layer
# reads it to choose impl="triton"; a saved model folder's stand-in for this module copies it, empty.
TRITON_DEVICES: set[str] = set()

_LIB = torch.library.Library("ultrafastbert", "DEF")  # schemas here; CPU implementations in csrc/
_TAGS = (torch.Tag.pt2_compliant_tag,)
# routing_offset: a balancing layer's (K*n,) float32 offsets, added to the logits for routing only (optional, so
# calls without it are those of the published layer)
_LIB.define(
    "fff_infer(Tensor x, Tensor weight_in, Tensor bias_in, Tensor weight_out_t, int depth, int trees,"
    " Tensor? routing_offset=None) -> Tensor",
    tags=_TAGS,
)
_LIB.define(
    "fff_forward(Tensor x, Tensor weight_in, Tensor bias_in, Tensor weight_out_t, int depth, int trees,"
    " Tensor? routing_offset=None) -> (Tensor, Tensor, Tensor)",
    tags=_TAGS,
)
_LIB.define(
    "fff_backward(Tensor grad_out, Tensor x, Tensor weight_in, Tensor weight_out_t, Tensor nodes, Tensor logits)"
    " -> (Tensor, Tensor, Tensor, Tensor)",
    tags=_TAGS,
)

_infer_op = torch.ops.ultrafastbert.fff_infer.default
_forward_op = torch.ops.ultrafastbert.fff_forward.default
_backward_op = torch.ops.ultrafastbert.fff_backward.default


# ---- the typed wrappers ---------------------------------------------------------------------------------------


def fff_infer(
    x: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    weight_out_t: Tensor,
    depth: int,
    trees: int,
    routing_offset: Tensor | None = None,
) -> Tensor:
    """FFF inference: ``x`` ``(N, H)`` -> output ``(N, H)`` in ``x.dtype``.

    ``trees`` trees of depth ``depth``, ``n = 2**(depth+1) - 1`` nodes each: ``weight_in`` ``(K*n, H)`` and
    ``bias_in`` ``(K*n,)`` are ``linear_in``'s, ``weight_out_t`` ``(K*n, H)`` is ``linear_out.weight.T``. float32 or
    bfloat16 throughout (computed in float32, rounded once). ``routing_offset`` ``(K*n,)`` float32 (a balancing
    layer's): a token goes right when ``logit + offset > 0``; the activation stays ``GELU(logit)``. Saves nothing
    and has no autograd: train with ``fff_forward``.
    """
    return _infer_op(x, weight_in, bias_in, weight_out_t, depth, trees, routing_offset)


def fff_forward(
    x: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    weight_out_t: Tensor,
    depth: int,
    trees: int,
    routing_offset: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """FFF training forward, inputs as ``fff_infer``'s: ``(out, nodes, logits)``.

    ``out`` ``(N, H)`` is ``fff_infer``'s output; ``nodes`` (int64) and ``logits`` (float32), both ``(N, K, D+1)``,
    are the global node index each token visits per tree and level (root first) and its pre-GELU logit: what the
    backward needs (the logits without the routing offset). Differentiable in ``x`` and the three weights (through
    ``fff_backward``); the offset gets no gradient.
    """
    return _forward_op(x, weight_in, bias_in, weight_out_t, depth, trees, routing_offset)


def fff_backward(
    grad_out: Tensor, x: Tensor, weight_in: Tensor, weight_out_t: Tensor, nodes: Tensor, logits: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``fff_forward``: ``(grad_x, grad_weight_in, grad_bias_in, grad_weight_out_t)``.

    ``grad_out`` is ``(N, H)`` like ``x``; ``nodes`` and ``logits`` are ``fff_forward``'s (depth and tree count
    are read from their shape). Rows no token visited get zero gradients; a node index out of range is an error.
    On every device ``grad_weight_out_t`` is stored transposed (strides ``(1, K*n)``): its ``.T`` is a contiguous
    ``linear_out.weight`` gradient, which autograd takes without copying.
    """
    return _backward_op(grad_out, x, weight_in, weight_out_t, nodes, logits)


# ---- input checks (the kernel's, on shapes and dtypes only) --------------------------------------------------
#
# Each kernel TORCH_CHECK becomes one or more torch._check calls with the same condition order and the same
# message, one call per size comparison: a symbolic size (a dynamic token count) is then recorded as a
# constraint instead of being guarded on. Devices are not checked: the dispatcher turns away devices without a
# registered kernel (CPU: csrc/; CUDA: the Triton kernels) before any kernel runs. The values of `nodes` (in
# range) are checked by the kernels alone.


def _dtype_name(t: Tensor) -> str:
    """``t``'s dtype as c10 prints a ``ScalarType`` (``Float``, ``Double``, ``BFloat16``), as the kernel's messages
    do: its legacy type name (``torch.DoubleTensor``, which c10 builds from that name) without the rest."""
    return t.type().rsplit(".", 1)[-1].removesuffix("Tensor")


def _check_same_shape(a: Tensor, b: Tensor, message: Callable[[], str]) -> None:
    torch._check(a.dim() == b.dim(), message)
    for a_size, b_size in zip(a.shape, b.shape, strict=True):
        torch._check(a_size == b_size, message)


def _check_layer_inputs(x: Tensor, weight_in: Tensor, weight_out_t: Tensor, depth: int, trees: int) -> None:
    """The kernel's ``check_shapes``: ``x`` ``(N, H)``; ``weight_in`` and ``weight_out_t`` ``(K*n, H)`` for
    ``trees`` trees of ``depth``; all float32 or all bfloat16."""
    torch._check(x.dim() == 2, lambda: f"fff: x must be (N, H), got {list(x.shape)}")

    def bad_depth() -> str:
        return f"fff: need 0 <= depth <= {MAX_DEPTH} and trees >= 1"

    torch._check(depth >= 0, bad_depth)
    torch._check(depth <= MAX_DEPTH, bad_depth)
    torch._check(trees >= 1, bad_depth)
    rows = trees * nodes_per_tree(depth)

    def bad_weight_in() -> str:
        return (
            f"fff: weight_in must be (trees * (2**(depth+1) - 1), H) = ({rows}, {x.size(1)}), "
            f"got {list(weight_in.shape)}"
        )

    torch._check(weight_in.dim() == 2, bad_weight_in)
    torch._check(weight_in.size(0) == rows, bad_weight_in)
    torch._check(weight_in.size(1) == x.size(1), bad_weight_in)
    _check_same_shape(weight_out_t, weight_in, lambda: "fff: weight_out_t must be shaped like weight_in")
    torch._check(
        x.dtype in KERNEL_DTYPES, lambda: f"fff: the CPU kernel supports float32 and bfloat16, got {_dtype_name(x)}"
    )
    torch._check(
        weight_in.dtype == x.dtype and weight_out_t.dtype == x.dtype,
        lambda: "fff: x and the weights must share a dtype",
    )


def check_forward_inputs(
    x: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    weight_out_t: Tensor,
    depth: int,
    trees: int,
    routing_offset: Tensor | None = None,
) -> None:
    """Raise, with the kernel's message, where ``fff_infer`` / ``fff_forward`` would reject these inputs."""
    _check_layer_inputs(x, weight_in, weight_out_t, depth, trees)

    def bad_bias() -> str:
        return f"fff: bias_in must be ({weight_in.size(0)},) of the weights' dtype"

    torch._check(bias_in.dim() == 1, bad_bias)
    torch._check(bias_in.size(0) == weight_in.size(0), bad_bias)
    torch._check(bias_in.dtype == x.dtype, bad_bias)
    if routing_offset is not None:

        def bad_offset() -> str:
            return f"fff: routing_offset must be ({weight_in.size(0)},) float32"

        torch._check(routing_offset.dim() == 1, bad_offset)
        torch._check(routing_offset.size(0) == weight_in.size(0), bad_offset)
        torch._check(routing_offset.dtype == torch.float32, bad_offset)


def check_backward_inputs(
    grad_out: Tensor, x: Tensor, weight_in: Tensor, weight_out_t: Tensor, nodes: Tensor, logits: Tensor
) -> None:
    """Raise, with the kernel's message, where ``fff_backward`` would reject these inputs (short of reading
    ``nodes``' values)."""
    torch._check(
        nodes.dim() == 3 and nodes.dtype == torch.int64, lambda: "fff_backward: nodes must be (N, K, D+1) int64"
    )

    def bad_logits() -> str:
        return "fff_backward: logits must be float32 shaped like nodes"

    _check_same_shape(logits, nodes, bad_logits)
    torch._check(logits.dtype == torch.float32, bad_logits)
    _check_layer_inputs(x, weight_in, weight_out_t, nodes.size(2) - 1, nodes.size(1))

    def disagree() -> str:
        return "fff_backward: grad_out, x, nodes must agree on (N, H) and dtype"

    torch._check(nodes.size(0) == x.size(0), disagree)
    _check_same_shape(grad_out, x, disagree)
    torch._check(grad_out.dtype == x.dtype, disagree)


# ---- fake implementations and autograd -----------------------------------------------------------------------


@torch.library.register_fake("ultrafastbert::fff_infer")
def _fff_infer_fake(
    x: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    weight_out_t: Tensor,
    depth: int,
    trees: int,
    routing_offset: Tensor | None = None,
) -> Tensor:
    check_forward_inputs(x, weight_in, bias_in, weight_out_t, depth, trees, routing_offset)
    return x.new_empty(x.shape)


@torch.library.register_fake("ultrafastbert::fff_forward")
def _fff_forward_fake(
    x: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    weight_out_t: Tensor,
    depth: int,
    trees: int,
    routing_offset: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    check_forward_inputs(x, weight_in, bias_in, weight_out_t, depth, trees, routing_offset)
    path = (x.shape[0], trees, depth + 1)
    return x.new_empty(x.shape), x.new_empty(path, dtype=torch.int64), x.new_empty(path, dtype=torch.float32)


@torch.library.register_fake("ultrafastbert::fff_backward")
def _fff_backward_fake(
    grad_out: Tensor, x: Tensor, weight_in: Tensor, weight_out_t: Tensor, nodes: Tensor, logits: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    check_backward_inputs(grad_out, x, weight_in, weight_out_t, nodes, logits)
    grad_weight_out_t = weight_out_t.new_empty(weight_out_t.shape[::-1]).t()  # the layout of fff_backward's doc
    return (
        x.new_empty(x.shape),
        weight_in.new_empty(weight_in.shape),
        weight_in.new_empty(weight_in.shape[:1]),
        grad_weight_out_t,
    )


def _setup_context(ctx, inputs, output) -> None:
    x, weight_in, _bias_in, weight_out_t, _depth, _trees, _routing_offset = inputs
    _out, nodes, logits = output
    ctx.save_for_backward(x, weight_in, weight_out_t, nodes, logits)
    ctx.mark_non_differentiable(nodes, logits)


def _backward(ctx, grad_out: Tensor, _grad_nodes, _grad_logits):
    x, weight_in, weight_out_t, nodes, logits = ctx.saved_tensors
    grad_x, grad_weight_in, grad_bias_in, grad_weight_out_t = fff_backward(
        grad_out.contiguous(), x, weight_in, weight_out_t, nodes, logits
    )
    return grad_x, grad_weight_in, grad_bias_in, grad_weight_out_t, None, None, None


torch.library.register_autograd("ultrafastbert::fff_forward", _backward, setup_context=_setup_context)
