"""Whole-model benchmark: forward throughput of crammedBERT (dense), UltraFastBERT with the original masking
FFF and with our default path, and ``transformers``' BERT, side by side in one process, split per component.

Method (``benchmarks/README.md``): random weights (published init) and random token ids, the fast FFF path checked
against the masking reference on the very input it is timed on, all candidates timed together in interleaved rounds
(``timing.time_interleaved``: warm-up, medians), fixed and reported threads, JSON with machine facts and load
averages, and a plot. Components are timed in a second pass with forward hooks (so the headline numbers carry no
hook overhead), as shares of the headline time; "other" is the rest (LayerNorms, residuals, masks, input checks).
On a GPU (``device="cuda"``) the forwards are timed with CUDA events and there is no component split (host-side
hooks cannot time asynchronous GPU work without synchronising inside the forward).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..fff import FFF
from ..model import CrammedBertConfig, CrammedBertForMaskedLM, CrammedBertForSequenceClassification
from .config import ModelBenchConfig
from .timing import CUDA_TIMING, TIMING_METHOD, TimedCall, machine_info, require_device, time_interleaved

COMPONENTS = ("embeddings", "attention", "feedforward", "head", "other")
# The default FFF path against the masking reference, relative to the largest output. On a GPU a float32 near-tie
# can route a token otherwise than the reference (summation orders differ), which moves that sequence's outputs
# through attention by far more than rounding does: the check there only catches a broken path.
CHECK_TOLERANCE = {"cpu": 1e-4, "cuda": 1e-2}


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

    shared = {
        "vocab_size": config.vocab,
        "hidden_size": config.hidden,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "max_position_embeddings": config.seq_len,
    }
    model_class = CrammedBertForMaskedLM if config.head == "mlm" else CrammedBertForSequenceClassification
    dense_config = CrammedBertConfig.from_preset("crammed-bert", **shared, intermediate_size=config.dense_intermediate)
    fff_config = CrammedBertConfig.from_preset(f"ufb-{config.fff_trees}x{config.fff_depth}", **shared)
    dense, fff = model_class(dense_config), model_class(fff_config)
    bert_config = BertConfig(
        vocab_size=config.vocab,
        hidden_size=config.hidden,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=4 * config.hidden,
    )
    bert = BertForMaskedLM(bert_config) if config.head == "mlm" else BertModel(bert_config)
    return [
        Candidate(f"crammedBERT dense (GELUglu {dense_config.intermediate_size})", dense, _crammed_components(dense)),
        Candidate(f"{fff_config.name} masking reference", fff, _crammed_components(fff), fff_impl="reference"),
        Candidate(f"{fff_config.name} default (fast)", fff, _crammed_components(fff), fff_impl="auto"),
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
    """Refuse to time the default FFF path if it changes the model's output on this input (``CHECK_TOLERANCE`` of
    its device); returns the error relative to the largest output."""
    reference = next(c for c in candidates if c.fff_impl == "reference")
    fast = next(c for c in candidates if c.fff_impl == "auto")
    with torch.no_grad():
        reference.prepare()
        expected = reference.run(input_ids, mask)
        fast.prepare()
        got = fast.run(input_ids, mask)
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    if error > CHECK_TOLERANCE[input_ids.device.type]:
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
    """Time all candidates on one batch together in interleaved rounds. Then the component split, again
    interleaved, with hooks attached only around the run they measure: each component's median share of its
    run, applied to the headline median (shares are steadier than absolute times when the load changes)."""
    calls = [TimedCall(c.name, functools.partial(c.run, input_ids, mask), c.prepare) for c in candidates]
    with torch.no_grad():
        timings = time_interleaved(calls, config.rounds, config.device)

    def forward(candidate: Candidate) -> float:
        candidate.prepare()
        with torch.no_grad():
            started = time.perf_counter()
            candidate.run(input_ids, mask)
            return time.perf_counter() - started

    shares: dict[str, dict[str, list[float]]] = {c.name: {name: [] for name in COMPONENTS} for c in candidates}
    for _ in range(config.component_repeats if config.device == "cpu" else 0):
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
        timing = timings[candidate.name]
        median = timing.median_s
        share = {
            name: max(statistics.median(values), 0.0) for name, values in shares[candidate.name].items() if values
        }
        norm = sum(share.values()) or 1.0
        results.append(
            ModelMeasurement(
                name=candidate.name,
                batch=batch,
                tokens=batch * seq_len,
                median_ms=median * 1e3,
                min_ms=timing.min_s * 1e3,
                repeats=timing.repeats,
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
    """Time every candidate at every batch size, print a table and write ``<output>.json`` / ``.png``. Torch's
    thread count is set for the run only."""
    require_device(config.device)
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        report = _time_models(config)
    finally:
        torch.set_num_threads(previous_threads)
    print()
    print(format_table(report))
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        plot_model_report(report, output.with_suffix(".png"))
        print(f"\nwrote {output.with_suffix('.json')} and {output.with_suffix('.png')}")
    return report


def _time_models(config: ModelBenchConfig) -> dict:
    """The report of one run: machine facts, the checks, the measurements and the ratios."""
    torch.manual_seed(config.seed)
    candidates = build_candidates(config)
    for candidate in candidates:
        candidate.model.to(config.device).eval()
    fast = next(c for c in candidates if c.fff_impl == "auto")
    results: list[ModelMeasurement] = []
    checks: dict[str, float] = {}
    load_before = os.getloadavg()
    for batch in config.batches:
        input_ids = torch.randint(0, config.vocab, (batch, config.seq_len)).to(config.device)
        mask = torch.ones(batch, config.seq_len, dtype=torch.long, device=config.device)
        checks[str(batch)] = check_fast_against_reference(candidates, input_ids, mask)
        for measurement in measure_batch(candidates, input_ids, mask, config):
            results.append(measurement)
            print(_progress_line(measurement), flush=True)
    fast.prepare()
    fff_layer = next(m for m in fast.model.modules() if isinstance(m, FFF))
    with torch.no_grad():
        resolved = fff_layer.resolve_impl(torch.zeros(1, config.hidden, device=config.device))
    return {
        "benchmark": "model",
        "device": config.device,
        "machine": machine_info(config.device),
        # 1/5/15-minute load averages around the run: above the thread count, other processes competed for cores
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "timing": TIMING_METHOD if config.device == "cpu" else f"{TIMING_METHOD}; {CUDA_TIMING}",
        "config": asdict(config),
        "fff_default_path_resolves_to": resolved,
        "fast_vs_reference_relative_error": checks,
        "results": [asdict(r) for r in results],
        "ratios": ratios(results, candidates),
        # the same from the fastest run of each: less sensitive to other processes on a shared machine
        "ratios_of_minima": ratios(results, candidates, "min_ms"),
    }


def _progress_line(m: ModelMeasurement) -> str:
    return f"  batch {m.batch:>3}  {m.name:<44} {m.median_ms:10.2f} ms  {m.tokens_per_second:10.0f} tokens/s"


def format_table(report: dict) -> str:
    """Markdown table: per model and batch, median ms, tokens/s and the component split."""
    machine, load = report["machine"], report["load_average"]
    lines = [
        (f"gpu={machine['gpu']}  " if "gpu" in machine else "")
        + f"threads={machine['torch_threads']}  cpu={machine['cpu']}  "
        f"FFF default path: {report['fff_default_path_resolves_to']}  "
        f"load average before/after: {load['before'][0]:.2f}/{load['after'][0]:.2f}",
        "",
        "| model | batch | median ms | min ms | tokens/s | " + " | ".join(f"{c} ms" for c in COMPONENTS) + " |",
        "|---|---|---|---|---|" + "---|" * len(COMPONENTS),
    ]
    for r in report["results"]:
        split = " | ".join(f"{r['components_ms'][c]:.1f}" if c in r["components_ms"] else "-" for c in COMPONENTS)
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
            values = [r["components_ms"].get(component, 0.0) for r in rows]
            ax.bar(names, values, bottom=bottom, label=component)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        for index, r in enumerate(rows):
            ax.text(index, bottom[index], f"{r['median_ms']:.0f} ms\n{r['tokens_per_second']:.0f} tok/s",
                    ha="center", va="bottom", fontsize=8)
        ax.set_title(f"batch {batch} x seq {report['config']['seq_len']}")
        ax.set_ylabel("forward ms (median), split by component" if report.get("device", "cpu") == "cpu" else
                      "forward ms (median)")  # fmt: skip
        ax.tick_params(axis="x", labelsize=7, rotation=15)
        ax.margins(y=0.15)
    axes[0][0].legend(fontsize=8)
    config, machine = report["config"], report["machine"]
    where = f"{machine['gpu']}" if "gpu" in machine else f"{machine['torch_threads']} threads, {machine['cpu']}"
    fig.suptitle(f"{config['layers']} layers, hidden {config['hidden']}, {config['head']} head, fp32, {where}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

