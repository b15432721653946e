"""The compiled CPU kernel (``torch.ops.ultrafastbert.*``): against the reference on a random shape space,
forward and all four gradients, float32 and bfloat16; its operator registrations; and the clean fallback."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from fff_helpers import (
    TOLERANCE,
    assert_gradients_close,
    needs_kernel,
    paths_agree_or_tie,
    random_input,
    random_layer,
    random_weights,
    relative_error,
    run_with_grads,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ultrafastbert import FFF
from ultrafastbert.fff import kernels, nodes_per_tree, ops
from ultrafastbert.fff.sparse import walk_backward, walk_forward


def test_kernel_builds_wherever_there_is_a_compiler():
    """`make test` must exercise the kernel, not silently fall back, on any machine with a C++ compiler."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the fallback is what this machine gets")
    assert kernels.available(), kernels.failure()


def assert_kernel_matches_reference(layer: FFF, x: torch.Tensor) -> None:
    tol = TOLERANCE[x.dtype]
    ref_out, ref_path, ref_grads = run_with_grads(layer, x, "reference")
    out, path, grads = run_with_grads(layer, x, "kernel")
    if not paths_agree_or_tie(layer, x, path, ref_path):
        assume(False)
        return
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    assert relative_error(out, ref_out) <= tol
    assert_gradients_close(layer, x, grads, ref_grads, tol)
    with torch.no_grad():
        layer.impl = "kernel"
        inference = layer(x)
        inference_with_path, inference_path = layer(x, return_path=True)
    assert torch.equal(inference, out) and torch.equal(inference_with_path, out)
    assert torch.equal(inference_path, path)


@st.composite
def kernel_shapes(draw):
    depth = draw(st.integers(0, 11))
    trees = draw(st.integers(1, 4))
    width = draw(st.one_of(st.integers(1, 70), st.sampled_from([127, 255, 768, 1024])))
    while trees * nodes_per_tree(depth) * width > 1_500_000:  # keeps one example well under a second
        depth -= 1
    lead = tuple(draw(st.lists(st.integers(0, 9), min_size=1, max_size=3)))
    return depth, trees, width, lead


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(shape=kernel_shapes(), seed=st.integers(0, 2**16))
def test_kernel_matches_reference_float32(shape, seed):
    depth, trees, width, lead = shape
    layer = random_layer(width, depth, trees, seed=seed)
    assert_kernel_matches_reference(layer, random_input((*lead, width), seed=seed + 1))


@needs_kernel
@settings(max_examples=20, deadline=None)
@given(shape=kernel_shapes(), seed=st.integers(0, 2**16))
def test_kernel_matches_reference_bfloat16(shape, seed):
    depth, trees, width, lead = shape
    layer = random_layer(width, depth, trees, dtype=torch.bfloat16, seed=seed)
    assert_kernel_matches_reference(layer, random_input((*lead, width), dtype=torch.bfloat16, seed=seed + 1))


@needs_kernel
@pytest.mark.parametrize(
    "depth,trees,width,lead,dtype",
    [
        (11, 1, 768, (1,), torch.float32),  # the published layer, one token
        (11, 1, 768, (2, 65), torch.float32),  # the published layer, a batch over several tiles
        (0, 3, 1, (5,), torch.float32),  # width 1, depth 0
        (15, 1, 8, (9,), torch.float32),  # deepest supported: 65535 nodes
        (13, 2, 5, (3, 3), torch.bfloat16),
        (4, 4, 1023, (0,), torch.float32),  # an empty batch
        (6, 2, 17, (7, 0, 3), torch.bfloat16),
    ],
)
def test_kernel_named_cases(depth, trees, width, lead, dtype):
    layer = random_layer(width, depth, trees, dtype=dtype, seed=depth + trees + width)
    assert_kernel_matches_reference(layer, random_input((*lead, width), dtype=dtype))


