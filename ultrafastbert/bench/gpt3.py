"""The paper's GPT-3 example: one feedforward at GPT-3 width (12,288 -> 49,152 -> 12,288, GELU) against an FFF of
depth 15 at the same width (65,535 neurons, 16 used per token), beside the machine's measured memory-read rate.

At one token a dense feedforward does 2 FLOPs per weight it reads, so it is bound by memory: its floor is the bytes
of its weights over the read bandwidth. The tree reads only the rows on one root-to-leaf path, but each level waits
for the previous one's logit, so its floor is one dependent chain of row fetches, not a bandwidth figure.

Method (``benchmarks/README.md``): one layer is built at a time (the dense float32 layer holds 4.8 GB, the float32
tree 6.4 GB) and freed before the next. Each layer's calls at every token count are timed together in interleaved
rounds with the bandwidth probe (``torch.sum`` over a buffer several times the last-level cache), so a busy machine
slows both alike. The probe's fastest round is the read rate: on a shared machine a long read is preempted, and
its median measures the other processes, not the memory. The tree is called through its module on the inference
hot path (``impl="kernel"``, the compiled C++ kernel), checked against the masking reference before it is timed,
in three cache states (``CACHE_STATES``): on a new random input every call (its deep rows not in cache), the same
with every cache flushed first, and on an input it has just been called on (its rows in cache), which separates
the time its memory reads take from the rest.

The rounds keep the candidates' cyclic order, so what runs just before a call is the same in every round. The
probe evicts every cache as it reads, the code and the interpreter's objects too, so it is placed just before the
flushed calls, which flush anyway: a fresh call follows a call of the same layer on another input, as a layer's
call in decoding follows the other layers' calls (which leave the code in cache, not this layer's rows).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..fff import FFF, kernels, nodes_per_tree
from ..fff.reference import compute_dtype, visited_nodes_from_logits
from .timing import Rounds, TimedCall, Timing, time_interleaved

# Fresh inputs per token count and cache state, cycled through by the timed calls: more than the rounds a group
# usually runs, so that consecutive calls take different paths through the tree.
INPUT_POOL = 64
# Bytes read (untimed) before a "flushed" call, to evict the previous call's rows from every cache level.
FLUSH_BYTES = 256 * 2**20
# Rows of ``linear_in`` converted to float32 at a time by the memory-lean reference check.
REFERENCE_CHUNK = 4096
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


@dataclass
class Gpt3Shape:
    width: int = 12288
    hidden: int = 49152  # the dense layer's neurons
    depth: int = 15  # the tree's depth: 2**16 - 1 neurons, 16 used per token


@dataclass
class Gpt3LayerMeasurement:
    """One layer at one token count and dtype; ``floor_ms``: its weight bytes over the best bandwidth measured
    (for warm caches a bound it need not respect: its rows come from cache)."""

    model: str  # "gpt3-dense" or "gpt3-fff"
    tokens: int
    dtype: str
    caches: str  # how the caches stood: CACHE_STATES
    ms: float  # median
    min_ms: float
    repeats: int
    threads: int
    weight_bytes: int  # weight bytes the call must read (the tree: the distinct rows its tokens visit)
    floor_ms: float = 0.0
    time_over_floor: float = 0.0
    achieved_gb_s: float = 0.0  # weight_bytes over the median time


@dataclass
class BandwidthMeasurement:
    """Memory-read rate of ``torch.sum`` over ``buffer_bytes``, in the rounds of one layer's group."""

    group: str  # the layer and dtype whose rounds it shared
    buffer_bytes: int
    best_gb_s: float  # from the fastest round
    median_gb_s: float
    repeats: int
    threads: int


def dense_layer(shape: Gpt3Shape, dtype: torch.dtype) -> nn.Sequential:
    """``Linear -> GELU -> Linear`` at GPT-3 width, weights ``N(0, 0.02)``, allocated once (no default init first)."""
    layer = nn.Sequential(
        nn.Linear(shape.width, shape.hidden, device="meta", dtype=dtype),
        nn.GELU(),
        nn.Linear(shape.hidden, shape.width, device="meta", dtype=dtype),
    ).to_empty(device="cpu")
    with torch.no_grad():
        for linear in (layer[0], layer[2]):
            linear.weight.normal_(std=0.02)
            linear.bias.zero_()
    return layer.requires_grad_(False).eval()


def fff_layer(shape: Gpt3Shape, dtype: torch.dtype) -> FFF:
    """The FFF of depth ``shape.depth`` at GPT-3 width on the compiled kernel, weights ``N(0, 0.02)`` (the published
    initialisation). ``linear_out.weight`` is stored as the transpose of a row-major ``(nodes, width)`` matrix, the
    layout the kernel reads, so the layer holds its weights once (no second, transposed copy for the kernel)."""
    layer = FFF(shape.width, shape.depth, impl="kernel", device="meta", dtype=dtype).to_empty(device="cpu")
    nodes = nodes_per_tree(shape.depth)
    with torch.no_grad():
        layer.linear_in.weight.normal_(std=0.02)
        layer.linear_in.bias.zero_()
        weight_out_t = torch.empty(nodes, shape.width, dtype=dtype).normal_(std=0.02)
    layer.linear_out.weight = nn.Parameter(weight_out_t.t(), requires_grad=False)
    return layer.requires_grad_(False).eval()


