"""Layer benchmark: dense feedforward vs every FFF execution path, side by side in one process, on CPU or GPU.

Method (``benchmarks/README.md``): random normal inputs, every FFF path checked against the masking reference
before it is timed, the candidates of each mode and token count timed together in interleaved rounds
(``timing.time_interleaved``: warm-up, medians; on a GPU with CUDA events), JSON with machine facts, and a plot.
One loop serves both devices: one pass per thread count and dtype on CPU, per dtype on a GPU.

The candidates: dense ``Linear-GELU-Linear`` at 3072 hidden units (BERT's), at as many as the FFF evaluates per
token (the equal-FLOPs narrow layer: the floor any conditional layer has to beat) and, on CPU, at as many as the
tree has nodes; the masking reference (what the original trains and ships); the paper-style gather/BMM walk (per
level, each token gathers its node's rows and takes batched dot products: ``impl="walk"``), on CPU also through
``torch.compile``; and the FFF's own kernel: the compiled C++ kernel on CPU, the Triton kernels on a GPU, where
dense FF-3072 is also timed through ``torch.compile``. Training steps (forward + backward) time the reference,
the autograd-free sparse path and the kernel.
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

# Outputs against the reference's, relative to its largest: float32 summation orders differ (BLAS vs the kernels);
# bfloat16 rounds both to 8 bits.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
# Tokens a near-tie may route otherwise than the reference: a logit within rounding of 0 goes either way when the
# summation order differs; about one decision in a million at width 768 in float32, more in bfloat16.
MAX_ROUTED_OTHERWISE = 1e-3


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
    that are an FFF path by themselves). ``checked`` ones are compared with the reference before timing, those
    with ``same_as`` with that candidate; an ``optional`` one that cannot run here (``torch.compile`` without a
    working compiler) is skipped, not fatal."""

    name: str
    module: nn.Module
    impl: str | None = None
    modes: tuple[str, ...] = ("forward", "train")
    checked: bool | None = None  # default: whether an FFF impl is set
    optional: bool = False
    same_as: str | None = None  # a candidate whose output this one must match (a compiled copy of it)

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


def build_candidates(config: LayerBenchConfig, dtype: torch.dtype = torch.float32) -> list[Candidate]:
    """The candidates of one pass on ``config.device`` in ``dtype``; the FFF ones share one layer."""
    device = config.device
    fff = FFF(config.width, config.depth, config.trees, device=device, dtype=dtype)  # published initialisation
    narrow = neurons_per_token(config.depth, config.trees)
    dense = dense_feedforward(config.width, config.dense_width).to(device, dtype)
    dense_name = f"dense FF-{config.dense_width}"
    narrow_candidate = Candidate(
        f"dense FF-{narrow} (equal FLOPs)", dense_feedforward(config.width, narrow).to(device, dtype)
    )
    reference = Candidate("FFF reference (masking)", fff, "reference")
    sparse = Candidate("FFF sparse (PyTorch)", fff, "sparse", modes=("train",))
    walk = Candidate("FFF gather/BMM (PyTorch)", fff, "walk", modes=("forward",))
    if device != "cpu":
        compiled_dense = torch.compile(dense, dynamic=False)
        return [
            Candidate(f"{dense_name} (cuBLAS)", dense),
            Candidate(f"{dense_name} (torch.compile)", compiled_dense, optional=True, same_as=f"{dense_name} (cuBLAS)"),
            narrow_candidate,
            reference,
            walk,
            sparse,
            Candidate("FFF Triton", fff, "triton"),
        ]
    nodes = fff.linear_in.out_features
    compiled = []
    if config.compiled_gather and dtype == torch.float32:
        gather = CompiledGather(fff)
        compiled.append(
            Candidate("FFF gather/BMM (torch.compile)", gather, modes=("forward",), checked=True, optional=True)
        )
    return [
        Candidate(dense_name, dense),
        narrow_candidate,
        Candidate(f"dense FF-{nodes}", dense_feedforward(config.width, nodes).to(device, dtype)),
        reference,
        sparse,
        walk,
        *compiled,
        *([Candidate("FFF kernel (C++)", fff, "kernel")] if kernels.available() else []),
    ]