def assert_ops_match_walk(x, weight_in, bias_in, weight_out_t, depth, trees, tol):
    """The three ops against the pure-PyTorch contract ``walk_forward`` / ``walk_backward``."""
    expected, expected_nodes, expected_logits = walk_forward(x, weight_in, bias_in, weight_out_t, depth, trees)
    out, nodes, logits = ops.fff_forward(x, weight_in, bias_in, weight_out_t, depth, trees)
    assert torch.equal(nodes, expected_nodes)
    assert relative_error(logits, expected_logits) <= 1e-5
    assert relative_error(out, expected) <= tol
    assert torch.equal(ops.fff_infer(x, weight_in, bias_in, weight_out_t, depth, trees), out)
    grad_out = random_input(tuple(x.shape), dtype=x.dtype, seed=7)
    expected_grads = walk_backward(grad_out, x, weight_in, weight_out_t, expected_nodes, expected_logits)
    grads = ops.fff_backward(grad_out, x, weight_in, weight_out_t, nodes, logits)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        assert grad.dtype == expected_grad.dtype and grad.shape == expected_grad.shape
        assert relative_error(grad, expected_grad) <= tol


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "tokens,width,depth,trees",
    [
        (4099, 16, 13, 1),  # large batch: tokens bucketed by subtree, two level segments
        (2600, 1024, 12, 1),  # wide rows: three level segments
        (3001, 33, 9, 3),  # large batch, several trees, odd width
    ],
)
def test_large_batches_take_the_bucketed_walk_and_agree(tokens, width, depth, trees, dtype):
    weight_in, bias_in, weight_out_t = random_weights(width, depth, trees, dtype, seed=tokens)
    x = random_input((tokens, width), dtype=dtype, seed=tokens + 1)
    assert_ops_match_walk(x, weight_in, bias_in, weight_out_t, depth, trees, TOLERANCE[dtype])


@needs_kernel
def test_a_token_gets_the_same_bits_alone_as_in_any_batch():
    """Every dot product and output row is summed in one fixed order, whatever the batch or thread count."""
    weight_in, bias_in, weight_out_t = random_weights(768, 11, 1, torch.float32)
    x = random_input((4096, 768))
    batch = ops.fff_infer(x, weight_in, bias_in, weight_out_t, 11, 1)
    for token in (0, 1234, 4095):
        alone = ops.fff_infer(x[token : token + 1], weight_in, bias_in, weight_out_t, 11, 1)
        assert torch.equal(alone[0], batch[token])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single_thread = ops.fff_infer(x, weight_in, bias_in, weight_out_t, 11, 1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single_thread, batch)


# One token takes its own walk (forward.cpp, walk_one_token): rows of at most 32 KB (kSpeculateRowBytes) fetch both
# children ahead, wider rows start the chosen child's pages; the cases take both branches, one tree and several.
ONE_TOKEN_CASES = [
    (0, 1, 1, torch.float32),
    (0, 3, 17, torch.bfloat16),
    (5, 2, 33, torch.float32),
    (7, 1, 768, torch.bfloat16),
    (3, 2, 8209, torch.float32),  # 32.8 KB rows: not fetched ahead
    (2, 1, 12288, torch.bfloat16),  # the GPT-3 layer's width, 24 KB rows: fetched ahead
    (2, 3, 16411, torch.bfloat16),  # 32.8 KB rows
]


@needs_kernel
@pytest.mark.parametrize("depth,trees,width,dtype", ONE_TOKEN_CASES)
def test_one_token_walk_matches_reference(depth, trees, width, dtype):
    layer = random_layer(width, depth, trees, dtype=dtype, seed=width + depth)
    assert_kernel_matches_reference(layer, random_input((1, width), dtype=dtype, seed=depth))


@needs_kernel
@settings(max_examples=20, deadline=None)
@given(shape=kernel_shapes(), dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 2**16))
def test_one_token_walk_matches_reference_on_random_shapes(shape, dtype, seed):
    depth, trees, width, _ = shape
    layer = random_layer(width, depth, trees, dtype=dtype, seed=seed)
    assert_kernel_matches_reference(layer, random_input((1, width), dtype=dtype, seed=seed + 1))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width,depth,trees", [(33, 6, 3), (8209, 3, 2)])
