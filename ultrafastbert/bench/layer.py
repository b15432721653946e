"""Layer benchmark: dense feedforward vs every FFF execution path, side by side in one process.

Methodology (``../shared/DESIGN.md`` §5): random normal inputs, every FFF path checked against the masking
reference before it is timed, warm-up, median of repeats, fixed threads, JSON with machine facts, and a plot.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..fff import FFF, kernels
from .timing import machine_info, time_callable


@dataclass
class LayerBenchConfig:
    tokens: tuple[int, ...] = (1, 128, 16384)
    width: int = 768
    depth: int = 11
    trees: int = 1
    dense_width: int = 3072
    threads: int | None = None
    repeats: int | None = None
    train_tokens: tuple[int, ...] = (128, 4096)
    seed: int = 0


@dataclass
class Measurement:
    name: str
    mode: str  # "forward" (no grad) or "train" (forward + backward)
    tokens: int
    median_ms: float
    min_ms: float
    repeats: int


@dataclass
class Candidate:
    """One implementation under test: a module, and the FFF ``impl`` to set on it (None for dense)."""

    name: str
    module: nn.Module
    impl: str | None = None
    modes: tuple[str, ...] = ("forward", "train")

    def prepare(self) -> None:
        """Select this candidate's path once, outside the timed calls (the candidates share one FFF module)."""
        if self.impl is not None:
            self.module.impl = self.impl

    def run(self, x: Tensor) -> Tensor:
        self.prepare()
        return self.module(x)


def dense_feedforward(width: int, hidden: int) -> nn.Sequential:
    """The dense baseline: ``Linear -> GELU -> Linear`` as in BERT."""
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


def build_candidates(config: LayerBenchConfig) -> list[Candidate]:
    fff = FFF(config.width, config.depth, config.trees)  # published initialisation
    nodes = fff.linear_in.out_features
    return [
        Candidate(f"dense FF-{config.dense_width}", dense_feedforward(config.width, config.dense_width)),
        Candidate(f"dense FF-{nodes}", dense_feedforward(config.width, nodes)),
        Candidate("FFF reference (masking)", fff, "reference"),
        Candidate("FFF sparse (PyTorch)", fff, "sparse", modes=("train",)),
        Candidate("FFF walk (PyTorch)", fff, "walk", modes=("forward",)),
        *([Candidate("FFF kernel (C++)", fff, "kernel")] if kernels.available() else []),
    ]


def check_against_reference(candidates: list[Candidate], x: Tensor) -> None:
    """Refuse to time an FFF path whose output differs from the reference on this very input."""
    fffs = [c for c in candidates if c.impl is not None]
    reference = next(c for c in fffs if c.impl == "reference")
    with torch.no_grad():
        expected = reference.run(x)
        for candidate in fffs:
            got = candidate.run(x)
            error = ((got - expected).abs().max() / expected.abs().max()).item()
            if error > 1e-4:
                raise AssertionError(f"{candidate.name} differs from the reference by {error:.2e} (relative)")


def measure_forward(candidate: Candidate, x: Tensor, repeats: int | None) -> Measurement:
    """Times the plain module call, as a user makes it inside ``torch.no_grad()`` (entered once, not per call)."""
    candidate.prepare()
    module = candidate.module
    with torch.no_grad():
        timing = time_callable(lambda: module(x), **_repeat_limits(repeats))
    return Measurement(candidate.name, "forward", x.shape[0], timing.median_s * 1e3, timing.min_s * 1e3, timing.repeats)


def measure_train_step(candidate: Candidate, x: Tensor, repeats: int | None) -> Measurement:
    upstream = torch.randn_like(x)
    x = x.detach().requires_grad_(True)

    candidate.prepare()

    def step() -> None:
        candidate.module.zero_grad(set_to_none=True)
        x.grad = None
        (candidate.module(x) * upstream).sum().backward()

    timing = time_callable(step, **_repeat_limits(repeats))
    return Measurement(candidate.name, "train", x.shape[0], timing.median_s * 1e3, timing.min_s * 1e3, timing.repeats)


def _repeat_limits(repeats: int | None) -> dict[str, float]:
    if repeats is None:
        return {}
    return {"min_seconds": 0.0, "min_repeats": repeats, "max_repeats": repeats}


def measure_gemm_gflops(width: int, hidden: int, tokens: int = 4096) -> float:
    """Achieved GFLOP/s of a large sgemm: the machine's practical compute ceiling for the floor estimate."""
    a, b = torch.randn(tokens, width), torch.randn(width, hidden)
    timing = time_callable(lambda: a @ b, min_seconds=0.5)
    return 2 * tokens * width * hidden / timing.median_s / 1e9


