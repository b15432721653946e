"""The grouped-leaf FFF: its fast path against the reference (random shapes, odd sizes, float32 and bfloat16, one
token, gradients), the dense layer it equals when every neuron is shared, saving, compiling and bad settings."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ultrafastbert.fff import GroupedFFF

torch.set_num_threads(1)

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


def random_grouped(
    width: int, depth: int, leaf_width: int, shared_width: int, output_bias: bool = True, seed: int = 0
) -> GroupedFFF:
    """Random weights and non-zero biases; routers scaled so that tokens spread over the leaves."""
    generator = torch.Generator().manual_seed(seed)
    layer = GroupedFFF(width, depth, leaf_width, shared_width, output_bias=output_bias)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            scale = width**-0.5 if "weight" in name else 0.3
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return layer


def random_input(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / max(scale, 1e-12)


def outputs_and_gradients(layer: GroupedFFF, x: torch.Tensor, impl: str) -> tuple[torch.Tensor, dict]:
    layer.impl = impl
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = layer(x)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out.dtype)
    (out.float() * upstream.float()).sum().backward()
    grads = {name: parameter.grad for name, parameter in layer.named_parameters()}
    return out.detach(), {"x": x.grad, **grads}


CASES = [  # (width, depth, leaf_width, shared_width, leading shape)
    (16, 2, 4, 3, (5, 9)),
    (7, 3, 3, 5, (37,)),  # odd sizes
    (9, 1, 5, 0, (1,)),  # one token, no shared leaf
    (12, 0, 6, 2, (4, 3)),  # depth 0: one leaf, always taken
    (10, 4, 1, 0, (3, 50)),  # 16 leaves of one neuron
    (11, 2, 0, 7, (13,)),  # no leaf neurons: leaf output biases still routed
    (8, 3, 2, 1, (64,)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}w-d{c[1]}-l{c[2]}-s{c[3]}-{c[4]}" for c in CASES])
@pytest.mark.parametrize("output_bias", [True, False], ids=["bias", "nobias"])
def test_the_grouped_path_equals_the_reference_with_gradients(case, dtype, output_bias) -> None:
    width, depth, leaf_width, shared_width, leading = case
    layer = random_grouped(width, depth, leaf_width, shared_width, output_bias=output_bias).to(dtype)
    x = random_input((*leading, width)).to(dtype)
    if depth and leading[-1] > 30:  # the inputs really spread over the leaves
        assert len(layer.route(x).unique()) > 1
    expected, expected_grads = outputs_and_gradients(layer, x, "reference")
    actual, actual_grads = outputs_and_gradients(layer, x, "auto")
    assert actual.shape == x.shape and actual.dtype == dtype
    assert relative_error(actual, expected) < TOLERANCE[dtype]
    assert set(actual_grads) == set(expected_grads)
    for name, grad in expected_grads.items():
        if name.startswith("router_"):  # routing nodes only route: no gradient on either path
            assert grad is None and actual_grads[name] is None, name
            continue
        if grad is not None and grad.numel() == 0:  # an empty leaf or shared leaf: nothing to compare
            continue
        assert actual_grads[name] is not None and actual_grads[name].dtype == dtype, name
        assert relative_error(actual_grads[name], grad) < TOLERANCE[dtype], name


def test_random_shapes_agree_with_the_reference() -> None:
    generator = torch.Generator().manual_seed(5)
    for trial in range(12):
        width, depth, leaf_width, shared_width, tokens = (
            int(torch.randint(1, 20, (), generator=generator)),
            int(torch.randint(0, 5, (), generator=generator)),
            int(torch.randint(0, 7, (), generator=generator)),
            int(torch.randint(0, 7, (), generator=generator)),
            int(torch.randint(1, 80, (), generator=generator)),
        )
        if leaf_width + shared_width == 0:
            leaf_width = 1
        layer = random_grouped(width, depth, leaf_width, shared_width, seed=trial)
        x = random_input((tokens, width), seed=trial)
        layer.impl = "reference"
        expected = layer(x)
        layer.impl = "auto"
        assert relative_error(layer(x), expected) < 1e-5, (width, depth, leaf_width, shared_width, tokens)


def test_a_token_takes_the_leaf_of_its_routing_decisions() -> None:
    layer = random_grouped(6, 2, 3, 0)
    x = random_input((200, 6))
    logits = x @ layer.router_weight.detach().T + layer.router_bias.detach()
    root_right = logits[:, 0] > 0
    child = torch.where(root_right, logits[:, 2], logits[:, 1]) > 0
    assert torch.equal(layer.route(x), 2 * root_right.long() + child.long())
    assert len(layer.route(x).unique()) == 4


@pytest.mark.parametrize("depth", [0, 3])
def test_every_neuron_in_the_shared_leaf_is_the_dense_layer(depth: int) -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 24))
    layer = GroupedFFF(24, depth, 0, 40)
    with torch.no_grad():
        layer.router_weight.normal_()  # routing that would matter if any leaf held a neuron
        layer.shared_in_weight.copy_(dense[0].weight)
        layer.shared_in_bias.copy_(dense[0].bias)
        layer.shared_out_weight.copy_(dense[2].weight.T)
        layer.bias.copy_(dense[2].bias)
    x = random_input((3, 17, 24))
    for impl in ("auto", "reference"):
        layer.impl = impl
        torch.testing.assert_close(layer(x), dense(x))


def test_the_dense_layers_activation_is_used() -> None:
    layer = random_grouped(10, 2, 4, 3)
    x = random_input((50, 10))
    gelu = layer(x)
    layer.activation = nn.GELU(approximate="tanh")
    for impl in ("reference", "auto"):
        layer.impl = impl
        tanh = layer(x)
        assert not torch.equal(tanh, gelu)
    layer.impl = "reference"
    assert relative_error(layer(x), tanh) < 1e-5


def test_a_saved_layer_loads_and_computes_the_same(tmp_path) -> None:
    layer = random_grouped(13, 3, 4, 2)
    save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    loaded = GroupedFFF(13, 3, 4, 2)
    loaded.load_state_dict(load_file(tmp_path / "layer.safetensors"))
    x = random_input((40, 13))
    assert torch.equal(loaded(x), layer(x))
    assert sorted(layer.state_dict()) == sorted(
        [
            "bias",
            "leaf_in_bias",
            "leaf_in_weight",
            "leaf_out_bias",
            "leaf_out_weight",
            "router_bias",
            "router_weight",
            "shared_in_bias",
            "shared_in_weight",
            "shared_out_weight",
        ]
    )


def test_torch_compile_computes_the_same() -> None:
    torch.compiler.reset()
    layer = random_grouped(12, 2, 5, 3)
    x = random_input((30, 12))
    compiled = torch.compile(layer, backend="aot_eager")
    torch.testing.assert_close(compiled(x), layer(x))


def test_an_empty_batch_is_an_empty_output() -> None:
    layer = random_grouped(5, 2, 2, 1)
    assert layer(torch.zeros(0, 5)).shape == (0, 5)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((8, 13, 2, 0), r"0 <= depth <= 12"),
        ((8, -1, 2, 0), r"0 <= depth <= 12"),
        ((8, 2, -1, 3), r"leaf_width >= 0"),
        ((8, 2, 3, -1), r"shared_width >= 0"),
        ((0, 2, 3, 1), r"width >= 1"),
        ((8, 2, 0, 0), r"at least one neuron"),
    ],
)
def test_bad_settings_are_one_line_errors(arguments, message) -> None:
    with pytest.raises(ValueError, match=message) as error:
        GroupedFFF(*arguments)
    assert "\n" not in str(error.value)


def test_bad_types_and_impls_are_refused() -> None:
    with pytest.raises(TypeError, match="leaf_width must be an integer"):
        GroupedFFF(8, 2, 2.5, 0)
    with pytest.raises(ValueError, match="unknown grouped FFF impl 'kernel'"):
        GroupedFFF(8, 2, 2, 0, impl="kernel")
    with pytest.raises(ValueError, match="inputs of width 8"):
        GroupedFFF(8, 2, 2, 0)(torch.zeros(3, 7))