def _reason(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [type(error).__name__])[0][:200]}"


def check_against_reference(candidates: list[Candidate], x: Tensor) -> tuple[dict[str, int], dict[str, str]]:
    """Refuse to time an FFF path whose output differs from the reference's on the tokens that took the reference's
    path, or that routes more than ``MAX_ROUTED_OTHERWISE`` of the tokens otherwise, and a ``same_as`` candidate that
    differs from its original. An optional candidate that raises instead is removed from ``candidates``. Returns the
    number of tokens each FFF layer path routed otherwise, and ``{name: reason}`` of the candidates removed."""
    tolerance = TOLERANCE[x.dtype]
    reference = next(c for c in candidates if c.impl == "reference")
    by_name = {c.name: c for c in candidates}
    routed_otherwise: dict[str, int] = {}
    skipped: dict[str, str] = {}
    with torch.no_grad():
        reference.prepare()
        expected, expected_path = reference.module(x, return_path=True)
        for candidate in [c for c in candidates if c.checked or c.same_as]:
            if candidate is reference:
                continue
            try:
                got = candidate.run(x)
            except Exception as error:  # e.g. torch.compile without a working C++ compiler
                if not candidate.optional:
                    raise
                skipped[candidate.name] = _reason(error)
                candidates.remove(candidate)
                print(f"  skipping {candidate.name}: {skipped[candidate.name]}", flush=True)
                continue
            target, same = expected, torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            if candidate.same_as:
                target = by_name[candidate.same_as].run(x)
            elif isinstance(candidate.module, FFF):
                _, path = candidate.module(x, return_path=True)
                same = (path == expected_path).flatten(1).all(dim=1)
                routed_otherwise[candidate.name] = int((~same).sum())
                if routed_otherwise[candidate.name] > MAX_ROUTED_OTHERWISE * x.shape[0]:
                    raise AssertionError(
                        f"{candidate.name} routes {routed_otherwise[candidate.name]} of {x.shape[0]} tokens otherwise"
                    )
            error = 0.0
            if same.any():
                error = ((got - target)[same].abs().max() / target[same].abs().max()).item()
            if error > tolerance:
                what = candidate.same_as or "the reference"
                raise AssertionError(f"{candidate.name} differs from {what} by {error:.2e} (relative)")
    return routed_otherwise, skipped


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
    """Time all candidates, one pass per thread count and dtype (per dtype on a GPU), print tables and write
    ``<output>.json`` and ``.png``."""
    require_device(config.device)
    device = config.device
    if device != "cpu":
        if device not in TRITON_DEVICES:
            raise ValueError(
                f"--device {device}: the FFF Triton kernels are not registered for it (is Triton installed?)"
            )
        # one compiled graph per token count, mode and dtype: more than torch.compile's default of 8 per function
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    thread_counts = thread_passes(config.threads) if device == "cpu" else [torch.get_num_threads()]
    passes_to_run = [(threads, dtype) for threads in thread_counts for dtype in config.dtypes]
    print(f"passes: {passes_to_run} (threads asked for: {list(config.threads) or 'the current setting'})", flush=True)
    results: list[Measurement] = []
    passes: list[dict] = []
    skipped: dict[str, str] = {}
    routed: dict[str, dict[str, int]] = {}
    baseline = ""
    previous_threads = torch.get_num_threads()
    try:
        for threads, dtype_name in passes_to_run:
            torch.set_num_threads(threads)
            dtype = getattr(torch, dtype_name)
            label = pass_label(device, threads, dtype_name)
            print(f"[{label}]", flush=True)
            torch.manual_seed(config.seed)
            candidates = build_candidates(config, dtype)
            baseline = candidates[0].name
            for tokens in config.tokens:
                x = torch.randn(tokens, config.width, device=device, dtype=dtype)
                routed[f"{label}, {tokens} tokens"], removed = check_against_reference(candidates, x)
                skipped.update(removed)
                results += _measure_mode(candidates, "forward", x, config)
            for tokens in config.train_tokens:
                x = torch.randn(tokens, config.width, device=device, dtype=dtype)
                results += _measure_mode(candidates, "train", x, config)
            gflops = measure_gemm_gflops(config.width, config.dense_width, device=device, dtype=dtype)
            floor = {
                str(t): fff_useful_flops(t, config.width, config.depth, config.trees) / (gflops * 1e9) * 1e3
                for t in config.tokens
            }
            passes.append({"threads": threads, "dtype": dtype_name, "gemm_gflops": gflops, "fff_floor_ms": floor})
        machine = machine_info(device)
    finally:
        torch.set_num_threads(previous_threads)
    report = {
        "benchmark": "layer",
        "device": device,
        "machine": machine,
        "kernel_isa": kernels.isa() if device == "cpu" else None,
        "timing": TIMING_METHOD if device == "cpu" else f"{TIMING_METHOD}; {CUDA_TIMING}",
        "config": asdict(config),
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
        plot_layer_report(report, output.with_suffix(".png"), baseline=baseline)
        print(f"\nwrote {output.with_suffix('.json')} and {output.with_suffix('.png')}")
    return report


def _progress_line(m: Measurement) -> str:
    return f"  {m.mode:<7} {m.tokens:>6} tokens  {m.name:<32} {m.median_ms:10.4f} ms  ({m.repeats} runs)"


def pass_label(device: str, threads: int, dtype: str) -> str:
    """How a pass is named in tables and plots: its dtype, and on CPU its thread count."""
    return f"{dtype}, {threads} threads" if device == "cpu" else dtype


def _pass_results(report: dict, run: dict, mode: str) -> list[dict]:
    return [
        r
        for r in report["results"]
        if r["mode"] == mode and r["threads"] == run["threads"] and r["dtype"] == run["dtype"]
    ]


def format_table(report: dict, baseline: str) -> str:
    """Markdown tables of median ms and the speed-up of each path over ``baseline``: per pass, one per mode."""
    machine, device = report["machine"], report.get("device", "cpu")
    lines = [f"cpu={machine['cpu']}  logical cores={machine['logical_cores']}  kernel isa={report.get('kernel_isa')}"]
    if device != "cpu":
        lines = [f"gpu={machine['gpu']}  cuda={machine['cuda']}  triton={machine['triton']}  cpu={machine['cpu']}"]
    for run in report["passes"]:
        label = pass_label(device, run["threads"], run["dtype"])
        lines += ["", f"{label}: gemm={run['gemm_gflops']:.0f} GFLOP/s"]
        for mode in ("forward", "train"):
            rows = _pass_results(report, run, mode)
            if not rows:
                continue
            names = list(dict.fromkeys(r["name"] for r in rows))
            tokens = list(dict.fromkeys(r["tokens"] for r in rows))
            by_key = {(r["name"], r["tokens"]): r["median_ms"] for r in rows}
            lines += ["", f"{mode}, {label}: median ms (speed-up over {baseline})", ""]
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
                lines.append(f"| FFF compute floor (useful FLOPs / gemm rate) | {floor} |")
    for name, reason in report.get("skipped", {}).items():
        lines += ["", f"skipped {name}: {reason}"]
    return "\n".join(lines)


def plot_layer_report(report: dict, path: Path, baseline: str, modes: tuple[str, ...] = ("forward", "train")) -> None:
    """Log-log time vs tokens per implementation, and the speed-up over the dense baseline, one row of panels per
    mode that was timed; one line style per pass (thread count and dtype, or dtype on a GPU)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = report.get("device", "cpu")
    modes = tuple(mode for mode in modes if any(r["mode"] == mode for r in report["results"])) or ("forward",)
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(len(modes), 2, figsize=(12, 4.5 * len(modes)), squeeze=False)
    for (ax_time, ax_speed), mode in zip(axes, modes, strict=True):
        names = list(dict.fromkeys(r["name"] for r in report["results"] if r["mode"] == mode))
        for index, run in enumerate(report["passes"]):
            style, label_suffix = styles[index % len(styles)], pass_label(device, run["threads"], run["dtype"])
            rows = _pass_results(report, run, mode)
            base = {r["tokens"]: r["median_ms"] for r in rows if r["name"] == baseline}
            for color, name in enumerate(names):
                points = sorted((r["tokens"], r["median_ms"]) for r in rows if r["name"] == name)
                if not points:
                    continue
                tokens, ms = zip(*points, strict=True)
                label = f"{name}, {label_suffix}"
                ax_time.plot(tokens, ms, style, marker="o", color=f"C{color}", label=label)
                speed_up = [(t, base[t] / m) for t, m in points if t in base]
                if speed_up:
                    ax_speed.plot(*zip(*speed_up, strict=True), style, marker="o", color=f"C{color}", label=label)
            if mode == "forward":
                floor = sorted((int(t), ms) for t, ms in run["fff_floor_ms"].items())
                ax_time.plot(*zip(*floor, strict=True), style, color="gray", label=f"FFF compute floor, {label_suffix}")
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
    passes = ", ".join(pass_label(device, run["threads"], run["dtype"]) for run in report["passes"])
    where = machine["gpu"] if device != "cpu" else f"{machine['cpu']}, kernel built for {report.get('kernel_isa')}"
    fig.suptitle(f"FFF {config['trees']}x{config['depth']} vs dense, width {config['width']}, {passes}, {where}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_shape_benchmark(
    shapes: tuple[tuple[int, int], ...] = ((1, 11), (2, 10), (4, 9), (8, 8), (16, 7)),
    width: int = 768,
    tokens: int = 4096,
    threads: int | None = None,
    output: str | Path | None = None,
) -> dict:
    """Trees vs depth at (nearly) equal total neurons (1x11, 2x10, ... all hold ~4095): forward ms per token of the
    default path (the kernel where it builds) for each ``(trees, depth)``, each checked against the reference, and
    of the equal-FLOPs narrow dense layer of each shape (as many hidden units as the FFF evaluates per token), all
    timed together in interleaved rounds."""
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(tokens, width)
    layers = {f"{trees}x{depth}": FFF(width, depth, trees) for trees, depth in shapes}
    narrow_widths = sorted({layer.neurons_per_token for layer in layers.values()})
    narrow = {hidden: Candidate(f"dense FF-{hidden}", dense_feedforward(width, hidden)) for hidden in narrow_widths}
    try:
        defaults = []
        for name, layer in layers.items():
            default = Candidate(name, layer, "auto")
            check_against_reference([Candidate(f"{name} reference", layer, "reference"), default], x)
            defaults.append(default)
        candidates = [*defaults, *narrow.values()]
        rounds = LayerBenchConfig().rounds(len(candidates))
        timed = {m.name: m for m in measure(candidates, "forward", x, rounds)}
        machine = machine_info()
    finally:
        torch.set_num_threads(previous_threads)
    rows = []
    for name, layer in layers.items():
        narrow_ms = timed[narrow[layer.neurons_per_token].name].median_ms
        rows.append(
            {
                "trees": layer.trees,
                "depth": layer.depth,
                "neurons": layer.linear_in.out_features,
                "neurons_per_token": layer.neurons_per_token,
                "path": layer.resolve_impl(x),
                "median_ms": timed[name].median_ms,
                "us_per_token": timed[name].median_ms * 1e3 / tokens,
                "equal_flops_dense_ms": narrow_ms,
                "time_over_equal_flops_dense": timed[name].median_ms / narrow_ms,
            }
        )
    report = {
        "benchmark": "layer-shapes",
        "machine": machine,
        "kernel_isa": kernels.isa(),
        "timing": TIMING_METHOD,
        "width": width,
        "tokens": tokens,
        "results": rows,
    }
    lines = [
        "| trees x depth | neurons | used per token | path | ms | us per token | equal-FLOPs dense ms | FFF / dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['trees']}x{row['depth']} | {row['neurons']} | {row['neurons_per_token']} | {row['path']} | "
            f"{row['median_ms']:.3f} | {row['us_per_token']:.4f} | {row['equal_flops_dense_ms']:.3f} | "
            f"{row['time_over_equal_flops_dense']:.2f}x |"
        )
    print("\n".join(lines))
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return report
