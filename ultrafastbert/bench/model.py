"""Whole-model benchmark: forward throughput of crammedBERT (dense), UltraFastBERT with the original masking
FFF and with our default path, and ``transformers``' BERT, side by side in one process, split per component.

Methodology (``../shared/DESIGN.md`` §5): random weights (published init) and random token ids, the fast FFF path
checked against the masking reference on the very input it is timed on, warm-up, median of repeats, fixed and
reported threads, JSON with machine facts and load averages, and a plot. Candidates are timed in interleaved
rounds, so that a busy shared machine slows all of them alike. Components are timed in a second pass with forward
hooks (so the headline numbers carry no hook overhead), as shares of the headline time; "other" is the rest
(LayerNorms, residuals, masks, input checks).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .timing import machine_info

COMPONENTS = ("embeddings", "attention", "feedforward", "head", "other")


@dataclass
class ModelBenchConfig:
    """Shapes default to the published models: 16 layers, hidden 768, 12 heads, vocab 32768, sequence 128."""

    batches: tuple[int, ...] = (1, 8)
    seq_len: int = 128
    layers: int = 16
    hidden: int = 768
    heads: int = 12
    vocab: int = 32768
    dense_intermediate: int = 3072
    fff_trees: int = 1
    fff_depth: int = 11
    head: str = "classification"  # or "mlm": the 32768-way decoder
    threads: int | None = None
    repeats: int | None = None  # fixed number of timed rounds; None: adaptive (min_rounds .. max_rounds)
    min_rounds: int = 5
    max_rounds: int = 100
    min_seconds: float = 5.0
    warmup: int = 2
    component_repeats: int = 3
    seed: int = 0


@dataclass
class Candidate:
    """One model under test; ``components`` maps component names to the modules whose time they collect."""

    name: str
    model: nn.Module
    components: dict[str, list[nn.Module]]
    fff_impl: str | None = None

    def prepare(self) -> None:
        if self.fff_impl is not None:
            self.model.set_fff_impl(self.fff_impl)

    def run(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return output.logits if hasattr(output, "logits") else output.pooler_output


@dataclass
class ModelMeasurement:
    name: str
    batch: int
    tokens: int
    median_ms: float
    min_ms: float
    repeats: int
    tokens_per_second: float
    components_ms: dict[str, float] = field(default_factory=dict)


def build_candidates(config: ModelBenchConfig) -> list[Candidate]:
    """crammedBERT dense, UltraFastBERT (one model, timed with the masking reference and with the default path),
    and ``transformers.BertModel`` with the bert-base config at the same depth."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    from ..model import CrammedBertConfig, CrammedBertForMaskedLM, CrammedBertForSequenceClassification

    shared = {
        "vocab_size": config.vocab,
        "hidden_size": config.hidden,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "max_position_embeddings": config.seq_len,
    }
    model_class = CrammedBertForMaskedLM if config.head == "mlm" else CrammedBertForSequenceClassification
    dense_config = CrammedBertConfig(
        **shared, ffn_type="dense", hidden_act="gelu_glu", intermediate_size=config.dense_intermediate
    )
    fff_config = CrammedBertConfig(**shared, ffn_type="fff", fff_trees=config.fff_trees, fff_depth=config.fff_depth)
    dense, fff = model_class(dense_config), model_class(fff_config)
    bert_config = BertConfig(
        vocab_size=config.vocab,
        hidden_size=config.hidden,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=4 * config.hidden,
    )
    bert = BertForMaskedLM(bert_config) if config.head == "mlm" else BertModel(bert_config)
    fff_name = f"UltraFastBERT-{config.fff_trees}x{config.fff_depth}"
    return [
        Candidate(f"crammedBERT dense (GELUglu {config.dense_intermediate})", dense, _crammed_components(dense)),
        Candidate(f"{fff_name} masking reference", fff, _crammed_components(fff), fff_impl="reference"),
        Candidate(f"{fff_name} default (fast)", fff, _crammed_components(fff), fff_impl="auto"),
        Candidate("BERT-base config (transformers BertModel)", bert, _bert_components(bert)),
    ]


def _crammed_components(model: nn.Module) -> dict[str, list[nn.Module]]:
    encoder = model.encoder
    heads = [model.decoder] if hasattr(model, "decoder") else [model.pooler, model.head]
    return {
        "embeddings": [encoder.embedding],
        "attention": [layer.attn for layer in encoder.layers],
        "feedforward": [layer.ffn for layer in encoder.layers],
        "head": heads,
    }


def _bert_components(model: nn.Module) -> dict[str, list[nn.Module]]:
    bert = getattr(model, "bert", model)
    layers = bert.encoder.layer
    return {
        "embeddings": [bert.embeddings],
        "attention": [layer.attention for layer in layers],
        "feedforward": [module for layer in layers for module in (layer.intermediate, layer.output)],
        "head": [model.cls] if hasattr(model, "cls") else [bert.pooler],
    }


