"""Layer benchmark: dense feedforward vs every FFF execution path, side by side in one process.

Method (``benchmarks/README.md``): random normal inputs, every FFF path checked against the masking reference
before it is timed, the candidates of each mode and token count timed together in interleaved rounds
(``timing.time_interleaved``: warm-up, medians), fixed threads (one pass per requested thread count), JSON with
machine facts, and a plot.

The candidates: dense ``Linear-GELU-Linear`` at 3072 and at as many hidden units as the tree has nodes; the masking
reference (what the original trains and ships); the paper-style gather/BMM walk (per level, each token gathers
its node's rows and takes batched dot products: ``impl="walk"``), the same walk through ``torch.compile``; and
the compiled kernel. Training steps (forward + backward) time the reference, the autograd-free sparse path and
the kernel.

``device="cuda"`` (``run_device_benchmark``) times, one pass per dtype, dense FF-3072 through cuBLAS (eager) and
through ``torch.compile``, the masking reference, the PyTorch gather walk / sparse path, and the Triton kernels,
forward and forward + backward, with CUDA events; ``docs/gpu.md`` says how to run it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..fff import FFF, kernels, neurons_per_token
from ..fff.ops import TRITON_DEVICES
from ..fff.sparse import walk_forward
from .config import LayerBenchConfig
from .timing import CUDA_TIMING, TIMING_METHOD, Rounds, TimedCall, machine_info, require_device, time_interleaved


@dataclass
class Measurement:
    name: str
    mode: str  # "forward" (no grad) or "train" (forward + backward)
    tokens: int
    median_ms: float
    min_ms: float
    repeats: int
    threads: int
    dtype: str = "float32"


@dataclass
class Candidate:
    """One implementation under test: a module, and the FFF ``impl`` to set on it (None for dense and for modules
    that are an FFF path by themselves). ``checked`` ones are compared with the reference before timing; an
    ``optional`` one that cannot run here (``torch.compile`` without a working compiler) is skipped, not fatal."""

    name: str
    module: nn.Module
    impl: str | None = None
    modes: tuple[str, ...] = ("forward", "train")
    checked: bool | None = None  # default: whether an FFF impl is set
    optional: bool = False

    def __post_init__(self) -> None:
        if self.checked is None:
            self.checked = self.impl is not None

    def prepare(self) -> None:
        """Select this candidate's path once, outside the timed calls (the candidates share one FFF module)."""
        if self.impl is not None:
            self.module.impl = self.impl

    def run(self, x: Tensor) -> Tensor:
        self.prepare()
        return self.module(x)


class CompiledGather(nn.Module):
    """The gather/BMM walk (``sparse.walk_forward``) compiled by ``torch.compile`` for each input shape, on the
    weights of ``fff``: what a user gets from the compiler without a hand-written kernel. Inference only."""

    def __init__(self, fff: FFF) -> None:
        super().__init__()
        self.fff = fff
        self._walk = torch.compile(walk_forward, dynamic=False)

    def forward(self, x: Tensor) -> Tensor:
        fff = self.fff
        weight_out_t = fff._weight_out_t()
        return self._walk(x, fff.linear_in.weight, fff.linear_in.bias, weight_out_t, fff.depth, fff.trees)[0]


def dense_feedforward(width: int, hidden: int) -> nn.Sequential:
    """The dense baseline: ``Linear -> GELU -> Linear`` as in BERT."""
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


def build_candidates(config: LayerBenchConfig) -> list[Candidate]:
    fff = FFF(config.width, config.depth, config.trees)  # published initialisation
    nodes = fff.linear_in.out_features
    compiled = []
    if config.compiled_gather:
        compiled.append(
            Candidate(
                "FFF gather/BMM (torch.compile)", CompiledGather(fff), modes=("forward",), checked=True, optional=True
            )
        )
    return [
        Candidate(f"dense FF-{config.dense_width}", dense_feedforward(config.width, config.dense_width)),
        Candidate(f"dense FF-{nodes}", dense_feedforward(config.width, nodes)),
        Candidate("FFF reference (masking)", fff, "reference"),
        Candidate("FFF sparse (PyTorch)", fff, "sparse", modes=("train",)),
        Candidate("FFF gather/BMM (PyTorch)", fff, "walk", modes=("forward",)),
        *compiled,
        *([Candidate("FFF kernel (C++)", fff, "kernel")] if kernels.available() else []),
    ]


