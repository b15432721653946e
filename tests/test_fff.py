"""The FFF layer: every execution path against the dense masking reference, plus semantics and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from fff_helpers import (
    TOLERANCE,
    assert_gradients_close,
    paths_agree_or_tie,
    random_input,
    random_layer,
    relative_error,
    run_with_grads,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from ultrafastbert import FFF
from ultrafastbert.fff import fff_reference, kernels, nodes_per_tree

GRAD_PATHS = ["sparse"]
NO_GRAD_PATHS = ["sparse", "walk"]


def assert_matches_reference(layer: FFF, x: torch.Tensor) -> None:
    """Every path's outputs and gradients against the reference's, where it took the reference's path (a routing
    logit within rounding of 0 may go either way, and only such a tie may differ)."""
    tol = TOLERANCE[x.dtype]
    ref_out, ref_path, ref_grads = run_with_grads(layer, x, "reference")
    for impl in GRAD_PATHS:
        out, path, grads = run_with_grads(layer, x, impl)
        if paths_agree_or_tie(layer, x, path, ref_path):
            assert relative_error(out, ref_out) <= tol, impl
            assert_gradients_close(layer, x, grads, ref_grads, tol, impl)
    with torch.no_grad():
        for impl in NO_GRAD_PATHS:
            layer.impl = impl
            out, path = layer(x, return_path=True)
            if paths_agree_or_tie(layer, x, path, ref_path):
                assert relative_error(out, ref_out) <= tol, impl


@st.composite
def layer_shapes(draw):
    depth = draw(st.integers(0, 11))
    trees = draw(st.integers(1, 4))
    width = draw(st.one_of(st.integers(1, 40), st.sampled_from([127, 768, 1024])))
    # keep one example's parameters under ~2M elements so the suite stays fast
    while trees * nodes_per_tree(depth) * width > 2_000_000:
        depth -= 1
    lead = tuple(draw(st.lists(st.integers(0, 7), min_size=1, max_size=3)))
    return depth, trees, width, lead


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(shape=layer_shapes(), seed=st.integers(0, 2**16))
def test_paths_match_reference_float32(shape, seed):
    depth, trees, width, lead = shape
    layer = random_layer(width, depth, trees, seed=seed)
    assert_matches_reference(layer, random_input((*lead, width), seed=seed + 1))


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(shape=layer_shapes(), seed=st.integers(0, 2**16))
def test_paths_match_reference_bfloat16(shape, seed):
    depth, trees, width, lead = shape
    layer = random_layer(width, depth, trees, dtype=torch.bfloat16, seed=seed)
    assert_matches_reference(layer, random_input((*lead, width), dtype=torch.bfloat16, seed=seed + 1))


@pytest.mark.parametrize(
    "depth,trees,width,lead",
    [(11, 1, 768, (3, 5)), (0, 1, 1, (1,)), (0, 3, 17, (4,)), (7, 4, 33, (2, 3, 2)), (5, 2, 64, (0, 3))],
)
def test_named_cases(depth, trees, width, lead):
    """Published size, depth 0, width 1, multiple trees, extra leading dims, an empty batch."""
    layer = random_layer(width, depth, trees, seed=depth + trees)
    assert_matches_reference(layer, random_input((*lead, width)))


def test_tokens_really_take_different_paths():
    """Guards the test data itself: a test where every token takes one path would prove little."""
    layer = random_layer(64, 6, 2)
    paths = layer.visited_nodes(random_input((256, 64)))
    assert paths.shape == (256, 2, 7)
    assert len({tuple(p.flatten().tolist()) for p in paths}) > 100


@pytest.mark.parametrize("impl", ["reference", "sparse", "walk"])
def test_zero_logit_goes_left_and_positive_goes_right(impl):
    layer = FFF(4, 2, trees=2, impl=impl)
    x = torch.randn(3, 4)
    with torch.no_grad():
        layer.linear_in.weight[0].zero_()  # tree 0 root: logit exactly bias = 0
        layer.linear_in.bias[0] = 0.0
        layer.linear_in.weight[7].zero_()  # tree 1 root: logit exactly +1e-30 > 0
        layer.linear_in.bias[7] = 1e-30
        _, path = layer(x, return_path=True)
    assert path[:, 0, 1].tolist() == [1, 1, 1]  # left child of node 0
    assert path[:, 1, 1].tolist() == [7 + 2] * 3  # right child of node 7


def test_path_is_a_root_to_leaf_walk():
    depth, trees = 5, 3
    layer = random_layer(16, depth, trees)
    n = nodes_per_tree(depth)
    path = layer.visited_nodes(random_input((50, 16)))
    local = path - torch.arange(trees).view(1, trees, 1) * n
    assert (local[..., 0] == 0).all()
    steps = local[..., 1:] - 2 * local[..., :-1]
    assert ((steps == 1) | (steps == 2)).all()
    assert (local[..., -1] >= 2**depth - 1).all() and (local[..., -1] < n).all()


@pytest.mark.parametrize("impl", ["reference", "sparse", "walk"])
def test_nan_token_routes_left_and_stays_in_its_row(impl):
    """A NaN logit is not > 0, so it goes left (as in the reference); the NaN reaches only that token's output."""
    layer = random_layer(8, 3, 2, seed=3)
    x = random_input((4, 8))
    x[2, 5] = math.nan
    with torch.no_grad():
        layer.impl = "reference"
        expected = layer(x)
        layer.impl = impl
        out, path = layer(x, return_path=True)
    assert torch.isnan(out[2]).all()
    assert torch.isfinite(out[[0, 1, 3]]).all()
    assert relative_error(out[[0, 1, 3]], expected[[0, 1, 3]]) <= 1e-5
    local_nan_path = path[2] - torch.arange(2).view(2, 1) * nodes_per_tree(3)
    assert local_nan_path.tolist() == [[0, 1, 3, 7]] * 2


