"""The operators' input checks: each bad input the kernel rejects, the fake implementations reject with the same
message, so it fails under fake tensors and while ``torch.compile`` or ``torch.export`` traces, not later; good
inputs trace and give the eager bits."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from fff_helpers import needs_kernel, random_input, random_weights
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.export import Dim

from ultrafastbert.fff import ops
from ultrafastbert.fff.sparse import walk_forward

TOKENS, WIDTH, DEPTH, TREES = 3, 8, 2, 1  # 7 node rows
X = random_input((TOKENS, WIDTH))
GRAD_OUT = random_input((TOKENS, WIDTH), seed=2)
WEIGHT_IN, BIAS_IN, WEIGHT_OUT_T = random_weights(WIDTH, DEPTH, TREES)
_, NODES, LOGITS = walk_forward(X, WEIGHT_IN, BIAS_IN, WEIGHT_OUT_T, DEPTH, TREES)

GOOD_FORWARD = {"x": X, "weight_in": WEIGHT_IN, "bias_in": BIAS_IN, "weight_out_t": WEIGHT_OUT_T}
GOOD_FORWARD |= {"depth": DEPTH, "trees": TREES}
GOOD_BACKWARD = {"grad_out": GRAD_OUT, "x": X, "weight_in": WEIGHT_IN, "weight_out_t": WEIGHT_OUT_T}
GOOD_BACKWARD |= {"nodes": NODES, "logits": LOGITS}

BAD_DEPTH = "fff: need 0 <= depth <= 24 and trees >= 1"
BAD_WEIGHT_IN = "fff: weight_in must be (trees * (2**(depth+1) - 1), H) = ({}, {}), got {}"
SHARE_A_DTYPE = "fff: x and the weights must share a dtype"
BAD_BIAS = "fff: bias_in must be (7,) of the weights' dtype"
BAD_NODES = "fff_backward: nodes must be (N, K, D+1) int64"
BAD_LOGITS = "fff_backward: logits must be float32 shaped like nodes"
DISAGREE = "fff_backward: grad_out, x, nodes must agree on (N, H) and dtype"


def converted(names: tuple[str, ...], dtype: torch.dtype, good: dict) -> dict:
    return {name: good[name].to(dtype) for name in names}


def path(tokens: int = TOKENS, trees: int = TREES, levels: int = DEPTH + 1) -> dict:
    shape = (tokens, trees, levels)
    return {"nodes": torch.zeros(shape, dtype=torch.int64), "logits": torch.zeros(shape)}


LAYER_TENSORS = ("x", "weight_in", "bias_in", "weight_out_t")
FORWARD_CASES = {  # name: (the arguments replaced in GOOD_FORWARD, the kernel's message)
    "x not 2-d": ({"x": X[:, :, None]}, "fff: x must be (N, H), got [3, 8, 1]"),
    "x narrower than the weights": ({"x": X[:, :6]}, BAD_WEIGHT_IN.format(7, 6, [7, 8])),
    "weight rows for a deeper tree": ({"depth": 3}, BAD_WEIGHT_IN.format(15, 8, [7, 8])),
    "weight rows for two trees": ({"trees": 2}, BAD_WEIGHT_IN.format(14, 8, [7, 8])),
    "weight_in not 2-d": ({"weight_in": WEIGHT_IN.flatten()}, BAD_WEIGHT_IN.format(7, 8, [56])),
    "negative depth": ({"depth": -1}, BAD_DEPTH),
    "depth beyond the kernel's": ({"depth": 25}, BAD_DEPTH),
    "no trees": ({"trees": 0}, BAD_DEPTH),
    "weight_out_t transposed": ({"weight_out_t": WEIGHT_OUT_T.T}, "fff: weight_out_t must be shaped like weight_in"),
    "float64": (
        converted(LAYER_TENSORS, torch.float64, GOOD_FORWARD),
        "fff: the CPU kernel supports float32 and bfloat16, got Double",
    ),
    "float16": (
        converted(LAYER_TENSORS, torch.float16, GOOD_FORWARD),
        "fff: the CPU kernel supports float32 and bfloat16, got Half",
    ),
    "int64": (
        converted(LAYER_TENSORS, torch.int64, GOOD_FORWARD),
        "fff: the CPU kernel supports float32 and bfloat16, got Long",
    ),
    "bfloat16 x": ({"x": X.bfloat16()}, SHARE_A_DTYPE),
    "bfloat16 weight_in": ({"weight_in": WEIGHT_IN.bfloat16()}, SHARE_A_DTYPE),
    "bfloat16 weight_out_t": ({"weight_out_t": WEIGHT_OUT_T.bfloat16()}, SHARE_A_DTYPE),
    "bias too short": ({"bias_in": BIAS_IN[:3]}, BAD_BIAS),
    "bias not 1-d": ({"bias_in": BIAS_IN[None]}, BAD_BIAS),
    "float64 bias": ({"bias_in": BIAS_IN.double()}, BAD_BIAS),
}
BACKWARD_CASES = {  # name: (the arguments replaced in GOOD_BACKWARD, the kernel's message)
    "float nodes": ({"nodes": NODES.float()}, BAD_NODES),
    "nodes without the tree axis": ({"nodes": NODES[:, 0], "logits": LOGITS[:, 0]}, BAD_NODES),
    "float64 logits": ({"logits": LOGITS.double()}, BAD_LOGITS),
    "logits a level short": ({"logits": LOGITS[:, :, :2]}, BAD_LOGITS),
    "path of a deeper tree": (path(levels=4), BAD_WEIGHT_IN.format(15, 8, [7, 8])),
    "path through two trees": (path(trees=2), BAD_WEIGHT_IN.format(14, 8, [7, 8])),
    "path without levels": (path(levels=0), BAD_DEPTH),
    "path of another token count": (path(tokens=4), DISAGREE),
    "x narrower than the weights": ({"x": X[:, :6], "grad_out": GRAD_OUT[:, :6]}, BAD_WEIGHT_IN.format(7, 6, [7, 8])),
    "grad_out narrower than x": ({"grad_out": GRAD_OUT[:, :6]}, DISAGREE),
    "bfloat16 grad_out": ({"grad_out": GRAD_OUT.bfloat16()}, DISAGREE),
    "bfloat16 weight_in": ({"weight_in": WEIGHT_IN.bfloat16()}, SHARE_A_DTYPE),
    "float64": (
        converted(("grad_out", "x", "weight_in", "weight_out_t"), torch.float64, GOOD_BACKWARD),
        "fff: the CPU kernel supports float32 and bfloat16, got Double",
    ),
}
BAD_CALLS = [
    pytest.param(op, tuple({**good, **changes}.values()), message, id=f"{op.__name__}: {name}")
    for op, good, cases in (
        (ops.fff_infer, GOOD_FORWARD, FORWARD_CASES),
        (ops.fff_forward, GOOD_FORWARD, FORWARD_CASES),
        (ops.fff_backward, GOOD_BACKWARD, BACKWARD_CASES),
    )
    for name, (changes, message) in cases.items()
]


class CallOp(torch.nn.Module):
    """``op`` with its int arguments fixed: a module of tensors only, for ``torch.export``."""

    def __init__(self, op: Callable, args: tuple) -> None:
        super().__init__()
        self.op = op
        self.constants = {i: arg for i, arg in enumerate(args) if not isinstance(arg, Tensor)}
        self.arity = len(args)

    def forward(self, *tensors: Tensor):
        given = iter(tensors)
        return self.op(*(self.constants[i] if i in self.constants else next(given) for i in range(self.arity)))


def tensors_of(args: tuple) -> tuple[Tensor, ...]:
    return tuple(arg for arg in args if isinstance(arg, Tensor))


@needs_kernel
@pytest.mark.parametrize("op,args,message", BAD_CALLS)
def test_the_kernel_rejects_bad_input(op, args, message):
    with pytest.raises(RuntimeError) as raised:
        op(*args)
    assert str(raised.value) == message


@pytest.mark.parametrize("op,args,message", BAD_CALLS)
def test_the_fake_rejects_it_with_the_kernels_message(op, args, message):
    mode = FakeTensorMode()
    fake_args = tuple(mode.from_tensor(arg) if isinstance(arg, Tensor) else arg for arg in args)
    with mode, pytest.raises(RuntimeError) as raised:
        op(*fake_args)
    assert str(raised.value) == message


@pytest.mark.parametrize("op,args,message", BAD_CALLS)
def test_torch_compile_rejects_it_while_tracing(op, args, message):
    graphs = []

    def backend(graph: torch.fx.GraphModule, example_inputs):
        graphs.append(graph)
        return graph

    torch.compiler.reset()
    compiled = torch.compile(op, fullgraph=True, backend=backend, dynamic=False)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        compiled(*args)
    assert not graphs  # the error came from tracing, not from running a compiled graph


@pytest.mark.parametrize("op,args,message", BAD_CALLS)
def test_torch_export_rejects_it(op, args, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        torch.export.export(CallOp(op, args), tensors_of(args))


TOKEN_AXIS = {"grad_out", "x", "nodes", "logits"}  # the arguments whose first dimension is the token count


def good_arguments(op: Callable, tokens: int, dtype: torch.dtype) -> dict:
    weight_in, bias_in, weight_out_t = random_weights(WIDTH, DEPTH, 2, dtype)
    x = random_input((tokens, WIDTH), dtype, seed=tokens)
    forward = {"x": x, "weight_in": weight_in, "bias_in": bias_in, "weight_out_t": weight_out_t}
    forward |= {"depth": DEPTH, "trees": 2}
    if op is not ops.fff_backward:
        return forward
    _, nodes, logits = ops.fff_forward(*forward.values())
    grad_out = random_input((tokens, WIDTH), dtype, seed=tokens + 1)
    return {"grad_out": grad_out, "x": x, "weight_in": weight_in, "weight_out_t": weight_out_t} | {
        "nodes": nodes,
        "logits": logits,
    }


def assert_same_bits(actual, expected) -> None:
    actual, expected = (value if isinstance(value, tuple | list) else (value,) for value in (actual, expected))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == e.dtype and torch.equal(a, e)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", [ops.fff_infer, ops.fff_forward, ops.fff_backward], ids=lambda op: op.__name__)
def test_good_input_compiles_and_exports_to_the_eager_bits(op, dtype):
    """Under ``torch.compile`` and in a program exported for any token count, the op gives the eager bits: the
    checks pass good input and do not pin the token count."""
    named = good_arguments(op, 5, dtype)
    args = tuple(named.values())
    expected = op(*args)
    torch.compiler.reset()
    assert_same_bits(torch.compile(op, fullgraph=True, backend="aot_eager", dynamic=False)(*args), expected)
    tokens = Dim("tokens")
    axes = tuple({0: tokens} if name in TOKEN_AXIS else None for name, arg in named.items() if isinstance(arg, Tensor))
    program = torch.export.export(CallOp(op, args), tensors_of(args), dynamic_shapes={"tensors": axes})
    other = tuple(good_arguments(op, 9, dtype).values())
    assert_same_bits(program.module()(*tensors_of(other)), op(*other))


@needs_kernel
def test_node_indices_are_checked_by_the_kernel_alone():
    """A value check: the kernel makes it; fake tensors have no values, so tracing lets it through."""
    args = {**GOOD_BACKWARD, "nodes": NODES + 100}
    with pytest.raises(RuntimeError, match="fff_backward: node index 100 out of range"):
        ops.fff_backward(*args.values())
    mode = FakeTensorMode()
    with mode:
        grads = ops.fff_backward(*(mode.from_tensor(arg) for arg in args.values()))
    assert [grad.shape for grad in grads] == [X.shape, WEIGHT_IN.shape, BIAS_IN.shape, WEIGHT_OUT_T.shape]


def test_the_wrappers_call_the_registered_ops():
    """The typed wrappers are what tracing records: the registered operators themselves."""
    graph = torch.export.export(
        CallOp(ops.fff_forward, tuple(GOOD_FORWARD.values())), tensors_of(tuple(GOOD_FORWARD.values()))
    ).graph
    targets = {node.target for node in graph.nodes if node.op == "call_function"}
    assert torch.ops.ultrafastbert.fff_forward.default in targets