def test_one_token_walk_gives_the_batch_bits(width, depth, trees, dtype):
    """The one-token walk sums every logit and output row in the batch walk's order, routing offsets included."""
    weight_in, bias_in, weight_out_t = random_weights(width, depth, trees, dtype, seed=width)
    offset = torch.randn(weight_in.shape[0], generator=torch.Generator().manual_seed(3)) * 0.1
    x = random_input((9, width), dtype=dtype)
    batch = ops.fff_forward(x, weight_in, bias_in, weight_out_t, depth, trees, offset)
    for token in (0, 8):
        alone = ops.fff_forward(x[token : token + 1], weight_in, bias_in, weight_out_t, depth, trees, offset)
        for got, expected in zip(alone, batch, strict=True):
            assert torch.equal(got[0], expected[token])
        inferred = ops.fff_infer(x[token : token + 1], weight_in, bias_in, weight_out_t, depth, trees, offset)
        assert torch.equal(inferred[0], batch[0][token])


@needs_kernel
def test_outputs_are_not_overwritten_by_later_calls():
    """Large outputs come from a buffer pool; a buffer is reused only once its tensor is gone."""
    weight_in, bias_in, weight_out_t = random_weights(256, 6, 1, torch.float32)
    first_x, second_x = random_input((2048, 256), seed=1), random_input((2048, 256), seed=2)
    first = ops.fff_infer(first_x, weight_in, bias_in, weight_out_t, 6, 1)
    kept = first.clone()
    second = ops.fff_infer(second_x, weight_in, bias_in, weight_out_t, 6, 1)
    assert torch.equal(first, kept) and first.data_ptr() != second.data_ptr()
    del first
    third = ops.fff_infer(first_x, weight_in, bias_in, weight_out_t, 6, 1)
    assert torch.equal(third, kept)


_POOL_SCRIPT = """
import torch
from ultrafastbert.fff import kernels, ops
assert kernels.available(), kernels.failure()
torch.manual_seed(0)

def layer(width, depth):
    n = 2 ** (depth + 1) - 1
    return torch.randn(n, width) * 0.1, torch.randn(n) * 0.1, torch.randn(n, width) * 0.1

def rss_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20

# reuse: a smaller batch takes a freed larger buffer when it fills at least half of it
w = layer(256, 3)
first = ops.fff_infer(torch.randn(3000, 256), *w, 3, 1)
kept = first.data_ptr()
del first
x = torch.randn(2000, 256)
second = ops.fff_infer(x, *w, 3, 1)
print("reused", second.data_ptr() == kept)
from ultrafastbert.fff.sparse import walk_forward
print("right", torch.allclose(second, walk_forward(x, *w, 3, 1)[0], rtol=1e-5, atol=1e-6))
del second
third = ops.fff_infer(torch.randn(1400, 256), *w, 3, 1)  # under half of the 3 MB buffer: a fresh one
print("too small reused", third.data_ptr() == kept)
del third

# eviction: five 256 MiB outputs come back; the pool keeps 1 GiB, the oldest one is freed
w = layer(4096, 0)
x = torch.randn(16384, 4096)
base = rss_mib()
outs = [ops.fff_infer(x, *w, 0, 1) for _ in range(5)]
pointers = [out.data_ptr() for out in outs]
while outs:
    outs.pop(0)  # returned oldest first: the first one is the one to go
print("held MiB", round(rss_mib() - base))
again = [ops.fff_infer(x, *w, 0, 1) for _ in range(4)]
print("kept newest", sorted(out.data_ptr() for out in again) == sorted(pointers[1:]))
"""


