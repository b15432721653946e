"""The Triton kernels against the reference: ``python triton_check.py OUT [--device cpu|cuda]``.

``--device cpu`` (default) runs them on CPU tensors under Triton's interpreter. It is run in a fresh process by
``tests/test_triton.py`` because the interpreter must be switched on (``TRITON_INTERPRET=1``, set below) before
Triton is first imported, which a test process that may have imported ``torch._inductor`` cannot promise. The
kernels are registered as the CPU implementations of the ops here (this process never loads the compiled CPU
kernel, which owns that dispatch key otherwise). ``--device cuda`` runs the same cases compiled, on a GPU, through
the ops' CUDA registration. Writes ``OUT`` (JSON): per case, each quantity's error and tolerance and each exact
check's outcome; the test asserts on them.

Tolerances. Outputs: relative to the largest reference output. Gradients: relative to the largest sum of absolute
terms of one entry (float64), as the CPU kernel's tests do (``docs/design.md`` §1): a gradient entry can cancel to
near zero, and two correct float32 summation orders then differ by more than 1e-5 of the entry itself. float32
gets 1e-5; bfloat16 2e-2 (its outputs are rounded to 8 bits: 2**-8 relative, and the interpreter rounds float32
to bfloat16 toward zero where a GPU rounds to nearest, so up to one more unit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ARGS.add_argument("output", help="JSON file to write")
ARGS.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
ARGUMENTS = ARGS.parse_args()
DEVICE = ARGUMENTS.device
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports Triton

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

from ultrafastbert import FFF  # noqa: E402
from ultrafastbert.fff import ops, triton_kernels, triton_ops  # noqa: E402
from ultrafastbert.fff.reference import fff_reference, nodes_per_tree, visited_nodes_reference  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
# tf32 rounds the one-hot dot's inputs (dz * x, GELU(z) * g) to 10 mantissa bits: 2**-11 relative each.
TF32_TOLERANCE = 2e-3


def random_case(
    tokens: int, width: int, depth: int, trees: int, seed: int, offsets: bool = False
) -> dict[str, torch.Tensor]:
    """Random input, weights with random non-zero biases (zero biases would hide bias bugs), and upstream grad.
    Weights are ``nn.Linear``-shaped: ``weight_out`` is ``(H, K*n)``. With ``offsets``, a balancing layer's float32
    routing offsets as large as the logits, so that they change many paths."""
    generator = torch.Generator().manual_seed(seed)
    nodes = trees * nodes_per_tree(depth)
    case = {
        "x": torch.randn(tokens, width, generator=generator),
        "weight_in": torch.randn(nodes, width, generator=generator) * width**-0.5,
        "bias_in": torch.randn(nodes, generator=generator) * 0.5,
        "weight_out": torch.randn(width, nodes, generator=generator) * 0.1,
        "upstream": torch.randn(tokens, width, generator=generator),
    }
    if offsets:
        case["routing_offset"] = torch.randn(nodes, generator=generator)
    return {name: tensor.to(DEVICE) for name, tensor in case.items()}


def land_on_zero(case: dict[str, torch.Tensor], token: int, depth: int, trees: int) -> None:
    """Make ``token``'s root logit exactly 0 in every tree, whatever the summation order: its input and the root
    rows are put on a grid of 1/8 in [-2, 2], so every product and partial sum is exact in float32, and the root
    biases cancel the dot products exactly."""
    x, weight_in, bias_in = case["x"], case["weight_in"], case["bias_in"]
    x[token] = (x[token] * 8).round().clamp(-16, 16) / 8
    for tree in range(trees):
        root = tree * nodes_per_tree(depth)
        weight_in[root] = (weight_in[root] * 40).round().clamp(-16, 16) / 8
        bias_in[root] = -(x[token].double() @ weight_in[root].double()).float()


def gradient_scales(case, dtype, nodes: torch.Tensor) -> dict[str, float]:
    """For each gradient, the largest sum of absolute terms of one entry, in float64."""
    x, w_in, b_in = (case[k].to(dtype).double() for k in ("x", "weight_in", "bias_in"))
    w_out, upstream = case["weight_out"].to(dtype).double().abs(), case["upstream"].to(dtype).double().abs()
    visited = nodes.reshape(x.shape[0], -1)
    z = (x @ w_in.T + b_in).gather(1, visited)
    gelu_grad = 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    dz = gelu_grad.abs() * (upstream @ w_out).gather(1, visited)
    dense_dz = torch.zeros(x.shape[0], w_in.shape[0], dtype=torch.float64, device=x.device)
    dense_dz.scatter_add_(1, visited, dz)
    dense_act = torch.zeros_like(dense_dz).scatter_add_(1, visited, F.gelu(z).abs())
    sums = {
        "grad_x": dense_dz @ w_in.abs(),
        "grad_weight_in": dense_dz.T @ x.abs(),
        "grad_bias_in": dense_dz.sum(0),
        "grad_weight_out": dense_act.T @ upstream,
    }
    return {name: float(s.max()) if s.numel() else 0.0 for name, s in sums.items()}


def relative(actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None) -> float:
    actual, expected = actual.double(), expected.double()
    if expected.numel() == 0:
        return 0.0
    difference = (actual - expected).abs().max().item()
    scale = expected.abs().max().item() if scale is None else scale
    return difference / scale if scale > 0 else difference


def reference_with_grads(case, dtype, depth: int, trees: int):
    """The dense masking reference in ``dtype`` (computed in float32): output, paths, logits and autograd's four
    gradients (``grad_weight_out`` as ``linear_out.weight``'s)."""
    leaves = {k: case[k].detach().to(dtype).requires_grad_(True) for k in ("x", "weight_in", "bias_in", "weight_out")}
    offset = case.get("routing_offset")
    out = fff_reference(leaves["x"], leaves["weight_in"], leaves["bias_in"], leaves["weight_out"], depth, trees, offset)
    (out * case["upstream"].to(dtype)).sum().backward()
    nodes = visited_nodes_reference(leaves["x"].detach(), leaves["weight_in"].detach(), leaves["bias_in"].detach(),
                                    depth, trees, offset)  # fmt: skip
    x, w_in, b_in = (leaves[k].detach().float() for k in ("x", "weight_in", "bias_in"))
    logits = (x @ w_in.T + b_in).gather(1, nodes.reshape(x.shape[0], -1)).reshape(nodes.shape)
    grads = {f"grad_{name}": leaf.grad for name, leaf in leaves.items()}
    return out.detach(), nodes, logits, grads


def run_kernels(case, dtype, depth: int, trees: int, precision: str | None = None, **blocks):
    """The three Triton launchers on the case (``grad_weight_out`` transposed back to ``linear_out``'s layout)."""
    x, w_in, b_in = (case[k].to(dtype) for k in ("x", "weight_in", "bias_in"))
    w_out_t = case["weight_out"].to(dtype).t().contiguous()
    offset = case.get("routing_offset")
    inference = triton_kernels.fff_infer(x, w_in, b_in, w_out_t, depth, trees, offset, **blocks)
    out, nodes, logits = triton_kernels.fff_forward(x, w_in, b_in, w_out_t, depth, trees, offset, **blocks)
    upstream = case["upstream"].to(dtype)
    grads = triton_kernels.fff_backward(upstream, x, w_in, w_out_t, nodes, logits, precision=precision, **blocks)
    names = ("grad_x", "grad_weight_in", "grad_bias_in", "grad_weight_out")
    grads = dict(zip(names, (*grads[:3], grads[3].t()), strict=True))
    return inference, out, nodes, logits, grads


def near_ties(case, dtype, nodes: torch.Tensor, ref_nodes: torch.Tensor) -> list[int] | None:
    """The tokens whose paths differ from the reference's, if every difference starts at a genuine near-tie (a
    logit within float32 summation noise of 0, where two correct summation orders may decide differently); None
    if any does not."""
    x, w_in, b_in = (case[k].to(dtype).double() for k in ("x", "weight_in", "bias_in"))
    offset = case.get("routing_offset")
    logits = x @ w_in.T + b_in + (0.0 if offset is None else offset.double())
    scale = x.abs() @ w_in.abs().T + b_in.abs() + (0.0 if offset is None else offset.double().abs())
    tokens = sorted({token for token, *_ in (nodes != ref_nodes).nonzero().tolist()})
    for token, tree in (nodes != ref_nodes).any(dim=2).nonzero().tolist():
        level = int((nodes[token, tree] != ref_nodes[token, tree]).nonzero()[0]) - 1
        node = int(ref_nodes[token, tree, level])
        if abs(logits[token, node]) > 1e-5 * scale[token, node]:
            return None
    return tokens


def compare(case, dtype, depth: int, trees: int, precision: str | None = None, **blocks) -> dict:
    """Everything the kernels produce against the reference: a dict of checks for the test to assert on. A token
    that a near-tie sent another way than the reference (possible on a GPU, whose summation order differs from
    the reference's matrix product; not seen with these seeds on CPU) is reported and left out of a second run."""
    tolerance = TOLERANCE[dtype] if precision in (None, "ieee") else TF32_TOLERANCE
    ref_out, ref_nodes, ref_logits, ref_grads = reference_with_grads(case, dtype, depth, trees)
    inference, out, nodes, logits, grads = run_kernels(case, dtype, depth, trees, precision=precision, **blocks)
    if nodes.shape == ref_nodes.shape and not torch.equal(nodes, ref_nodes):
        tied = near_ties(case, dtype, nodes, ref_nodes)
        if tied is not None and len(tied) < nodes.shape[0]:
            keep = [token for token in range(nodes.shape[0]) if token not in tied]
            subset = {**case, "x": case["x"][keep], "upstream": case["upstream"][keep]}
            result = compare(subset, dtype, depth, trees, precision, **blocks)
            result["exact"]["near-tie tokens left out"] = len(tied)
            return result
    scales = gradient_scales(case, dtype, ref_nodes)
    errors = {
        "out": {"error": relative(out, ref_out), "tolerance": tolerance},
        # logits are float32 for every dtype: summation order only
        "logits": {"error": relative(logits, ref_logits), "tolerance": 1e-5},
    }
    for name, grad in grads.items():
        errors[name] = {"error": relative(grad, ref_grads[name], scales[name]), "tolerance": tolerance}
    exact = {
        "paths_equal_reference": torch.equal(nodes, ref_nodes),
        "inference_equals_forward": torch.equal(inference, out),
        "dtypes": all(t.dtype == dtype for t in (out, *grads.values())) and logits.dtype == torch.float32,
        "nodes_int64": nodes.dtype == torch.int64 and tuple(nodes.shape) == (out.shape[0], trees, depth + 1),
    }
    return {"errors": errors, "exact": exact, "nodes": nodes, "logits": logits}


def shape_cases() -> dict[str, dict]:
    """Random odd shapes; small widths and blocks of 16 so that several token blocks and width chunks (with
    ragged ends) run, and trees deep enough for both weight-gradient reductions (one-hot dot: levels 0-4; per
    token: deeper)."""
    blocks = {"block_tokens": 16, "block_width": 16}
    cases = {}
    for name, (tokens, width, depth, trees, seed) in {
        "one token": (1, 37, 4, 1, 1),
        "odd shapes, three trees": (21, 37, 4, 3, 2),
        "depth 0, two trees": (19, 21, 0, 2, 3),
        "depth 7": (19, 19, 7, 1, 4),
        "depth 15, width 3": (5, 3, 15, 1, 5),
    }.items():
        case = random_case(tokens, width, depth, trees, seed)
        cases[name] = compare(case, torch.float32, depth, trees, **blocks)
    return cases


def offset_cases() -> dict[str, dict]:
    """A balancing layer's routing offsets (routing on ``logit + offset``, activations and gradients on ``logit``):
    one token, odd shapes with three trees, depth 0, a deep tree, and bfloat16 tensors."""
    blocks = {"block_tokens": 16, "block_width": 16}
    cases = {}
    for name, (tokens, width, depth, trees, seed, dtype) in {
        "offsets: one token": (1, 37, 4, 1, 21, torch.float32),
        "offsets: odd shapes, three trees": (21, 37, 4, 3, 22, torch.float32),
        "offsets: depth 0, two trees": (19, 21, 0, 2, 23, torch.float32),
        "offsets: depth 7": (19, 19, 7, 1, 24, torch.float32),
        "offsets: bfloat16 tensors": (23, 29, 5, 1, 25, torch.bfloat16),
    }.items():
        case = random_case(tokens, width, depth, trees, seed, offsets=True)
        cases[name] = compare(case, dtype, depth, trees, **blocks)
        x, w_in, b_in = (case[k].to(dtype) for k in ("x", "weight_in", "bias_in"))
        # (one token may by chance keep its path; a depth-0 tree has no choice to make)
        changed = not torch.equal(cases[name]["nodes"], visited_nodes_reference(x, w_in, b_in, depth, trees))
        cases[name]["exact"]["offsets change paths"] = tokens == 1 or depth == 0 or changed
    return cases


def zero_logit_cases() -> dict[str, dict]:
    """A token whose root logit is exactly 0 in every tree: it must go left (strict ``>``), in the kernels as in
    the reference."""
    depth, trees, token = 3, 2, 4
    case = random_case(9, 21, depth, trees, seed=6)
    land_on_zero(case, token, depth, trees)
    result = compare(case, torch.float32, depth, trees, block_tokens=16, block_width=16)
    roots = [tree * nodes_per_tree(depth) for tree in range(trees)]
    result["exact"]["root logits exactly 0"] = bool((result["logits"][token, :, 0] == 0).all())
    result["exact"]["went left"] = result["nodes"][token, :, 1].tolist() == [root + 1 for root in roots]
    return {"zero logit goes left": result}


def nan_cases() -> dict[str, dict]:
    """A token with a NaN input: NaN logits go left at every level (the leftmost path), its output row is NaN,
    and the other tokens are unaffected. Forward only (a NaN poisons every weight gradient it touches)."""
    depth, trees, token = 4, 2, 3
    case = random_case(11, 13, depth, trees, seed=7)
    case["x"][token, 5] = float("nan")
    x, w_in, b_in, w_out = (case[k] for k in ("x", "weight_in", "bias_in", "weight_out"))
    ref_out = fff_reference(x, w_in, b_in, w_out, depth, trees)
    ref_nodes = visited_nodes_reference(x, w_in, b_in, depth, trees)
    out, nodes, _ = triton_kernels.fff_forward(x, w_in, b_in, w_out.t().contiguous(), depth, trees, block_width=16)
    leftmost = [[tree * nodes_per_tree(depth) + 2**level - 1 for level in range(depth + 1)] for tree in range(trees)]
    others = [row for row in range(x.shape[0]) if row != token]
    result = {
        "errors": {"out of the other tokens": {"error": relative(out[others], ref_out[others]), "tolerance": 1e-5}},
        "exact": {
            "paths_equal_reference": torch.equal(nodes, ref_nodes),
            "leftmost path": nodes[token].tolist() == leftmost,
            "output row NaN": bool(out[token].isnan().all()),
            "other rows finite": bool(out[others].isfinite().all()),
        },
    }
    return {"NaN goes left": result}


def bfloat16_cases() -> dict[str, dict]:
    """bfloat16 twice: values rounded to bfloat16 and computed in float32 (the interpreter has no bfloat16
    arithmetic; this is what the kernels compute after their exact upcast on load), and bfloat16 tensors end to end
    (loads and the final rounding; the interpreter rounds toward zero, a GPU to nearest)."""
    case = random_case(23, 29, 5, 2, seed=8)
    as_float32 = {k: v.bfloat16().float() for k, v in case.items()}
    one_tree = random_case(23, 29, 5, 1, seed=9)  # one tree: the kernels round the output and grad_x themselves
    return {
        "bfloat16 values in float32": compare(as_float32, torch.float32, 5, 2, block_width=16),
        "bfloat16 tensors": compare(one_tree, torch.bfloat16, 5, 1, block_width=16),
    }


def layer_cases() -> dict[str, dict]:
    """The layer with ``impl="triton"`` through the registered ops and their autograd (default block sizes, width
    150: two chunks), against ``impl="reference"``: output, path and all four parameter/input gradients. A
    balancing layer with random routing offsets, so that the ops' offset argument is exercised too (the direct
    kernel cases cover calls without it)."""
    torch.manual_seed(9)
    layer = FFF(150, 5, 2, impl="reference", device=DEVICE, balance_rate=0.01)
    with torch.no_grad():
        layer.linear_in.bias.normal_(0.0, 0.5)
        layer.linear_out.weight.normal_(0.0, 0.1)
        layer.routing_offset.normal_(0.0, 0.5)
    x = torch.randn(3, 7, 150, device=DEVICE)
    upstream = torch.randn(3, 7, 150, device=DEVICE)
    results = {}
    for impl in ("reference", "triton"):
        layer.impl = impl
        layer.zero_grad(set_to_none=True)
        leaf = x.clone().requires_grad_(True)
        out, path = layer(leaf, return_path=True)
        (out * upstream).sum().backward()
        with torch.no_grad():
            inference = layer(x)
        grads = (leaf.grad, layer.linear_in.weight.grad, layer.linear_in.bias.grad, layer.linear_out.weight.grad)
        results[impl] = (out.detach(), path, inference, grads)
    ref_out, ref_path, _, ref_grads = results["reference"]
    out, path, inference, grads = results["triton"]
    case = {"x": x.reshape(-1, 150), "upstream": upstream.reshape(-1, 150), "weight_in": layer.linear_in.weight,
            "bias_in": layer.linear_in.bias, "weight_out": layer.linear_out.weight}  # fmt: skip
    scales = gradient_scales({k: v.detach() for k, v in case.items()}, torch.float32, ref_path.reshape(21, 2, 6))
    errors = {"out": {"error": relative(out, ref_out), "tolerance": 1e-5}}
    for name, grad, ref_grad in zip(scales, grads, ref_grads, strict=True):
        errors[name] = {"error": relative(grad, ref_grad, scales[name]), "tolerance": 1e-5}
    layer.impl = "auto"
    exact = {
        "paths_equal_reference": torch.equal(path, ref_path),
        "inference_equals_forward": torch.equal(inference, out),
        # on CPU "auto" means the compiled kernel, which this process must not load (test_triton.py checks it)
        "impl=auto picks triton": DEVICE == "cpu" or layer.resolve_impl(x) == "triton",
    }
    return {"layer impl=triton": {"errors": errors, "exact": exact}}


def opcheck_cases() -> dict[str, dict]:
    """``torch.library.opcheck`` on the Triton implementations: schema, fake tensors, autograd registration."""
    case = random_case(3, 16, 1, 1, seed=10)
    x, w_in, b_in = (case[k] for k in ("x", "weight_in", "bias_in"))
    w_out_t = case["weight_out"].t().contiguous()
    outcomes = {}
    for name, args in {
        "fff_infer": (x, w_in, b_in, w_out_t, 1, 1),
        "fff_forward": (x.detach().requires_grad_(True), w_in, b_in, w_out_t, 1, 1),
    }.items():
        report = torch.library.opcheck(getattr(torch.ops.ultrafastbert, name).default, args)
        outcomes[f"opcheck {name}"] = all(value == "SUCCESS" for value in report.values())
    out, nodes, logits = ops.fff_forward(x.detach(), w_in, b_in, w_out_t, 1, 1)
    report = torch.library.opcheck(
        torch.ops.ultrafastbert.fff_backward.default, (case["upstream"], x.detach(), w_in, w_out_t, nodes, logits)
    )
    outcomes["opcheck fff_backward"] = all(value == "SUCCESS" for value in report.values())
    return {"opcheck": {"errors": {}, "exact": outcomes}}


def refusal_cases() -> dict[str, dict]:
    """What the kernels refuse: a node outside its tree level, block sizes tl.dot cannot take, a bad precision."""
    case = random_case(4, 16, 2, 1, seed=11)
    x, w_in, b_in = (case[k] for k in ("x", "weight_in", "bias_in"))
    w_out_t = case["weight_out"].t().contiguous()
    _, nodes, logits = triton_kernels.fff_forward(x, w_in, b_in, w_out_t, 2, 1)
    wrong = nodes.clone()
    wrong[1, 0, 2] = 1  # a level-1 node saved as the level-2 one

    def raises(call, match: str) -> bool:
        try:
            call()
        except (RuntimeError, ValueError) as error:
            return match in str(error)
        return False

    backward = triton_kernels.fff_backward
    result = {
        "errors": {},
        "exact": {
            # on CUDA the check is a device-side assertion, which would end this process's CUDA context
            "node out of its level": DEVICE == "cuda"
            or raises(lambda: backward(case["upstream"], x, w_in, w_out_t, wrong, logits), "out of range"),
            "block of 8 tokens": raises(
                lambda: triton_kernels.fff_infer(x, w_in, b_in, w_out_t, 2, 1, block_tokens=8), "power of two"
            ),
            "unknown precision": raises(
                lambda: backward(case["upstream"], x, w_in, w_out_t, nodes, logits, precision="fp8"), "precision"
            ),
            "empty batch": triton_kernels.fff_infer(x[:0], w_in, b_in, w_out_t, 2, 1).shape == (0, 16),
        },
    }
    return {"refusals": result}


def precision_cases() -> dict[str, dict]:
    """The backward with tf32 in the one-hot dot (a GPU's tensor cores; the interpreter computes it in float32)."""
    case = random_case(24, 37, 6, 1, seed=12)
    return {"tf32 dot": compare(case, torch.float32, 6, 1, precision="tf32", block_width=16)}


def published_layer_cases() -> dict[str, dict]:
    """UltraFastBERT-1x11 at width 768, float32 and bfloat16, default blocks (on a GPU only: too slow for the
    interpreter)."""
    case = random_case(600, 768, 11, 1, seed=13)
    return {
        "1x11 width 768 float32": compare(case, torch.float32, 11, 1),
        "1x11 width 768 bfloat16": compare(case, torch.bfloat16, 11, 1),
    }


CASES = (
    shape_cases,
    offset_cases,
    zero_logit_cases,
    nan_cases,
    bfloat16_cases,
    precision_cases,
    layer_cases,
    opcheck_cases,
    refusal_cases,
)


def main(output: str) -> None:
    started = time.perf_counter()
    if DEVICE == "cpu":
        triton_ops.register_triton_kernels("cpu")
    elif "cuda" not in ops.TRITON_DEVICES:
        raise SystemExit("the Triton kernels are not registered for CUDA (torch without CUDA, or no Triton)")
    cases, seconds = {}, {}
    for make in CASES + ((published_layer_cases,) if DEVICE == "cuda" else ()):
        case_started = time.perf_counter()
        cases.update(make())
        seconds[make.__name__] = round(time.perf_counter() - case_started, 2)
    report = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (Triton interpreter)",
        "triton": triton.__version__,
        "torch": torch.__version__,
        "seconds": {"total": round(time.perf_counter() - started, 2), **seconds},
        "cases": {name: {"errors": case["errors"], "exact": case["exact"]} for name, case in cases.items()},
    }
    with open(output, "w") as handle:
        json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main(ARGUMENTS.output)