def check_fast_against_reference(candidates: list[Candidate], input_ids: Tensor, mask: Tensor) -> float:
    """Refuse to time the default FFF path if it changes the model's output on this input; returns the error
    relative to the largest output."""
    reference = next(c for c in candidates if c.fff_impl == "reference")
    fast = next(c for c in candidates if c.fff_impl == "auto")
    with torch.no_grad():
        reference.prepare()
        expected = reference.run(input_ids, mask)
        fast.prepare()
        got = fast.run(input_ids, mask)
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    if error > 1e-4:
        raise AssertionError(f"{fast.name} differs from {reference.name} by {error:.2e} (relative)")
    return error


class ComponentTimer:
    """Accumulates wall-clock seconds spent inside groups of modules, through forward pre-/post-hooks."""

    def __init__(self, components: dict[str, list[nn.Module]]) -> None:
        self.seconds = dict.fromkeys(components, 0.0)
        self._handles = []
        for name, modules in components.items():
            for module in modules:
                self._handles.append(module.register_forward_pre_hook(self._start))
                self._handles.append(module.register_forward_hook(self._stopper(name)))
        self._started: list[float] = []

    def _start(self, module: nn.Module, args: object) -> None:
        self._started.append(time.perf_counter())

    def _stopper(self, name: str) -> Callable[..., None]:
        def stop(module: nn.Module, args: object, output: object) -> None:
            self.seconds[name] += time.perf_counter() - self._started.pop()

        return stop

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def measure_batch(
    candidates: list[Candidate], input_ids: Tensor, mask: Tensor, config: ModelBenchConfig
) -> list[ModelMeasurement]:
    """Time all candidates on one batch in interleaved rounds (each round runs every candidate once, in rotating
    order), so that load changing on a shared machine hits all of them alike. Then the component split, again
    interleaved, with hooks attached only around the run they measure: each component's median share of its
    run, applied to the headline median (shares are steadier than absolute times when the load changes)."""

    def forward(candidate: Candidate) -> float:
        candidate.prepare()
        with torch.no_grad():
            started = time.perf_counter()
            candidate.run(input_ids, mask)
            return time.perf_counter() - started

    for candidate in candidates:
        for _ in range(config.warmup):
            forward(candidate)
    samples: dict[str, list[float]] = {c.name: [] for c in candidates}
    min_rounds = config.repeats if config.repeats is not None else config.min_rounds
    max_rounds = config.repeats if config.repeats is not None else config.max_rounds
    started = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - started < config.min_seconds):
        shift = rounds % len(candidates)
        for candidate in candidates[shift:] + candidates[:shift]:
            samples[candidate.name].append(forward(candidate))
        rounds += 1
    shares: dict[str, dict[str, list[float]]] = {c.name: {name: [] for name in COMPONENTS} for c in candidates}
    for _ in range(config.component_repeats):
        for candidate in candidates:
            timer = ComponentTimer(candidate.components)
            try:
                total = forward(candidate)
            finally:
                timer.remove()
            for name, seconds in timer.seconds.items():
                shares[candidate.name][name].append(seconds / total)
            shares[candidate.name]["other"].append(1.0 - sum(timer.seconds.values()) / total)
    batch, seq_len = input_ids.shape
    results = []
    for candidate in candidates:
        median = statistics.median(samples[candidate.name])
        share = {name: max(statistics.median(values), 0.0) for name, values in shares[candidate.name].items()}
        norm = sum(share.values())
        results.append(
            ModelMeasurement(
                name=candidate.name,
                batch=batch,
                tokens=batch * seq_len,
                median_ms=median * 1e3,
                min_ms=min(samples[candidate.name]) * 1e3,
                repeats=len(samples[candidate.name]),
                tokens_per_second=batch * seq_len / median,
                components_ms={name: median * 1e3 * value / norm for name, value in share.items()},
            )
        )
    return results


def ratios(
    results: list[ModelMeasurement], candidates: list[Candidate], statistic: str = "median_ms"
) -> dict[str, dict[str, float]]:
    """Per batch: time of each other model divided by the time of UltraFastBERT's default path."""
    fast = next(c.name for c in candidates if c.fff_impl == "auto")
    by_key = {(r.name, r.batch): getattr(r, statistic) for r in results}
    table: dict[str, dict[str, float]] = {}
    for batch in sorted({r.batch for r in results}):
        table[str(batch)] = {
            f"{c.name} / {fast}": by_key[(c.name, batch)] / by_key[(fast, batch)] for c in candidates if c.name != fast
        }
    return table