def fff_reference_lean(layer: FFF, x: Tensor) -> tuple[Tensor, Tensor]:
    """The masking reference (``fff_reference``) computed with its float32 logits taken ``REFERENCE_CHUNK`` rows at
    a time, and its output from the visited columns only (the mask zeroes every other one), so a bfloat16 layer
    is not copied to float32 whole. Returns the output ``(N, H)`` and the visited nodes ``(N, 1, D+1)``."""
    dtype = compute_dtype(x.dtype)
    weight_in, bias_in = layer.linear_in.weight, layer.linear_in.bias
    inputs = x.to(dtype)
    logits = torch.cat(
        [
            nn.functional.linear(inputs, weight_in[start : start + REFERENCE_CHUNK].to(dtype),
                                 bias_in[start : start + REFERENCE_CHUNK].to(dtype))
            for start in range(0, weight_in.shape[0], REFERENCE_CHUNK)
        ],
        dim=1,
    )  # fmt: skip
    nodes = visited_nodes_from_logits(logits, layer.depth, 1)  # (N, 1, D+1)
    visited = nodes.flatten(1)  # (N, D+1)
    hidden = nn.functional.gelu(logits.gather(1, visited))  # (N, D+1)
    rows = layer.linear_out.weight.t()[visited].to(dtype)  # (N, D+1, H)
    return torch.einsum("nv,nvh->nh", hidden, rows).to(x.dtype), nodes


def check_fff(layer: FFF, x: Tensor) -> int:
    """Refuse to time the tree if the kernel's output on ``x`` differs from the reference's on the tokens that took
    the reference's path, or if more than one token in sixteen took another path (a float32 near-tie); returns
    the number that did."""
    expected, expected_nodes = fff_reference_lean(layer, x)
    got, nodes = layer(x, return_path=True)
    same = (nodes == expected_nodes).flatten(1).all(dim=1)
    routed_otherwise = int((~same).sum())
    if routed_otherwise * 16 > x.shape[0]:
        raise AssertionError(f"the GPT-3 FFF kernel routes {routed_otherwise} of {x.shape[0]} tokens otherwise")
    error = ((got - expected)[same].abs().max() / expected[same].abs().max()).item()
    if error > TOLERANCE[x.dtype]:
        raise AssertionError(f"the GPT-3 FFF kernel differs from the reference by {error:.2e} (relative)")
    return routed_otherwise


def distinct_row_bytes(layer: FFF, inputs: list[Tensor]) -> int:
    """Mean over ``inputs`` of the weight bytes one call reads: per distinct visited node one row of ``linear_in``,
    its bias and one row of the transposed ``linear_out``. The paths are the kernel's own (checked against the
    reference's before timing), which reads only those rows; the reference would read the whole layer per input."""
    itemsize = layer.linear_in.weight.element_size()
    row = (2 * layer.width + 1) * itemsize
    with torch.inference_mode():
        counts = [int(layer(x, return_path=True)[1].unique().numel()) for x in inputs]
    return round(sum(counts) / len(counts) * row)


def _parameter_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


class _Cycle:
    """Hands out the next of ``inputs`` on every ``advance``; ``current`` is what the timed call reads."""

    def __init__(self, inputs: list[Tensor]) -> None:
        self._inputs = itertools.cycle(inputs)
        self.current = next(self._inputs)

    def advance(self) -> None:
        self.current = next(self._inputs)


# How the caches stand when a layer call starts. "fresh": a new input (another path through the tree), just after
# a call of the same layer on another input: the code is in cache, and of the rows only those the two paths share
# (the tree's top levels). "flushed": a new input and every cache flushed first (the whole process's, code and
# Python objects included: a pessimistic bound). "warm": the input of the call just before (made untimed), its rows
# in cache (an optimistic bound: what is left when memory costs nothing).
CACHE_STATES = ("fresh", "flushed", "warm")