def check_against_reference(candidates: list[Candidate], x: Tensor) -> dict[str, str]:
    """Refuse to time an FFF path whose output differs from the reference on this very input. An optional
    candidate that raises instead is removed from ``candidates``; returns ``{name: reason}`` of those."""
    fffs = [c for c in candidates if c.checked]
    reference = next(c for c in fffs if c.impl == "reference")
    skipped: dict[str, str] = {}
    with torch.no_grad():
        expected = reference.run(x)
        for candidate in fffs:
            try:
                got = candidate.run(x)
            except Exception as error:  # e.g. torch.compile without a working C++ compiler
                if not candidate.optional:
                    raise
                reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
                skipped[candidate.name] = f"{type(error).__name__}: {reason}"
                candidates.remove(candidate)
                print(f"  skipping {candidate.name}: {skipped[candidate.name]}", flush=True)
                continue
            error = ((got - expected).abs().max() / expected.abs().max()).item()
            if error > 1e-4:
                raise AssertionError(f"{candidate.name} differs from the reference by {error:.2e} (relative)")
    return skipped


def measure(candidates: list[Candidate], mode: str, x: Tensor, rounds: Rounds) -> list[Measurement]:
    """Time ``candidates`` on ``x`` together, in interleaved rounds, on ``x``'s device. ``"forward"``: the plain
    module call, as a user makes it inside ``torch.no_grad()`` (entered once, not per call); ``"train"``: forward
    and backward."""
    device = x.device.type
    if mode == "forward":
        calls = [TimedCall(c.name, functools.partial(c.module, x), c.prepare) for c in candidates]
        with torch.no_grad():
            timings = time_interleaved(calls, rounds, device)
    else:
        upstream = torch.randn_like(x)
        x = x.detach().requires_grad_(True)

        def step(module: nn.Module) -> None:
            module.zero_grad(set_to_none=True)
            x.grad = None
            (module(x) * upstream).sum().backward()

        calls = [TimedCall(c.name, functools.partial(step, c.module), c.prepare) for c in candidates]
        timings = time_interleaved(calls, rounds, device)
    dtype = str(x.dtype).removeprefix("torch.")
    return [
        Measurement(name, mode, x.shape[0], t.median_s * 1e3, t.min_s * 1e3, t.repeats, t.threads, dtype)
        for name, t in timings.items()
    ]


def _measure_mode(candidates: list[Candidate], mode: str, x: Tensor, config: LayerBenchConfig) -> list[Measurement]:
    """The candidates that run ``mode``, timed together on ``x``; each result printed as it comes."""
    group = [c for c in candidates if mode in c.modes]
    measurements = measure(group, mode, x, config.rounds(len(group)))
    for measurement in measurements:
        print(_progress_line(measurement), flush=True)
    return measurements


def thread_passes(requested: tuple[int, ...]) -> list[int]:
    """The thread counts to run, in order, without repeats (``2`` then "all" is one pass on a 2-core machine)."""
    passes = list(dict.fromkeys(requested)) or [torch.get_num_threads()]
    if any(n < 1 for n in passes):
        raise ValueError(f"thread counts must be >= 1, got {requested}")
    return passes