@pytest.mark.slow
@needs_kernel
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads resident memory from /proc")
def test_buffer_pool_reuses_larger_buffers_and_frees_the_oldest_beyond_its_budget():
    """In a fresh process (an empty pool): a batch reuses a freed buffer up to twice its size, with the right
    values, but not a larger one; beyond 1 GiB of freed buffers the least recently returned one is released."""
    result = subprocess.run([sys.executable, "-c", _POOL_SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.rsplit(" ", 1) for line in result.stdout.strip().splitlines())
    assert lines["reused"] == "True" and lines["right"] == "True" and lines["too small reused"] == "False"
    assert 900 <= int(lines["held MiB"]) <= 1150, lines  # 1 GiB kept, not 1.25
    assert lines["kept newest"] == "True"


@needs_kernel
def test_ops_accept_non_contiguous_inputs():
    weight_in, bias_in, weight_out_t = random_weights(24, 4, 2, torch.float32)
    x = random_input((24, 10)).T  # (10, 24), not contiguous
    out = ops.fff_infer(x, weight_in, bias_in, weight_out_t.T.contiguous().T, 4, 2)
    expected, _, _ = walk_forward(x.contiguous(), weight_in, bias_in, weight_out_t, 4, 2)
    assert relative_error(out, expected) <= 1e-6


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_operator_registrations(dtype):
    """Schemas, fake (meta) implementations, autograd registration and AOT dispatch, checked by PyTorch."""
    weight_in, bias_in, weight_out_t = random_weights(20, 3, 2, dtype)
    x = random_input((6, 20), dtype=dtype)
    operators = torch.ops.ultrafastbert
    torch.library.opcheck(operators.fff_infer.default, (x, weight_in, bias_in, weight_out_t, 3, 2))
    train_args = tuple(t.clone().requires_grad_(True) for t in (x, weight_in, bias_in, weight_out_t))
    torch.library.opcheck(operators.fff_forward.default, (*train_args, 3, 2))
    _, nodes, logits = ops.fff_forward(x, weight_in, bias_in, weight_out_t, 3, 2)
    grad_out = random_input((6, 20), dtype=dtype)
    torch.library.opcheck(operators.fff_backward.default, (grad_out, x, weight_in, weight_out_t, nodes, logits))


@needs_kernel
def test_zero_logit_goes_left_and_nan_stays_in_its_row():
    layer = random_layer(8, 3, 2, seed=3)
    with torch.no_grad():
        layer.linear_in.weight[0].zero_()  # tree 0 root: logit exactly 0
        layer.linear_in.bias[0] = 0.0
    x = random_input((4, 8))
    x[2, 5] = math.nan
    with torch.no_grad():
        layer.impl = "reference"
        expected, expected_path = layer(x, return_path=True)
        layer.impl = "kernel"
        out, path = layer(x, return_path=True)
    assert torch.equal(path, expected_path)
    assert (path[:, 0, 1] == 1).all()
    assert torch.isnan(out[2]).all() and torch.isfinite(out[[0, 1, 3]]).all()
    assert relative_error(out[[0, 1, 3]], expected[[0, 1, 3]]) <= 1e-5


@needs_kernel
def test_auto_uses_the_kernel_and_inference_saves_nothing(monkeypatch):
    """``auto`` picks the kernel on CPU for float32 and bfloat16; without grad it calls the inference op with
    the cached ``linear_out.weight.T``; with grad, the differentiable forward."""
    layer = random_layer(16, 4, 2)
    x = random_input((3, 16))
    assert layer.resolve_impl(x) == "kernel"
    assert layer.to(torch.bfloat16).resolve_impl(x.bfloat16()) == "kernel"
    layer.float()
    assert layer.double().resolve_impl(x.double()) == "sparse"
    layer.float()
    calls = []
    infer, forward = ops.fff_infer, ops.fff_forward
    monkeypatch.setattr(ops, "fff_infer", lambda *args: calls.append(("infer", args[3])) or infer(*args))
    monkeypatch.setattr(ops, "fff_forward", lambda *args: calls.append(("forward", args[3])) or forward(*args))
    with torch.no_grad():
        layer(x)
        layer(x.reshape(3, 1, 16))
    assert [name for name, _ in calls] == ["infer", "infer"]
    assert calls[0][1] is layer._weight_out_t() and calls[1][1] is layer._weight_out_t()
    calls.clear()
    layer(x).sum().backward()
    assert [name for name, _ in calls] == ["forward"] and layer.linear_out.weight.grad is not None


@needs_kernel
def test_torch_compile_traces_through_the_kernel():
    layer = random_layer(32, 5, 2)
    layer.impl = "kernel"
    x = random_input((7, 32))
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    layer.zero_grad()
    expected = layer(x)
    assert torch.equal(out, expected)


@needs_kernel
@pytest.mark.parametrize("grad", [False, True])
def test_torch_export_captures_the_kernel_op(grad):
    """torch.export (no TorchScript): the exported program calls our op, takes any token count and gives the
    eager module's bits; with grad enabled it captures the training forward."""
    from torch.export import Dim

    layer = random_layer(32, 4, 2)
    layer.impl = "kernel"
    layer.eval()
    with torch.set_grad_enabled(grad):
        program = torch.export.export(layer, (random_input((5, 32)),), dynamic_shapes=({0: Dim("tokens")},))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert ("ultrafastbert.fff_forward.default" if grad else "ultrafastbert.fff_infer.default") in targets
    x = random_input((9, 32), seed=3)
    with torch.no_grad():
        assert torch.equal(program.module()(x), layer(x))


def test_unavailable_kernel_falls_back_with_one_warning(monkeypatch):
    """Where the kernel cannot be built: one warning, and ``auto`` takes the pure-PyTorch paths."""
    monkeypatch.setattr(kernels, "_available", None)
    monkeypatch.setattr(kernels, "_failure", None)

    def fail_to_build():
        raise OSError("no C++ compiler found")

    monkeypatch.setattr(kernels, "_build", fail_to_build)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not kernels.available()
        assert not kernels.available()
    assert len(caught) == 1 and "no C++ compiler found" in str(caught[0].message)
    assert kernels.failure() == "OSError: no C++ compiler found"
    assert "pure-PyTorch" in str(caught[0].message)
    layer = random_layer(16, 4, 2)
    x = random_input((5, 16))
    assert layer.resolve_impl(x) == "sparse"
    with torch.no_grad():
        assert layer.resolve_impl(x) == "walk"
        layer.impl = "reference"
        expected = layer(x)
        layer.impl = "auto"
        assert relative_error(layer(x), expected) <= 1e-5
    layer.impl = "kernel"
    with pytest.raises(RuntimeError, match="impl='kernel' needs"):
        layer(x)


def test_instruction_set_is_chosen_by_the_environment_and_keys_the_build(monkeypatch):
    """``ULTRAFASTBERT_KERNEL_ISA`` picks the -march flag and names the build folder, so two builds never share
    one; an unknown name or an instruction set the CPU lacks is a one-line error naming the variable."""
    monkeypatch.setattr(kernels, "_cpu_flags", lambda: "flags\t\t: fpu sse2 avx avx2 fma bmi1 bmi2 f16c movbe")
    monkeypatch.setattr(kernels.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv(kernels.ISA_VARIABLE, raising=False)
    assert kernels.isa() == "native" and "-march=native" in kernels.compiler_flags()
    native_folder = kernels.build_directory()
    monkeypatch.setenv(kernels.ISA_VARIABLE, "AVX2")
    assert kernels.isa() == "avx2" and "-march=x86-64-v3" in kernels.compiler_flags()
    avx2_folder = kernels.build_directory()
    assert native_folder != avx2_folder and "avx2" in avx2_folder.name
    monkeypatch.setenv(kernels.ISA_VARIABLE, "avx512")
    with pytest.raises(ValueError, match="ULTRAFASTBERT_KERNEL_ISA=avx512: this CPU cannot run avx512 code"):
        kernels.compiler_flags()
    monkeypatch.setenv(kernels.ISA_VARIABLE, "sse9")
    with pytest.raises(ValueError, match="'sse9' is not one of native, avx2, avx512"):
        kernels.build_directory()


def test_unknown_instruction_set_leaves_the_kernel_unavailable_with_one_warning(monkeypatch):
    monkeypatch.setattr(kernels, "_available", None)
    monkeypatch.setattr(kernels, "_failure", None)
    monkeypatch.setenv(kernels.ISA_VARIABLE, "sse9")
    with pytest.warns(RuntimeWarning, match="ULTRAFASTBERT_KERNEL_ISA='sse9' is not one of") as caught:
        assert not kernels.available()
    assert len(caught) == 1 and "\n" not in str(caught[0].message)


@needs_kernel
def test_output_weight_gradient_reaches_the_parameter_without_a_copy(monkeypatch):
    """The backward writes ``grad_weight_out_t`` transposed, in ``linear_out.weight``'s own layout, so autograd
    hands the kernel's buffer to the parameter instead of copying a full transposed matrix every step."""
    layer = random_layer(24, 5, 2)
    layer.impl = "kernel"
    buffers = []
    backward = ops.fff_backward

    def recording_backward(*args):
        grads = backward(*args)
        buffers.append(grads[3].data_ptr())
        return grads

    monkeypatch.setattr(ops, "fff_backward", recording_backward)
    layer(random_input((7, 24))).sum().backward()
    grad = layer.linear_out.weight.grad
    assert buffers == [grad.data_ptr()] and grad.is_contiguous()