def fff_useful_flops(tokens: int, width: int, depth: int, trees: int) -> int:
    """One dot product (logit) and one axpy (output) of ``width`` per visited node."""
    return tokens * trees * (depth + 1) * 4 * width


def run_layer_benchmark(config: LayerBenchConfig, output: str | Path | None = None) -> dict:
    """Time all candidates, print a table and write ``<output>.json`` and ``<output>.png``."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    candidates = build_candidates(config)
    results: list[Measurement] = []
    for tokens in config.tokens:
        x = torch.randn(tokens, config.width)
        check_against_reference(candidates, x)
        for candidate in (c for c in candidates if "forward" in c.modes):
            results.append(measure_forward(candidate, x, config.repeats))
            print(_progress_line(results[-1]), flush=True)
    for tokens in config.train_tokens:
        x = torch.randn(tokens, config.width)
        for candidate in (c for c in candidates if "train" in c.modes):
            results.append(measure_train_step(candidate, x, config.repeats))
            print(_progress_line(results[-1]), flush=True)
    gflops = measure_gemm_gflops(config.width, config.dense_width)
    report = {
        "benchmark": "layer",
        "machine": machine_info(),
        "config": asdict(config),
        "sgemm_gflops": gflops,
        "fff_floor_ms": {
            str(t): fff_useful_flops(t, config.width, config.depth, config.trees) / (gflops * 1e9) * 1e3
            for t in config.tokens
        },
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
    return f"  {m.mode:<7} {m.tokens:>6} tokens  {m.name:<26} {m.median_ms:10.4f} ms  ({m.repeats} runs)"


def format_table(report: dict, baseline: str) -> str:
    """Markdown tables of median ms and the speed-up of each path over ``baseline``, one per mode."""
    lines = [
        f"threads={report['machine']['torch_threads']}  cpu={report['machine']['cpu']}  "
        f"sgemm={report['sgemm_gflops']:.0f} GFLOP/s"
    ]
    for mode in ("forward", "train"):
        rows = [r for r in report["results"] if r["mode"] == mode]
        if not rows:
            continue
        names = list(dict.fromkeys(r["name"] for r in rows))
        tokens = list(dict.fromkeys(r["tokens"] for r in rows))
        by_key = {(r["name"], r["tokens"]): r["median_ms"] for r in rows}
        lines += ["", f"{mode}: median ms (speed-up over {baseline})", ""]
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
            floor = " | ".join(f"{report['fff_floor_ms'][str(t)]:.4g}" for t in tokens)
            lines.append(f"| FFF compute floor (useful FLOPs / sgemm rate) | {floor} |")
    return "\n".join(lines)


def plot_layer_report(report: dict, path: Path, baseline: str) -> None:
    """Log-log time vs tokens per implementation, and the speed-up over the dense baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if r["mode"] == "forward"]
    names = list(dict.fromkeys(r["name"] for r in rows))
    base = {r["tokens"]: r["median_ms"] for r in rows if r["name"] == baseline}
    fig, (ax_time, ax_speed) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in names:
        points = sorted((r["tokens"], r["median_ms"]) for r in rows if r["name"] == name)
        tokens, ms = zip(*points, strict=True)
        ax_time.plot(tokens, ms, marker="o", label=name)
        ax_speed.plot(tokens, [base[t] / m for t, m in points], marker="o", label=name)
    floor = sorted((int(t), ms) for t, ms in report["fff_floor_ms"].items())
    ax_time.plot(*zip(*floor, strict=True), linestyle="--", color="gray", label="FFF compute floor")
    for ax, title, ylabel in (
        (ax_time, "forward time", "median ms"),
        (ax_speed, f"speed-up over {baseline}", "x"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_time.legend(fontsize=8)
    config = report["config"]
    fig.suptitle(
        f"FFF {config['trees']}x{config['depth']} vs dense, width {config['width']}, "
        f"{report['machine']['torch_threads']} threads, {report['machine']['cpu']}"
    )
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
    default path (the kernel where it builds) for each ``(trees, depth)``, each checked against the reference."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(tokens, width)
    rows = []
    for trees, depth in shapes:
        layer = FFF(width, depth, trees)
        candidates = [Candidate("reference", layer, "reference"), Candidate("default", layer, "auto")]
        check_against_reference(candidates, x)
        measurement = measure_forward(candidates[1], x, None)
        rows.append(
            {
                "trees": trees,
                "depth": depth,
                "neurons": layer.linear_in.out_features,
                "neurons_per_token": layer.neurons_per_token,
                "path": layer.resolve_impl(x),
                "median_ms": measurement.median_ms,
                "us_per_token": measurement.median_ms * 1e3 / tokens,
            }
        )
    report = {"benchmark": "layer-shapes", "machine": machine_info(), "width": width, "tokens": tokens, "results": rows}
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
