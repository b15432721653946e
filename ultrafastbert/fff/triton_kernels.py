"""Triton kernels of the three FFF ops (``ops.fff_infer``, ``ops.fff_forward``, ``ops.fff_backward``) for GPUs.

``ops`` registers them as the CUDA implementations of the ops where torch has CUDA and Triton is installed, and
imports this module (and with it Triton) on the first CUDA call. The semantics are those of the CPU kernel and of
``sparse.walk_forward`` / ``walk_backward`` (``docs/design.md`` §1): float32 or bfloat16 in, float32 arithmetic,
routing on float32 logits plus a balancing layer's float32 ``routing_offset`` when one is given (strict ``>``: 0 and
NaN go left), exact erf GELU. ``docs/gpu.md`` says how they are
tested without a GPU (Triton's interpreter, ``TRITON_INTERPRET=1``) and how to time them on one.

Layout: one program per block of ``BLOCK_TOKENS`` tokens and per tree (grid ``(ceil(N / BLOCK_TOKENS), K)``);
the width is walked in chunks of ``BLOCK_WIDTH`` features.

- Forward: per level, each token's logit is the dot product of its row of ``x`` with the ``linear_in`` row of
  the node it sits on (a gathered load, exact float32 multiply-adds, no ``tl.dot``: routing must not depend on
  TF32). The visited nodes and their GELU'd logits stay in registers (``BLOCK_TOKENS x next_pow2(D+1)``); a
  second pass over the width adds ``GELU(z) * weight_out_t[node]`` for all levels at once. With one tree the
  output is stored directly; with several, the trees' programs add into a float32 buffer.
- Backward: from the saved nodes and logits, a first pass over the width computes ``d activation = g .
  weight_out_t[node]`` per level and scatters ``GELU(z) * g`` into ``grad_weight_out_t``; a second computes
  ``grad_x`` and scatters ``dz * x`` into ``grad_weight_in``. Weight gradients are float32 atomic adds. On the
  top ``DOT_LEVELS`` levels (1 to 16 nodes, shared by many tokens) each program first sums its tokens per node
  with a one-hot ``tl.dot`` (``16 x BLOCK_TOKENS`` by ``BLOCK_TOKENS x BLOCK_WIDTH``), so the root row takes one
  atomic add per block instead of one per token; ``precision`` is that dot's ``input_precision``. Atomic adds
  make the summation order of weight gradients (and of the output with several trees) vary from run to run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .ops import check_backward_inputs, check_forward_inputs
from .reference import nodes_per_tree

BLOCK_TOKENS = 16  # tokens per program; tl.dot needs at least 16 on every side
BLOCK_WIDTH = 128  # features per chunk of the width loops
NUM_WARPS = 4
# Not tuned: no GPU has run these kernels yet (docs/gpu.md).

DOT_PRECISIONS = ("ieee", "tf32", "tf32x3")
_dot_precision = "ieee"

_DOT_LEVELS = tl.constexpr(5)  # levels 0..4 hold 1..16 nodes: one row of the one-hot each
_DOT_ROWS = tl.constexpr(16)
_INV_SQRT_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


def set_dot_precision(precision: str) -> None:
    """``input_precision`` of the backward's one-hot ``tl.dot``: ``"ieee"`` (default: float32 products, as the
    CPU op), ``"tf32"`` or ``"tf32x3"`` (tensor cores; ``"tf32"`` rounds ``dz * x`` to 10 mantissa bits, a relative
    error near 1e-3 in the top levels' weight gradients)."""
    global _dot_precision
    if precision not in DOT_PRECISIONS:
        raise ValueError(f"dot precision must be one of {DOT_PRECISIONS}, got {precision!r}")
    _dot_precision = precision


def dot_precision() -> str:
    """The precision the ops use when none is passed (``set_dot_precision``)."""
    return _dot_precision


# ---- device code ------------------------------------------------------------------------------------------------


@triton.jit
def _gelu(z):
    """Exact GELU from ``tl.erf`` (no libdevice: the interpreter has none)."""
    return 0.5 * z * (1.0 + tl.erf(z * _INV_SQRT_2))


@triton.jit
def _gelu_derivative(z):
    """Phi(z) + z * phi(z)."""
    return 0.5 * (1.0 + tl.erf(z * _INV_SQRT_2)) + z * tl.exp(-0.5 * z * z) * _INV_SQRT_2PI


@triton.jit
def _column(tile, levels, level):
    """``tile[:, level]`` of a ``(BLOCK_TOKENS, LEVELS)`` register tile."""
    return tl.sum(tl.where(levels[None, :] == level, tile, 0), axis=1)


@triton.jit
def _scatter_rows(grad_ptr, node, coefficient, values, columns, width, row_valid, level, tree_first, PRECISION):
    """``grad[node[i], columns] += coefficient[i] * values[i, :]`` for every valid token ``i`` of the block.

    On the top levels the tokens are first summed per node with a one-hot ``tl.dot``, one row per node of the
    level; deeper, each token adds its own row (few tokens share a node there)."""
    column_valid = columns < width
    if level < _DOT_LEVELS:
        level_first = tree_first + (1 << level) - 1
        slots = tl.arange(0, _DOT_ROWS)
        one_hot = (slots[:, None] == (node - level_first)[None, :]) & row_valid[None, :]
        weights = tl.where(one_hot, coefficient[None, :], 0.0)  # (16, BLOCK_TOKENS)
        partial = tl.dot(weights, values, input_precision=PRECISION)  # (16, BLOCK_WIDTH)
        target = (level_first + slots).to(tl.int64) * width
        mask = (slots < (1 << level))[:, None] & column_valid[None, :]
        tl.atomic_add(grad_ptr + target[:, None] + columns[None, :], partial, mask=mask, sem="relaxed")
    else:
        target = node.to(tl.int64) * width
        mask = row_valid[:, None] & column_valid[None, :]
        tl.atomic_add(
            grad_ptr + target[:, None] + columns[None, :], coefficient[:, None] * values, mask=mask, sem="relaxed"
        )


@triton.jit
def _scatter_bias(grad_ptr, node, coefficient, row_valid, level, tree_first):
    """``grad[node[i]] += coefficient[i]`` for every valid token, summed per node first on the top levels."""
    if level < _DOT_LEVELS:
        level_first = tree_first + (1 << level) - 1
        slots = tl.arange(0, _DOT_ROWS)
        one_hot = (slots[:, None] == (node - level_first)[None, :]) & row_valid[None, :]
        sums = tl.sum(tl.where(one_hot, coefficient[None, :], 0.0), axis=1)
        tl.atomic_add(grad_ptr + level_first + slots, sums, mask=slots < (1 << level), sem="relaxed")
    else:
        tl.atomic_add(grad_ptr + node, coefficient, mask=row_valid, sem="relaxed")


@triton.jit
def _forward_kernel(
    x_ptr,  # (N, H)
    weight_in_ptr,  # (K*n, H)
    bias_in_ptr,  # (K*n,)
    weight_out_t_ptr,  # (K*n, H)
    out_ptr,  # (N, H): x's dtype, or float32 when ACCUMULATE
    nodes_ptr,  # (N, K, D+1) int64, written when SAVE
    logits_ptr,  # (N, K, D+1) float32, written when SAVE
    offset_ptr,  # (K*n,) float32, read when OFFSET
    tokens,
    width,
    DEPTH: tl.constexpr,
    LEVELS: tl.constexpr,  # next power of two >= DEPTH + 1
    BLOCK_TOKENS: tl.constexpr,
    BLOCK_WIDTH: tl.constexpr,
    SAVE: tl.constexpr,
    ACCUMULATE: tl.constexpr,  # several trees add into out
    OFFSET: tl.constexpr,  # route on logit + routing offset
):
    block = tl.program_id(0)
    tree = tl.program_id(1)
    trees = tl.num_programs(1)
    rows = block * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)
    row_valid = rows < tokens
    row_offsets = rows.to(tl.int64) * width
    levels = tl.arange(0, LEVELS)
    tree_first = tree * ((2 << DEPTH) - 1)

    # Walk the tree: per level one gathered dot product of width H per token.
    local = tl.zeros([BLOCK_TOKENS], dtype=tl.int32)  # heap index inside the tree
    path = tl.zeros([BLOCK_TOKENS, LEVELS], dtype=tl.int32)
    activations = tl.zeros([BLOCK_TOKENS, LEVELS], dtype=tl.float32)
    for level in range(DEPTH + 1):
        node = tree_first + local
        node_offsets = node.to(tl.int64) * width
        logit = tl.zeros([BLOCK_TOKENS], dtype=tl.float32)
        for start in range(0, width, BLOCK_WIDTH):
            columns = start + tl.arange(0, BLOCK_WIDTH)
            mask = row_valid[:, None] & (columns < width)[None, :]
            x = tl.load(x_ptr + row_offsets[:, None] + columns[None, :], mask=mask, other=0.0).to(tl.float32)
            weight = tl.load(weight_in_ptr + node_offsets[:, None] + columns[None, :], mask=mask, other=0.0)
            logit += tl.sum(x * weight.to(tl.float32), axis=1)
        logit += tl.load(bias_in_ptr + node, mask=row_valid, other=0.0).to(tl.float32)
        if SAVE:
            saved = (rows.to(tl.int64) * trees + tree) * (DEPTH + 1) + level
            tl.store(nodes_ptr + saved, node.to(tl.int64), mask=row_valid)
            tl.store(logits_ptr + saved, logit, mask=row_valid)
        is_level = levels[None, :] == level
        path = tl.where(is_level, node[:, None], path)
        activations = tl.where(is_level, _gelu(logit)[:, None], activations)
        route = logit
        if OFFSET:
            route = logit + tl.load(offset_ptr + node, mask=row_valid, other=0.0)
        local = 2 * local + 1 + (route > 0.0).to(tl.int32)  # strict: 0 and NaN go left

    # out = sum over levels of GELU(z) * weight_out_t[node], one chunk of the width at a time.
    for start in range(0, width, BLOCK_WIDTH):
        columns = start + tl.arange(0, BLOCK_WIDTH)
        mask = row_valid[:, None] & (columns < width)[None, :]
        total = tl.zeros([BLOCK_TOKENS, BLOCK_WIDTH], dtype=tl.float32)
        for level in range(DEPTH + 1):
            node_offsets = _column(path, levels, level).to(tl.int64) * width
            weight = tl.load(weight_out_t_ptr + node_offsets[:, None] + columns[None, :], mask=mask, other=0.0)
            total += _column(activations, levels, level)[:, None] * weight.to(tl.float32)
        pointers = out_ptr + row_offsets[:, None] + columns[None, :]
        if ACCUMULATE:
            tl.atomic_add(pointers, total, mask=mask, sem="relaxed")
        else:
            tl.store(pointers, total.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    grad_out_ptr,  # (N, H)
    x_ptr,  # (N, H)
    weight_in_ptr,  # (K*n, H)
    weight_out_t_ptr,  # (K*n, H)
    nodes_ptr,  # (N, K, D+1) int64
    logits_ptr,  # (N, K, D+1) float32
    grad_x_ptr,  # (N, H): x's dtype, or float32 when ACCUMULATE
    grad_weight_in_ptr,  # (K*n, H) float32, zeroed
    grad_bias_in_ptr,  # (K*n,) float32, zeroed
    grad_weight_out_t_ptr,  # (K*n, H) float32, zeroed
    tokens,
    width,
    DEPTH: tl.constexpr,
    LEVELS: tl.constexpr,
    BLOCK_TOKENS: tl.constexpr,
    BLOCK_WIDTH: tl.constexpr,
    PRECISION: tl.constexpr,
    ACCUMULATE: tl.constexpr,
):
    block = tl.program_id(0)
    tree = tl.program_id(1)
    trees = tl.num_programs(1)
    rows = block * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)
    row_valid = rows < tokens
    row_offsets = rows.to(tl.int64) * width
    levels = tl.arange(0, LEVELS)
    tree_first = tree * ((2 << DEPTH) - 1)

    saved = (rows.to(tl.int64) * trees + tree) * (DEPTH + 1)
    saved_mask = row_valid[:, None] & (levels < DEPTH + 1)[None, :]
    path = tl.load(nodes_ptr + saved[:, None] + levels[None, :], mask=saved_mask, other=0).to(tl.int32)
    logits = tl.load(logits_ptr + saved[:, None] + levels[None, :], mask=saved_mask, other=0.0)
    activations = _gelu(logits)

    # Pass 1: d activation = g . weight_out_t[node]; grad_weight_out_t[node] += GELU(z) * g.
    d_activations = tl.zeros([BLOCK_TOKENS, LEVELS], dtype=tl.float32)
    for start in range(0, width, BLOCK_WIDTH):
        columns = start + tl.arange(0, BLOCK_WIDTH)
        mask = row_valid[:, None] & (columns < width)[None, :]
        upstream = tl.load(grad_out_ptr + row_offsets[:, None] + columns[None, :], mask=mask, other=0.0)
        upstream = upstream.to(tl.float32)
        for level in range(DEPTH + 1):
            node = _column(path, levels, level)
            weight = tl.load(
                weight_out_t_ptr + node.to(tl.int64)[:, None] * width + columns[None, :], mask=mask, other=0.0
            )
            partial = tl.sum(upstream * weight.to(tl.float32), axis=1)
            d_activations += tl.where(levels[None, :] == level, partial[:, None], 0.0)
            activation = _column(activations, levels, level)
            _scatter_rows(
                grad_weight_out_t_ptr,
                node,
                activation,
                upstream,
                columns,
                width,
                row_valid,
                level,
                tree_first,
                PRECISION,
            )
    d_logits = tl.where(saved_mask, d_activations * _gelu_derivative(logits), 0.0)

    for level in range(DEPTH + 1):
        _scatter_bias(
            grad_bias_in_ptr,
            _column(path, levels, level),
            _column(d_logits, levels, level),
            row_valid,
            level,
            tree_first,
        )

    # Pass 2: grad_x = sum over levels of dz * weight_in[node]; grad_weight_in[node] += dz * x.
    for start in range(0, width, BLOCK_WIDTH):
        columns = start + tl.arange(0, BLOCK_WIDTH)
        mask = row_valid[:, None] & (columns < width)[None, :]
        x = tl.load(x_ptr + row_offsets[:, None] + columns[None, :], mask=mask, other=0.0).to(tl.float32)
        grad_x = tl.zeros([BLOCK_TOKENS, BLOCK_WIDTH], dtype=tl.float32)
        for level in range(DEPTH + 1):
            node = _column(path, levels, level)
            d_logit = _column(d_logits, levels, level)
            weight = tl.load(
                weight_in_ptr + node.to(tl.int64)[:, None] * width + columns[None, :], mask=mask, other=0.0
            )
            grad_x += d_logit[:, None] * weight.to(tl.float32)
            _scatter_rows(grad_weight_in_ptr, node, d_logit, x, columns, width, row_valid, level, tree_first, PRECISION)
        pointers = grad_x_ptr + row_offsets[:, None] + columns[None, :]
        if ACCUMULATE:
            tl.atomic_add(pointers, grad_x, mask=mask, sem="relaxed")
        else:
            tl.store(pointers, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)


