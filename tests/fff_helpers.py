"""Shared helpers for FFF tests: random layers whose tokens really take different paths."""

from __future__ import annotations

import math

import pytest
import torch

from ultrafastbert import FFF
from ultrafastbert.fff import kernels

needs_kernel = pytest.mark.skipif(not kernels.available(), reason="compiled kernel unavailable on this machine")

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def random_layer(width: int, depth: int, trees: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> FFF:
    """A layer with random weights *and* random non-zero biases (zero biases would hide bias bugs)."""
    generator = torch.Generator().manual_seed(seed)
    layer = FFF(width, depth, trees)
    with torch.no_grad():
        layer.linear_in.weight.normal_(0.0, width**-0.5, generator=generator)
        layer.linear_in.bias.normal_(0.0, 0.5, generator=generator)
        layer.linear_out.weight.normal_(0.0, 0.1, generator=generator)
    return layer.to(dtype)


def random_weights(
    width: int, depth: int, trees: int, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``random_layer``'s ``(weight_in, bias_in, weight_out_t)`` as the ops take them."""
    layer = random_layer(width, depth, trees, dtype=dtype, seed=seed)
    return layer.linear_in.weight.detach(), layer.linear_in.bias.detach(), layer._weight_out_t()


def random_input(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(dtype)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs difference over the max abs of the expected tensor (0 when both are all zero or empty)."""
    actual, expected = actual.double(), expected.double()
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    return diff / scale if scale > 0 else diff


def run_with_grads(layer: FFF, x: torch.Tensor, impl: str, grad_seed: int = 2):
    """Output, path and the four gradients (x, linear_in.weight, linear_in.bias, linear_out.weight)."""
    layer.impl = impl
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out, path = layer(x, return_path=True)
    generator = torch.Generator().manual_seed(grad_seed)
    upstream = torch.randn(out.shape, generator=generator).to(out.dtype)
    (out * upstream).sum().backward()
    grads = (x.grad, layer.linear_in.weight.grad, layer.linear_in.bias.grad, layer.linear_out.weight.grad)
    return out.detach(), path, grads


def gradient_magnitudes(layer: FFF, x: torch.Tensor, grad_seed: int = 2) -> list[float]:
    """For each gradient of ``run_with_grads`` (x, linear_in.weight, linear_in.bias, linear_out.weight), the
    largest sum of absolute terms over its entries. Rounding error is relative to that sum, not to the gradient:
    with one token on one node, ``d(activation) = upstream . w_out`` can cancel to almost zero, and then two
    correct float32 summation orders differ by far more than 1e-5 of the (tiny) gradient."""
    flat = x.detach().reshape(-1, layer.width).double()
    generator = torch.Generator().manual_seed(grad_seed)
    upstream = torch.randn(x.shape, generator=generator).to(x.dtype).reshape(-1, layer.width).double().abs()
    if flat.shape[0] == 0:
        return [0.0] * 4
    w_in = layer.linear_in.weight.detach().double()
    b_in = layer.linear_in.bias.detach().double()
    w_out = layer.linear_out.weight.detach().double().abs()  # (H, nodes)
    nodes = layer.visited_nodes(x.detach()).reshape(flat.shape[0], -1)  # (N, visited)
    z = (flat @ w_in.T + b_in).gather(1, nodes)
    gelu_grad = 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    dz = gelu_grad.abs() * (upstream @ w_out).gather(1, nodes)
    dense_dz = torch.zeros(flat.shape[0], w_in.shape[0], dtype=torch.float64).scatter_add_(1, nodes, dz)
    dense_act = torch.zeros_like(dense_dz).scatter_add_(1, nodes, torch.nn.functional.gelu(z).abs())
    sums = (dense_dz @ w_in.abs(), dense_dz.T @ flat.abs(), dense_dz.sum(0), dense_act.T @ upstream)
    return [float(s.max()) for s in sums]


def assert_gradients_close(layer: FFF, x: torch.Tensor, grads, ref_grads, tol: float, label: str = "") -> None:
    """Each gradient within ``tol`` of the reference, relative to its ``gradient_magnitudes`` entry."""
    names = ("x", "w_in", "b_in", "w_out")
    for name, grad, ref_grad, scale in zip(names, grads, ref_grads, gradient_magnitudes(layer, x), strict=True):
        assert grad.shape == ref_grad.shape and grad.dtype == ref_grad.dtype, (label, name)
        error = (grad.double() - ref_grad.double()).abs().max().item() if grad.numel() else 0.0
        assert error <= tol * scale, (label, name, error, scale)


def paths_agree_or_tie(layer: FFF, x: torch.Tensor, path: torch.Tensor, ref_path: torch.Tensor) -> bool:
    """True when a fast path took the reference's path; False (after checking it is a genuine near-tie, a routing
    logit within float32 summation noise of 0) when a decision differs. Two correct paths sum a logit in different
    orders (BLAS against the kernel's own loops, each vendor's BLAS its own way), so a logit that close to 0 may go
    either way on some CPU: only such ties may differ."""
    if torch.equal(path, ref_path):
        return True
    flat = x.reshape(-1, layer.width).float()
    weight, bias = layer.linear_in.weight.float(), layer.linear_in.bias.float()
    logits = (flat @ weight.T + bias).detach()
    scale = (flat.abs() @ weight.abs().T + bias.abs()).detach()
    if layer.routing_offset is not None:  # a balancing layer routes on logit + offset
        logits = logits + layer.routing_offset.float()
        scale = scale + layer.routing_offset.float().abs()
    differs = (path != ref_path).reshape(-1, layer.trees, layer.depth + 1).any(dim=2)  # (N, K)
    ref = ref_path.reshape(-1, layer.trees, layer.depth + 1)
    for token, tree in differs.nonzero().tolist():
        level = int((path.reshape(ref.shape)[token, tree] != ref[token, tree]).nonzero()[0]) - 1
        node = int(ref[token, tree, level])
        assert abs(logits[token, node]) <= 1e-5 * scale[token, node], "a path routed a token the wrong way"
    return False