def measure_gemm_gflops(
    width: int, hidden: int, tokens: int = 4096, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """Achieved GFLOP/s of a large GEMM (sgemm on CPU): the machine's practical compute ceiling for the floor
    estimate."""
    a = torch.randn(tokens, width, device=device, dtype=dtype)
    b = torch.randn(width, hidden, device=device, dtype=dtype)
    rounds = Rounds(min_rounds=3, max_rounds=1000, min_seconds=0.5)
    timing = time_interleaved([TimedCall("gemm", lambda: a @ b)], rounds, device)["gemm"]
    return 2 * tokens * width * hidden / timing.median_s / 1e9


def fff_useful_flops(tokens: int, width: int, depth: int, trees: int) -> int:
    """One dot product (logit) and one axpy (output) of ``width`` per visited node."""
    return tokens * neurons_per_token(depth, trees) * 4 * width


def run_layer_benchmark(config: LayerBenchConfig, output: str | Path | None = None) -> dict:
    """Time all candidates (one pass per thread count), print tables and write ``<output>.json`` and ``.png``.
    ``config.device == "cuda"``: ``run_device_benchmark``."""
    require_device(config.device)
    if config.device != "cpu":
        return run_device_benchmark(config, output)
    if set(config.dtypes) != {"float32"}:
        raise ValueError("--dtypes: the CPU benchmark times float32 only (bfloat16 is timed with --device cuda)")
    torch.manual_seed(config.seed)
    candidates = build_candidates(config)
    results: list[Measurement] = []
    passes: list[dict] = []
    skipped: dict[str, str] = {}
    inputs = {tokens: torch.randn(tokens, config.width) for tokens in config.tokens}
    train_inputs = {tokens: torch.randn(tokens, config.width) for tokens in config.train_tokens}
    previous_threads = torch.get_num_threads()
    passes_to_run = thread_passes(config.threads)
    print(f"thread passes: {passes_to_run} (asked for {list(config.threads) or 'the current setting'})", flush=True)
    try:
        for threads in passes_to_run:
            torch.set_num_threads(threads)
            print(f"[{threads} threads]", flush=True)
            for x in inputs.values():
                skipped.update(check_against_reference(candidates, x))
                results += _measure_mode(candidates, "forward", x, config)
            for x in train_inputs.values():
                results += _measure_mode(candidates, "train", x, config)
            gflops = measure_gemm_gflops(config.width, config.dense_width)
            floor = {
                str(t): fff_useful_flops(t, config.width, config.depth, config.trees) / (gflops * 1e9) * 1e3
                for t in config.tokens
            }
            passes.append({"threads": threads, "sgemm_gflops": gflops, "fff_floor_ms": floor})
        machine = machine_info()
    finally:
        torch.set_num_threads(previous_threads)
    report = {
        "benchmark": "layer",
        "machine": machine,
        "timing": TIMING_METHOD,
        "config": asdict(config),
        "passes_by": "threads",
        "passes": passes,
        "skipped": skipped,
        "results": [asdict(r) for r in results],
    }
    print()
    print(format_table(report, baseline=candidates[0].name))
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        plot_layer_report(report, output.with_suffix(".png"), baseline=candidates[0].name)
        print(f"\nwrote {output.with_suffix('.json')} and {output.with_suffix('.png')}")
    return report


def _progress_line(m: Measurement) -> str:
    return f"  {m.mode:<7} {m.tokens:>6} tokens  {m.name:<32} {m.median_ms:10.4f} ms  ({m.repeats} runs)"


def _pass_key(report: dict) -> str:
    """What the passes of a report differ in: the thread count on CPU, the dtype on a GPU."""
    return report.get("passes_by", "threads")


def _pass_label(key: str, value: object) -> str:
    return f"{value} threads" if key == "threads" else str(value)


def format_table(report: dict, baseline: str) -> str:
    """Markdown tables of median ms and the speed-up of each path over ``baseline``: per pass, one per mode."""
    machine, key = report["machine"], _pass_key(report)
    lines = [f"cpu={machine['cpu']}  logical cores={machine['logical_cores']}"]
    if key == "dtype":
        lines = [f"gpu={machine['gpu']}  cuda={machine['cuda']}  triton={machine['triton']}  {lines[0]}"]
    for run in report["passes"]:
        value = run[key]
        gemm = "sgemm" if key == "threads" else "gemm"
        lines += ["", f"{key}={value}  {gemm}={run[f'{gemm}_gflops']:.0f} GFLOP/s"]
        for mode in ("forward", "train"):
            rows = [r for r in report["results"] if r["mode"] == mode and r[key] == value]
            if not rows:
                continue
            names = list(dict.fromkeys(r["name"] for r in rows))
            tokens = list(dict.fromkeys(r["tokens"] for r in rows))
            by_key = {(r["name"], r["tokens"]): r["median_ms"] for r in rows}
            lines += ["", f"{mode}, {_pass_label(key, value)}: median ms (speed-up over {baseline})", ""]
            lines.append("| implementation | " + " | ".join(f"{t} tokens" for t in tokens) + " |")
            lines.append("|---|" + "---|" * len(tokens))
            for name in names:
                cells = []
                for t in tokens:
                    ms = by_key.get((name, t))
                    base = by_key.get((baseline, t))
                    cells.append("-" if ms is None else f"{ms:.4g} ({base / ms:.1f}x)" if base else f"{ms:.4g}")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            if mode == "forward":
                floor = " | ".join(f"{run['fff_floor_ms'][str(t)]:.4g}" for t in tokens)
                lines.append(f"| FFF compute floor (useful FLOPs / {gemm} rate) | {floor} |")
    for name, reason in report.get("skipped", {}).items():
        lines += ["", f"skipped {name}: {reason}"]
    return "\n".join(lines)


def plot_layer_report(report: dict, path: Path, baseline: str, modes: tuple[str, ...] = ("forward",)) -> None:
    """Log-log time vs tokens per implementation, and the speed-up over the dense baseline, one row of panels per
    mode; one line style per pass (thread count, or dtype on a GPU)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = _pass_key(report)
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(len(modes), 2, figsize=(12, 4.5 * len(modes)), squeeze=False)
    for (ax_time, ax_speed), mode in zip(axes, modes, strict=True):
        rows = [r for r in report["results"] if r["mode"] == mode]
        names = list(dict.fromkeys(r["name"] for r in rows))
        for index, run in enumerate(report["passes"]):
            value, style = run[key], styles[index % len(styles)]
            base = {r["tokens"]: r["median_ms"] for r in rows if r["name"] == baseline and r[key] == value}
            for color, name in enumerate(names):
                mine = [r for r in rows if r["name"] == name and r[key] == value]
                points = sorted((r["tokens"], r["median_ms"]) for r in mine)
                if not points:
                    continue
                tokens, ms = zip(*points, strict=True)
                label = f"{name}, {_pass_label(key, value)}"
                ax_time.plot(tokens, ms, style, marker="o", color=f"C{color}", label=label)
                speed_up = [(t, base[t] / m) for t, m in points if t in base]
                if speed_up:
                    ax_speed.plot(*zip(*speed_up, strict=True), style, marker="o", color=f"C{color}", label=label)
            if mode == "forward":
                floor = sorted((int(t), ms) for t, ms in run["fff_floor_ms"].items())
                ax_time.plot(*zip(*floor, strict=True), style, color="gray",
                             label=f"FFF compute floor, {_pass_label(key, value)}")  # fmt: skip
        for ax, title, ylabel in (
            (ax_time, f"{mode} time", "median ms"),
            (ax_speed, f"{mode}: speed-up over {baseline}", "x"),
        ):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("tokens")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
        ax_time.legend(fontsize=7)
    config, machine = report["config"], report["machine"]
    passes = ", ".join(_pass_label(key, run[key]) for run in report["passes"])
    fig.suptitle(
        f"FFF {config['trees']}x{config['depth']} vs dense, width {config['width']}, {passes}, "
        f"{machine['gpu'] if key == 'dtype' else machine['cpu']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- on a GPU -----------------------------------------------------------------------------------------------------

# Outputs against the reference's, relative to its largest: float32 as on CPU; bfloat16 rounds both to 8 bits.
DEVICE_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
# Tokens a near-tie may route otherwise than the reference: a logit within float32 rounding of 0 goes either way
# when the summation order differs (cuBLAS vs the kernels); about one decision in a million at width 768.
MAX_ROUTED_OTHERWISE = 1e-3
DEVICE_FFF_IMPLS = ("walk", "triton")


def device_candidates(config: LayerBenchConfig, dtype: torch.dtype) -> tuple[list[Candidate], FFF]:
    """Dense FF (cuBLAS, and the same module through ``torch.compile``), the masking reference, the PyTorch gather
    walk / sparse path (what ``impl="auto"`` falls back to without Triton) and the Triton kernels; and the FFF."""
    fff = FFF(config.width, config.depth, config.trees, device=config.device, dtype=dtype)
    dense = dense_feedforward(config.width, config.dense_width).to(config.device, dtype)
    name = f"dense FF-{config.dense_width}"
    candidates = [
        Candidate(f"{name} (cuBLAS)", dense),
        Candidate(f"{name} (torch.compile)", torch.compile(dense, dynamic=False), optional=True),
        Candidate("FFF reference (masking)", fff, "reference"),
        Candidate("FFF gather/BMM (PyTorch)", fff, "walk", modes=("forward",)),
        Candidate("FFF sparse (PyTorch)", fff, "sparse", modes=("train",)),
        Candidate("FFF Triton", fff, "triton"),
    ]
    return candidates, fff


def check_on_device(candidates: list[Candidate], fff: FFF, x: Tensor) -> tuple[dict[str, int], dict[str, str]]:
    """Refuse to time an FFF path whose output differs from the reference's on the tokens that took the reference's
    path, or that routes more than ``MAX_ROUTED_OTHERWISE`` of the tokens otherwise; and the compiled dense FF
    against the eager one (removed, with the reason, if it cannot compile here). Returns the number of tokens each
    FFF path routed otherwise, and ``{name: reason}`` of the candidates removed."""
    tolerance = DEVICE_TOLERANCE[x.dtype]
    routed_otherwise: dict[str, int] = {}
    skipped: dict[str, str] = {}
    with torch.no_grad():
        fff.impl = "reference"
        expected, expected_path = fff(x, return_path=True)
        for impl in DEVICE_FFF_IMPLS:
            fff.impl = impl
            got, path = fff(x, return_path=True)
            same = (path == expected_path).flatten(1).all(dim=1)
            routed_otherwise[impl] = int((~same).sum())
            if routed_otherwise[impl] > MAX_ROUTED_OTHERWISE * x.shape[0]:
                raise AssertionError(f"FFF {impl} routes {routed_otherwise[impl]} of {x.shape[0]} tokens otherwise")
            error = ((got - expected)[same].abs().max() / expected[same].abs().max()).item() if same.any() else 0.0
            if error > tolerance:
                raise AssertionError(f"FFF {impl} differs from the reference by {error:.2e} (relative)")
        eager, compiled = candidates[0], candidates[1]
        try:
            error = ((compiled.run(x) - eager.run(x)).abs().max() / eager.run(x).abs().max()).item()
        except Exception as failure:  # e.g. no working Triton/compiler for inductor here
            reason = (str(failure).strip().splitlines() or [type(failure).__name__])[0][:200]
            skipped[compiled.name] = f"{type(failure).__name__}: {reason}"
            candidates.remove(compiled)
            print(f"  skipping {compiled.name}: {skipped[compiled.name]}", flush=True)
        else:
            if error > tolerance:
                raise AssertionError(f"{compiled.name} differs from {eager.name} by {error:.2e} (relative)")
    return routed_otherwise, skipped


def run_device_benchmark(config: LayerBenchConfig, output: str | Path | None = None) -> dict:
    """The layer benchmark on a GPU (``config.device``): one pass per dtype of ``config.dtypes``, each candidate
    checked and timed with CUDA events at every token count, forward and forward + backward; JSON and plot as on
    CPU."""
    require_device(config.device)
    if config.device not in TRITON_DEVICES:
        raise ValueError(
            f"--device {config.device}: the FFF Triton kernels are not registered for it (is Triton installed?)"
        )
    # one compiled graph per token count, mode and dtype: more than torch.compile's default of 8 per function
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    results: list[Measurement] = []
    passes: list[dict] = []
    skipped: dict[str, str] = {}
    routed: dict[str, dict[str, int]] = {}
    baseline = ""
    for dtype_name in config.dtypes:
        dtype = getattr(torch, dtype_name)
        torch.manual_seed(config.seed)
        candidates, fff = device_candidates(config, dtype)
        baseline = candidates[0].name
        print(f"[{dtype_name}]", flush=True)
        for tokens in config.tokens:
            x = torch.randn(tokens, config.width, device=config.device, dtype=dtype)
            routed[f"{dtype_name}, {tokens} tokens"], removed = check_on_device(candidates, fff, x)
            skipped.update(removed)
            results += _measure_mode(candidates, "forward", x, config)
        for tokens in config.train_tokens:
            x = torch.randn(tokens, config.width, device=config.device, dtype=dtype)
            results += _measure_mode(candidates, "train", x, config)
        gflops = measure_gemm_gflops(config.width, config.dense_width, device=config.device, dtype=dtype)
        floor = {
            str(t): fff_useful_flops(t, config.width, config.depth, config.trees) / (gflops * 1e9) * 1e3
            for t in config.tokens
        }
        passes.append({"dtype": dtype_name, "gemm_gflops": gflops, "fff_floor_ms": floor})
    report = {
        "benchmark": "layer",
        "device": config.device,
        "machine": machine_info(config.device),
        "timing": f"{TIMING_METHOD}; {CUDA_TIMING}",
        "config": asdict(config),
        "passes_by": "dtype",
        "passes": passes,
        "skipped": skipped,
        "routed_otherwise_than_reference": routed,
        "results": [asdict(r) for r in results],
    }
    print()
    print(format_table(report, baseline=baseline))
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        plot_layer_report(report, output.with_suffix(".png"), baseline=baseline, modes=("forward", "train"))
        print(f"\nwrote {output.with_suffix('.json')} and {output.with_suffix('.png')}")
    return report


def run_shape_benchmark(
    shapes: tuple[tuple[int, int], ...] = ((1, 11), (2, 10), (4, 9), (8, 8), (16, 7)),
    width: int = 768,
    tokens: int = 4096,
    threads: int | None = None,
    output: str | Path | None = None,
) -> dict:
    """Trees vs depth at (nearly) equal total neurons (1x11, 2x10, ... all hold ~4095): forward ms per token of the
    default path (the kernel where it builds) for each ``(trees, depth)``, each checked against the reference, all
    timed together in interleaved rounds."""
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(tokens, width)
    layers = {f"{trees}x{depth}": FFF(width, depth, trees) for trees, depth in shapes}
    try:
        defaults = []
        for name, layer in layers.items():
            default = Candidate(name, layer, "auto")
            check_against_reference([Candidate(f"{name} reference", layer, "reference"), default], x)
            defaults.append(default)
        rounds = LayerBenchConfig().rounds(len(defaults))
        timed = {m.name: m for m in measure(defaults, "forward", x, rounds)}
        machine = machine_info()
    finally:
        torch.set_num_threads(previous_threads)
    rows = [
        {
            "trees": layer.trees,
            "depth": layer.depth,
            "neurons": layer.linear_in.out_features,
            "neurons_per_token": layer.neurons_per_token,
            "path": layer.resolve_impl(x),
            "median_ms": timed[name].median_ms,
            "us_per_token": timed[name].median_ms * 1e3 / tokens,
        }
        for name, layer in layers.items()
    ]
    report = {
        "benchmark": "layer-shapes",
        "machine": machine,
        "timing": TIMING_METHOD,
        "width": width,
        "tokens": tokens,
        "results": rows,
    }
    lines = ["| trees x depth | neurons | used per token | path | ms | us per token |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['trees']}x{row['depth']} | {row['neurons']} | {row['neurons_per_token']} | {row['path']} | "
            f"{row['median_ms']:.3f} | {row['us_per_token']:.4f} |"
        )
    print("\n".join(lines))
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return report