def test_auto_picks_the_kernel_where_built_else_sparse_with_grad_and_walk_without(monkeypatch):
    layer = random_layer(8, 3, 1)
    x = random_input((2, 8))
    if kernels.available():
        assert layer.resolve_impl(x) == "kernel"
        assert layer.to(torch.float64).resolve_impl(x.double()) == "sparse"  # no float64 kernel
        layer = layer.float()
    monkeypatch.setattr(kernels, "available", lambda: False)
    assert layer.resolve_impl(x) == "sparse"
    with torch.no_grad():
        assert layer.resolve_impl(x) == "walk"
    layer.eval().requires_grad_(False)
    assert layer.resolve_impl(x) == "walk"
    assert layer.resolve_impl(x.requires_grad_()) == "sparse"


def test_train_and_eval_modes_agree():
    layer = random_layer(32, 4, 2)
    x = random_input((5, 32))
    train_out = layer.train()(x)
    with torch.no_grad():
        eval_out = layer.eval()(x)
    assert relative_error(eval_out, train_out.detach()) <= 1e-6


def test_inference_cache_follows_weight_updates():
    layer = random_layer(16, 3, 1)
    x = random_input((6, 16))
    with torch.no_grad():
        before = layer(x)
        layer.linear_out.weight.mul_(2.0)
        after = layer(x)
        layer.impl = "reference"
        expected = layer(x)
    assert relative_error(after, expected) <= 1e-6
    assert relative_error(after, 2 * before) <= 1e-6


def test_default_initialisation_is_the_published_one():
    layer = FFF(768, 11)
    assert layer.linear_in.weight.shape == (4095, 768) and layer.linear_out.weight.shape == (768, 4095)
    assert layer.linear_out.bias is None
    assert torch.count_nonzero(layer.linear_in.bias) == 0
    for weight in (layer.linear_in.weight, layer.linear_out.weight):
        assert abs(weight.std().item() - 0.02) < 1e-3 and abs(weight.mean().item()) < 1e-3
    assert layer.neurons_per_token == 12


def test_state_dict_names_match_published_checkpoints():
    assert sorted(FFF(8, 2, trees=3).state_dict()) == ["linear_in.bias", "linear_in.weight", "linear_out.weight"]


@pytest.mark.parametrize(
    "x,error,message",
    [
        (torch.randn(2, 7), ValueError, r"\(\.\.\., 8\)"),
        (torch.tensor(1.0), ValueError, r"\(\.\.\., 8\)"),
        (torch.ones(2, 8, dtype=torch.int64), TypeError, "floating-point"),
        (torch.ones(2, 8, dtype=torch.bool), TypeError, "floating-point"),
        (torch.randn(2, 8, dtype=torch.complex64), TypeError, "floating-point"),
        (torch.randn(2, 8, dtype=torch.float64), TypeError, "float64 does not match.*float32"),
        (torch.empty(2, 8, device="meta"), ValueError, "meta"),
        ([[0.0] * 8], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_gives_a_clear_error(x, error, message):
    with pytest.raises(error, match=message):
        FFF(8, 2)(x)


def test_bad_configuration_gives_a_clear_error():
    with pytest.raises(ValueError, match="unknown FFF impl"):
        FFF(8, 2, impl="fast")
    with pytest.raises(ValueError, match="0 <= depth <= 20"):
        FFF(8, -1)
    with pytest.raises(ValueError, match="0 <= depth <= 20, trees >= 1; got width=8, depth=40"):
        FFF(8, 40)  # 2**41 nodes: refused before any allocation
    for depth in (2.5, "3", True):
        with pytest.raises(TypeError, match="FFF depth must be an integer"):
            FFF(8, depth)
    layer = FFF(8, 2)
    with pytest.raises(ValueError, match="unknown FFF impl"):
        layer.impl = "dense"
    layer.impl = "walk"
    with pytest.raises(RuntimeError, match="inference-only"):
        layer(torch.randn(2, 8))


@pytest.mark.parametrize("impl", ["auto", "walk", "kernel"])
def test_a_layer_built_under_inference_mode_runs_there(impl):
    """Parameters created under ``torch.inference_mode`` are inference tensors without a version counter, which
    the cached transpose of ``linear_out.weight`` cannot key on: the layer computes it per call instead."""
    if impl == "kernel" and not kernels.available():
        pytest.skip("the compiled kernel is not available here")
    torch.manual_seed(3)
    with torch.inference_mode():
        layer = FFF(19, 3, trees=2, impl=impl)
        torch.nn.init.normal_(layer.linear_in.bias, std=0.1)
        x = torch.randn(7, 19)
        out = layer(x)
        expected = fff_reference(x, layer.linear_in.weight, layer.linear_in.bias, layer.linear_out.weight, 3, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_only_a_near_tie_may_route_differently_from_the_reference():
    """The tie allowance above is not a loophole: a token sent the wrong way at a clear logit fails it."""
    layer = random_layer(16, 3, 2, seed=3)
    x = random_input((9, 16), seed=4)
    ref_path = layer.visited_nodes(x)
    assert paths_agree_or_tie(layer, x, ref_path.clone(), ref_path)
    wrong = ref_path.clone()
    wrong[4, 1, 1:] = ref_path[4, 1, 1:] ^ 1  # the other child of the root of tree 1, and below it
    with pytest.raises(AssertionError, match="routed a token the wrong way"):
        paths_agree_or_tie(layer, x, wrong, ref_path)