# ---- host code --------------------------------------------------------------------------------------------------


def _check_blocks(block_tokens: int, block_width: int) -> None:
    for name, value in (("block_tokens", block_tokens), ("block_width", block_width)):
        if value < 16 or value & (value - 1):
            raise ValueError(f"{name} must be a power of two >= 16 (tl.dot's smallest side), got {value}")


def _forward(
    x: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    weight_out_t: Tensor,
    depth: int,
    trees: int,
    routing_offset: Tensor | None,
    save: bool,
    block_tokens: int,
    block_width: int,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    check_forward_inputs(x, weight_in, bias_in, weight_out_t, depth, trees, routing_offset)
    _check_blocks(block_tokens, block_width)
    x, weight_in, bias_in, weight_out_t = (t.contiguous() for t in (x, weight_in, bias_in, weight_out_t))
    tokens, width = x.shape
    accumulate = trees > 1
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device) if accumulate else torch.empty_like(x)
    path_shape = (tokens, trees, depth + 1)
    nodes = torch.empty(path_shape, dtype=torch.int64, device=x.device) if save else None
    logits = torch.empty(path_shape, dtype=torch.float32, device=x.device) if save else None
    if tokens:
        grid = (triton.cdiv(tokens, block_tokens), trees)
        _forward_kernel[grid](
            x, weight_in, bias_in, weight_out_t, out,
            nodes if save else out, logits if save else out,  # unused pointers when not saving
            routing_offset.contiguous() if routing_offset is not None else out,  # unused without an offset
            tokens, width,
            DEPTH=depth, LEVELS=triton.next_power_of_2(depth + 1), BLOCK_TOKENS=block_tokens,
            BLOCK_WIDTH=block_width, SAVE=save, ACCUMULATE=accumulate, OFFSET=routing_offset is not None,
            num_warps=NUM_WARPS,
        )  # fmt: skip
    return out.to(x.dtype), nodes, logits