def run_model_benchmark(config: ModelBenchConfig, output: str | Path | None = None) -> dict:
    """Time every candidate at every batch size, print a table and write ``<output>.json`` / ``.png``."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    candidates = build_candidates(config)
    for candidate in candidates:
        candidate.model.eval()
    fast = next(c for c in candidates if c.fff_impl == "auto")
    results: list[ModelMeasurement] = []
    checks: dict[str, float] = {}
    load_before = os.getloadavg()
    for batch in config.batches:
        input_ids = torch.randint(0, config.vocab, (batch, config.seq_len))
        mask = torch.ones(batch, config.seq_len, dtype=torch.long)
        checks[str(batch)] = check_fast_against_reference(candidates, input_ids, mask)
        for measurement in measure_batch(candidates, input_ids, mask, config):
            results.append(measurement)
            print(_progress_line(measurement), flush=True)
    fast.prepare()
    fff_layer = next(m for m in fast.model.modules() if type(m).__name__ == "FFF")
    with torch.no_grad():
        resolved = fff_layer.resolve_impl(torch.zeros(1, config.hidden))
    report = {
        "benchmark": "model",
        "machine": machine_info(),
        # 1/5/15-minute load averages around the run: above the thread count, other processes competed for cores
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "config": asdict(config),
        "fff_default_path_resolves_to": resolved,
        "fast_vs_reference_relative_error": checks,
        "results": [asdict(r) for r in results],
        "ratios": ratios(results, candidates),
        # the same from the fastest run of each: less sensitive to other processes on a shared machine
        "ratios_of_minima": ratios(results, candidates, "min_ms"),
    }
    print()
    print(format_table(report))
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        plot_model_report(report, output.with_suffix(".png"))
        print(f"\nwrote {output.with_suffix('.json')} and {output.with_suffix('.png')}")
    return report


def _progress_line(m: ModelMeasurement) -> str:
    return f"  batch {m.batch:>3}  {m.name:<44} {m.median_ms:10.2f} ms  {m.tokens_per_second:10.0f} tokens/s"


def format_table(report: dict) -> str:
    """Markdown table: per model and batch, median ms, tokens/s and the component split."""
    machine, load = report["machine"], report["load_average"]
    lines = [
        f"threads={machine['torch_threads']}  cpu={machine['cpu']}  "
        f"FFF default path: {report['fff_default_path_resolves_to']}  "
        f"load average before/after: {load['before'][0]:.2f}/{load['after'][0]:.2f}",
        "",
        "| model | batch | median ms | min ms | tokens/s | " + " | ".join(f"{c} ms" for c in COMPONENTS) + " |",
        "|---|---|---|---|---|" + "---|" * len(COMPONENTS),
    ]
    for r in report["results"]:
        split = " | ".join(f"{r['components_ms'][c]:.1f}" for c in COMPONENTS)
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
            f"{r['tokens_per_second']:.0f} | {split} |"
        )
    lines += ["", "time ratios over the default path: median runs (fastest runs)"]
    for batch, table in report["ratios"].items():
        minima = report["ratios_of_minima"][batch]
        cells = [f"{name} = {value:.2f}x ({minima[name]:.2f}x)" for name, value in table.items()]
        lines.append(f"batch {batch}: " + ", ".join(cells))
    return "\n".join(lines)


def plot_model_report(report: dict, path: Path) -> None:
    """Stacked bars of the component split per model, one panel per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = list(dict.fromkeys(r["batch"] for r in report["results"]))
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 5), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        rows = [r for r in report["results"] if r["batch"] == batch]
        names = [r["name"].replace(" (", "\n(") for r in rows]
        bottom = [0.0] * len(rows)
        for component in COMPONENTS:
            values = [r["components_ms"][component] for r in rows]
            ax.bar(names, values, bottom=bottom, label=component)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        for index, r in enumerate(rows):
            ax.text(index, bottom[index], f"{r['median_ms']:.0f} ms\n{r['tokens_per_second']:.0f} tok/s",
                    ha="center", va="bottom", fontsize=8)
        ax.set_title(f"batch {batch} x seq {report['config']['seq_len']}")
        ax.set_ylabel("forward ms (median), split by component")
        ax.tick_params(axis="x", labelsize=7, rotation=15)
        ax.margins(y=0.15)
    axes[0][0].legend(fontsize=8)
    config, machine = report["config"], report["machine"]
    fig.suptitle(
        f"{config['layers']} layers, hidden {config['hidden']}, {config['head']} head, fp32, "
        f"{machine['torch_threads']} threads, {machine['cpu']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's command-line options (shared by ``benchmarks/model.py`` and any CLI wiring)."""
    defaults = ModelBenchConfig()
    parser.add_argument("--batches", type=int, nargs="+", default=list(defaults.batches))
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--layers", type=int, default=defaults.layers)
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--heads", type=int, default=defaults.heads)
    parser.add_argument("--vocab", type=int, default=defaults.vocab)
    parser.add_argument("--dense-intermediate", type=int, default=defaults.dense_intermediate)
    parser.add_argument("--fff-trees", type=int, default=defaults.fff_trees)
    parser.add_argument("--fff-depth", type=int, default=defaults.fff_depth)
    parser.add_argument("--head", choices=("classification", "mlm"), default=defaults.head)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default: adaptive)")
    parser.add_argument("--output", default="benchmarks/results/model", help="path prefix for .json and .png")


def run_from_args(args: argparse.Namespace) -> int:
    config = ModelBenchConfig(
        batches=tuple(args.batches),
        seq_len=args.seq_len,
        layers=args.layers,
        hidden=args.hidden,
        heads=args.heads,
        vocab=args.vocab,
        dense_intermediate=args.dense_intermediate,
        fff_trees=args.fff_trees,
        fff_depth=args.fff_depth,
        head=args.head,
        threads=args.threads,
        repeats=args.repeats,
    )
    run_model_benchmark(config, output=args.output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