def time_layer(
    name: str,
    layer: nn.Module,
    tokens: tuple[int, ...],
    dtype: torch.dtype,
    probe: Tensor,
    flush: Tensor,
    rounds: Rounds,
    states: tuple[str, ...] = ("fresh",),
    pool: int = INPUT_POOL,
) -> tuple[dict[tuple[int, str], Timing], Timing, dict[tuple[int, str], list[Tensor]]]:
    """Time ``layer`` at every token count in every cache state of ``states`` (``CACHE_STATES``) and the bandwidth
    probe (``probe.sum()``) together in interleaved rounds; before a call, untimed, the next input is taken and the
    caches flushed (by reading ``flush``), or for a warm call the layer is called on its input. Returns the layer's
    timings per (token count, state), the probe's, and the inputs of each. Every (token count, state) has inputs of
    its own: cycled in step through one list, a fresh call would take the input the flushed call before it just
    took, with all its rows in cache."""
    inputs = {
        (count, state): [torch.randn(count, layer_width(layer), dtype=dtype) for _ in range(pool)]
        for count in tokens
        for state in states
    }
    cycles = {key: _Cycle(pool_inputs) for key, pool_inputs in inputs.items()}

    def prepare(cycle: _Cycle, state: str) -> None:
        if state == "warm":
            layer(cycle.current)
            return
        cycle.advance()
        if state == "flushed":
            flush.sum()

    def call(cycle: _Cycle) -> Tensor:
        return layer(cycle.current)

    def timed_call(count: int, state: str) -> TimedCall:
        cycle = cycles[(count, state)]
        return TimedCall(
            f"{name} {count} {state}", functools.partial(call, cycle), functools.partial(prepare, cycle, state)
        )

    # Cyclic order (module docstring): fresh and warm calls, the probe, then the flushed calls, the fewest tokens
    # last, so that the first fresh call (the fewest tokens) follows a flushed call with as few.
    unflushed = [timed_call(count, state) for state in states if state != "flushed" for count in sorted(tokens)]
    flushed = [timed_call(count, "flushed") for count in sorted(tokens, reverse=True)] if "flushed" in states else []
    calls = [*unflushed, TimedCall("bandwidth probe", probe.sum), *flushed]
    with torch.inference_mode():
        timings = time_interleaved(calls, rounds)
    layer_timings = {(count, state): timings[f"{name} {count} {state}"] for count, state in cycles}
    return layer_timings, timings["bandwidth probe"], inputs


def layer_width(layer: nn.Module) -> int:
    return layer.width if isinstance(layer, FFF) else layer[0].in_features


def run_gpt3_layer(
    shape: Gpt3Shape,
    tokens: tuple[int, ...],
    dtypes: tuple[str, ...],
    rounds: Rounds,
    bandwidth_bytes: int,
    flush_bytes: int = FLUSH_BYTES,
    log=print,  # noqa: ANN001 - a print-like function
) -> tuple[list[Gpt3LayerMeasurement], list[BandwidthMeasurement], dict[str, int]]:
    """Both layers in every dtype, one layer in memory at a time; the floors use the best bandwidth of the run.
    Returns the layer measurements, the bandwidth of each group, and the tokens the tree routed otherwise than the
    reference in its check (per dtype)."""
    if not kernels.available():
        raise RuntimeError("the GPT-3 layer benchmark times the FFF's compiled kernel, which is not built here")
    probe = torch.randn(bandwidth_bytes // 4)  # float32
    flush = torch.randn(flush_bytes // 4)
    measurements: list[Gpt3LayerMeasurement] = []
    bandwidths: list[BandwidthMeasurement] = []
    routed: dict[str, int] = {}
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for model, build in (("gpt3-dense", dense_layer), ("gpt3-fff", fff_layer)):
            log(f"  building {model} ({dtype_name})", flush=True)
            layer = build(shape, dtype)
            if isinstance(layer, FFF):
                with torch.inference_mode():
                    routed[dtype_name] = check_fff(layer, torch.randn(max(tokens), shape.width, dtype=dtype))
            states = CACHE_STATES if isinstance(layer, FFF) else ("fresh",)  # the dense layer outgrows any cache
            timings, probe_timing, inputs = time_layer(model, layer, tokens, dtype, probe, flush, rounds, states)
            for (count, caches), timing in timings.items():
                weight_bytes = (
                    distinct_row_bytes(layer, inputs[(count, caches)])
                    if isinstance(layer, FFF)
                    else _parameter_bytes(layer)
                )
                measurements.append(
                    Gpt3LayerMeasurement(model, count, dtype_name, caches, timing.median_s * 1e3, timing.min_s * 1e3,
                                         timing.repeats, timing.threads, weight_bytes)
                )  # fmt: skip
                log(f"  {model:<10} {dtype_name:<8} {count:>3} tokens, {caches:<7} {timing.median_s * 1e3:10.4f} ms",
                    flush=True)  # fmt: skip
            bandwidths.append(
                BandwidthMeasurement(f"{model} {dtype_name}", probe.numel() * probe.element_size(),
                                     probe.numel() * 4 / probe_timing.min_s / 1e9,
                                     probe.numel() * 4 / probe_timing.median_s / 1e9,
                                     probe_timing.repeats, probe_timing.threads)
            )  # fmt: skip
            del layer, inputs  # freed here (nothing else refers to them) before the next layer is built
    best = max(b.best_gb_s for b in bandwidths)
    for m in measurements:
        m.floor_ms = m.weight_bytes / (best * 1e9) * 1e3
        m.time_over_floor = m.ms / m.floor_ms
        m.achieved_gb_s = m.weight_bytes / (m.ms / 1e3) / 1e9
    return measurements, bandwidths, routed