def fff_infer(
    x: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    weight_out_t: Tensor,
    depth: int,
    trees: int,
    routing_offset: Tensor | None = None,
    *,
    block_tokens: int = BLOCK_TOKENS,
    block_width: int = BLOCK_WIDTH,
) -> Tensor:
    """``ops.fff_infer`` in Triton: the output only, nothing saved. Block sizes are powers of two >= 16."""
    return _forward(
        x, weight_in, bias_in, weight_out_t, depth, trees, routing_offset, False, block_tokens, block_width
    )[0]


def fff_forward(
    x: Tensor,
    weight_in: Tensor,
    bias_in: Tensor,
    weight_out_t: Tensor,
    depth: int,
    trees: int,
    routing_offset: Tensor | None = None,
    *,
    block_tokens: int = BLOCK_TOKENS,
    block_width: int = BLOCK_WIDTH,
) -> tuple[Tensor, Tensor, Tensor]:
    """``ops.fff_forward`` in Triton: ``(out, nodes, logits)``, nodes int64 and logits float32 ``(N, K, D+1)``
    (the neurons' logits, without the routing offset)."""
    out, nodes, logits = _forward(
        x, weight_in, bias_in, weight_out_t, depth, trees, routing_offset, True, block_tokens, block_width
    )
    return out, nodes, logits


