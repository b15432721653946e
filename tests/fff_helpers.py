"""Shared helpers for FFF tests: random layers whose tokens really take different paths."""

from __future__ import annotations

import torch

from ultrafastbert import FFF

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