def _check_paths(nodes: Tensor, depth: int, trees: int) -> None:
    """Each saved node must lie in its tree's level (as ``fff_forward`` writes them): the one-hot reduction of the
    top levels relies on it, and it keeps every gathered row in bounds. Checked on the device without a
    synchronisation (``torch._assert_async``): on CUDA a violation surfaces as a device-side assertion."""
    if nodes.numel() == 0:
        return
    level = torch.arange(depth + 1, device=nodes.device)
    first = (torch.arange(trees, device=nodes.device) * nodes_per_tree(depth)).view(trees, 1) + (1 << level) - 1
    offset = nodes - first  # (N, K, D+1)
    torch._assert_async(
        ((offset >= 0) & (offset < (1 << level))).all(), "fff_backward: node index out of range of its tree level"
    )


def fff_backward(
    grad_out: Tensor,
    x: Tensor,
    weight_in: Tensor,
    weight_out_t: Tensor,
    nodes: Tensor,
    logits: Tensor,
    *,
    precision: str | None = None,
    block_tokens: int = BLOCK_TOKENS,
    block_width: int = BLOCK_WIDTH,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``ops.fff_backward`` in Triton: ``(grad_x, grad_weight_in, grad_bias_in, grad_weight_out_t)``, accumulated in
    float32 and returned in the inputs' dtype. ``precision``: the one-hot ``tl.dot``'s (default
    ``dot_precision()``)."""
    check_backward_inputs(grad_out, x, weight_in, weight_out_t, nodes, logits)
    _check_blocks(block_tokens, block_width)
    precision = _dot_precision if precision is None else precision
    if precision not in DOT_PRECISIONS:
        raise ValueError(f"dot precision must be one of {DOT_PRECISIONS}, got {precision!r}")
    tokens, trees, levels = nodes.shape
    depth = levels - 1
    _check_paths(nodes, depth, trees)
    grad_out, x, weight_in, weight_out_t, nodes, logits = (
        t.contiguous() for t in (grad_out, x, weight_in, weight_out_t, nodes, logits)
    )
    width = x.shape[1]
    accumulate = trees > 1
    grad_x = torch.zeros(x.shape, dtype=torch.float32, device=x.device) if accumulate else torch.empty_like(x)
    grad_weight_in = torch.zeros(weight_in.shape, dtype=torch.float32, device=x.device)
    grad_bias_in = torch.zeros(weight_in.shape[0], dtype=torch.float32, device=x.device)
    grad_weight_out_t = torch.zeros(weight_out_t.shape, dtype=torch.float32, device=x.device)
    if tokens:
        grid = (triton.cdiv(tokens, block_tokens), trees)
        _backward_kernel[grid](
            grad_out, x, weight_in, weight_out_t, nodes, logits,
            grad_x, grad_weight_in, grad_bias_in, grad_weight_out_t,
            tokens, width,
            DEPTH=depth, LEVELS=triton.next_power_of_2(levels), BLOCK_TOKENS=block_tokens, BLOCK_WIDTH=block_width,
            PRECISION=precision, ACCUMULATE=accumulate, num_warps=NUM_WARPS,
        )  # fmt: skip
    dtype = weight_in.dtype
    # the ops' layout on every device: stored transposed, so its .T is linear_out.weight's gradient as it is
    grad_weight_out_t = grad_weight_out_t.to(dtype).t().contiguous().t()
    return grad_x.to(x.dtype), grad_weight_in.to(dtype), grad_bias_in.to(dtype), grad_weight_out_t
