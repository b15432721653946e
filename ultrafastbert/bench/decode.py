"""Decoding benchmark: token-by-token generation with the KV cache, for the causal decoder with a dense, an FFF, a
narrow dense and no feedforward, side by side in one process; and the paper's GPT-3 feedforward layer
(``gpt3.py``) beside the machine's measured memory-read rate. ``ultrafastbert bench decode``.

Method (``benchmarks/README.md``): random weights (the models' own initialisation) and a random prompt. For each
dtype every model reads the longest prompt but its last token once (the prefill, untimed, logits of the last
position only); a prompt of ``C`` tokens is then its cache cropped to ``C - 1`` tokens (causal attention: the same
keys and values as a ``C - 1``-token prompt's), and a timed call feeds the prompt's token ``C`` and then each
step's greedy argmax, ``new_tokens`` forward steps with the cache under ``torch.inference_mode``, every step
producing one new token per sequence. A batch of ``B`` sequences decodes from the same cache repeated ``B`` times
(prefilling ``B`` prompts would cost ``B`` times as long and time the same attention), each sequence fed its own
random token ``C``, so that from the first step on the sequences differ and an FFF's tokens take their own paths.
All models of one context, batch and dtype are timed together in interleaved rounds (``timing.time_interleaved``),
the cache cropped back (untimed) before each call. The FFF model's default path is checked against its masking
reference on a random prompt before it is timed.

Where the time goes comes from a second pass with forward hooks: embeddings, the attention projections,
attention over the cache (scaled dot-product attention and the cache update: the attention module's time less its
projections), the feedforward, the LM head, and the rest (LayerNorms, residual adds, argmax, Python).

The weights a step must read: every parameter matrix once per step (the tied LM head included), except that an
FFF reads only the rows its tokens visit (at most ``batch * K * (D + 1)`` nodes per layer, exact at batch 1); the
token and position embeddings only one row per sequence. The KV cache read per step is reported apart.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from ..fff import FFF
from ..model import UltraFastGPTConfig, UltraFastGPTForCausalLM
from .config import DecodeBenchConfig
from .gpt3 import Gpt3Shape, run_gpt3_layer
from .model import ComponentTimer
from .timing import TIMING_METHOD, TimedCall, machine_info, time_interleaved

# The decode benchmark's feedforward names -> the decoder preset suffixes.
PRESET_SUFFIX = {"dense": "dense", "fff": "fff", "narrow": "narrow", "no-ff": "no-ff"}
SHARES = ("embeddings", "attention projections", "attention over the cache", "feedforward", "LM head", "other")
# The default FFF path's logits against the masking reference's, relative to the largest.
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
# Models whose decoding is timed; a name is also a record's ``model``.
DecodeModels = dict[str, UltraFastGPTForCausalLM]


@dataclass
class DecodeMeasurement:
    """One model decoding ``new_tokens`` steps at one context, batch and dtype."""

    model: str
    context: int
    batch: int
    dtype: str
    new_tokens: int
    ms_per_step: float  # median over rounds of (call time / steps): one token for every sequence
    ms_per_token: float  # ms_per_step / batch
    tokens_per_s: float
    min_ms_per_step: float
    repeats: int
    threads: int
    weight_bytes_per_step: int
    bytes_per_token: int  # weight bytes per step / batch
    kv_cache_bytes_per_step: int  # keys and values read by the step's attention
    shares: dict[str, float] = field(default_factory=dict)  # of the step time, from the hooked pass


def decoder_config(config: DecodeBenchConfig, model: str) -> UltraFastGPTConfig:
    """The decoder of ``model`` at the benchmark's size; its position table is long enough for the longest prompt
    and the new tokens (one row lookup per token: no other cost)."""
    size = UltraFastGPTConfig.from_preset(config.decoder_size)
    longest = max(config.contexts) + config.new_tokens
    return UltraFastGPTConfig.from_preset(
        f"{config.decoder_size}-{PRESET_SUFFIX[model]}",
        max_position_embeddings=max(size.max_position_embeddings, longest),
    )


def check_config(config: DecodeBenchConfig) -> int:
    """Refuse, in one line before any work, contexts the decoder preset cannot hold; returns its context."""
    context = UltraFastGPTConfig.from_preset(config.decoder_size).max_position_embeddings
    too_long = [c for c in config.contexts if c > context]
    if too_long:
        raise ValueError(
            f"context {too_long[0]} is longer than the {config.decoder_size} decoder's {context} tokens "
            "(max_position_embeddings); give contexts from 1 to that"
        )
    if any(c < 1 for c in config.contexts):
        raise ValueError(f"contexts must be >= 1, got {config.contexts}")
    return context


def build_models(config: DecodeBenchConfig) -> DecodeModels:
    torch.manual_seed(config.seed)
    return {name: UltraFastGPTForCausalLM(decoder_config(config, name)).eval() for name in config.models}


def weight_bytes_per_step(model: UltraFastGPTForCausalLM, batch: int) -> int:
    """Weight bytes one decode step reads (module docstring): every parameter once, the embeddings one row per
    sequence, an FFF the rows of at most ``batch`` paths per tree."""
    config = model.config
    embeddings = model.model.embeddings
    skipped = {id(embeddings.embed_tokens.weight), id(embeddings.embed_positions.weight)}
    total = 0
    for module in model.modules():
        if isinstance(module, FFF):
            weight = module.linear_in.weight
            rows = min(batch * module.neurons_per_token, weight.shape[0])
            total += rows * (2 * module.width + 1) * weight.element_size()
            skipped.update(id(p) for p in module.parameters())
    seen: set[int] = set()
    for parameter in model.parameters():  # the tied LM head is the token embedding: counted once, whole
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        if id(parameter) == id(model.lm_head.weight) or id(parameter) not in skipped:
            total += parameter.numel() * parameter.element_size()
    itemsize = model.lm_head.weight.element_size()
    return total + 2 * batch * config.hidden_size * itemsize  # one token and one position row per sequence


def kv_cache_bytes(model: UltraFastGPTForCausalLM, batch: int, context: int) -> int:
    """Keys and values one step's attention reads: every layer, every sequence, ``context`` cached positions."""
    config = model.config
    itemsize = model.lm_head.weight.element_size()
    return 2 * config.num_hidden_layers * batch * context * config.hidden_size * itemsize


@dataclass
class _Decoder:
    """One model's state at one batch and dtype: its prefilled cache, the prompt, and the context of the call."""

    model: UltraFastGPTForCausalLM
    prompt: Tensor  # (B, longest context)
    cache: object = None
    context: int = 0

    def prefill(self) -> None:
        """Read the whole prompt but its last token into a fresh cache (untimed)."""
        self.cache = DynamicCache(config=self.model.config)
        if self.prompt.shape[1] > 1:
            with torch.inference_mode():
                self.model(self.prompt[:, :-1], past_key_values=self.cache, use_cache=True, logits_to_keep=1)

    def batched(self, batch: int, prompt: Tensor) -> _Decoder:
        """A decoder of ``batch`` sequences whose cache is this one's (one sequence, prefilled) repeated, with
        ``prompt`` ``(batch, longest context)``: the prefill's prompt in every row but the tokens fed at the
        contexts' last positions, which differ between rows so that each sequence decodes its own tokens."""
        cache = DynamicCache(config=self.model.config)
        if self.cache.get_seq_length() > 0:
            with torch.inference_mode():
                for index, layer in enumerate(self.cache.layers):
                    cache.update(layer.keys.repeat(batch, 1, 1, 1), layer.values.repeat(batch, 1, 1, 1), index)
        return _Decoder(self.model, prompt, cache)

    def reset(self) -> None:
        """Crop the cache back to ``context - 1`` prompt tokens (what the previous call added goes)."""
        surplus = self.cache.get_seq_length() - (self.context - 1)
        if surplus > 0:
            self.cache.crop(-surplus)

    def decode(self, steps: int) -> Tensor:
        """``steps`` greedy steps with the cache: the prompt's last token, then each step's argmax; ``(B, steps)``."""
        token = self.prompt[:, self.context - 1 : self.context]  # (B, 1)
        produced = []
        for _ in range(steps):
            logits = self.model(token, past_key_values=self.cache, use_cache=True).logits  # (B, 1, V)
            token = logits[:, -1].argmax(dim=-1, keepdim=True)
            produced.append(token)
        return torch.cat(produced, dim=1)


def check_fff_model(model: UltraFastGPTForCausalLM, prompt: Tensor) -> float:
    """Refuse to time the FFF model if its default path changes the next-token logits of ``prompt`` beyond
    ``CHECK_TOLERANCE`` against the masking reference; returns the relative difference."""
    with torch.inference_mode():
        model.set_fff_impl("reference")
        expected = model(prompt, use_cache=False, logits_to_keep=1).logits.float()
        model.set_fff_impl("auto")
        got = model(prompt, use_cache=False, logits_to_keep=1).logits.float()
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    if error > CHECK_TOLERANCE[model.lm_head.weight.dtype]:
        raise AssertionError(f"the FFF decoder's default path differs from its reference by {error:.2e} (relative)")
    return error


def _components(model: UltraFastGPTForCausalLM) -> dict[str, list[nn.Module]]:
    layers = model.model.layers
    return {
        "embeddings": [model.model.embeddings],
        "attention": [layer.attn for layer in layers],
        "attention projections": [m for layer in layers for m in (layer.attn.query_key_value, layer.attn.dense)],
        "feedforward": [layer.ffn for layer in layers if layer.ffn is not None],
        "LM head": [model.lm_head],
    }


def measure_shares(decoder: _Decoder, steps: int, repeats: int) -> dict[str, float]:
    """Median share of a decode call's time per component (``SHARES``), from forward hooks (module docstring)."""
    samples: dict[str, list[float]] = {name: [] for name in SHARES}
    for _ in range(repeats):
        decoder.reset()
        timer = ComponentTimer(_components(decoder.model))
        try:
            with torch.inference_mode():
                started = time.perf_counter()
                decoder.decode(steps)
                total = time.perf_counter() - started
        finally:
            timer.remove()
        seconds = dict(timer.seconds)
        seconds["attention over the cache"] = seconds.pop("attention") - seconds["attention projections"]
        seconds["other"] = total - sum(seconds.values())
        for name in SHARES:
            samples[name].append(max(seconds.get(name, 0.0), 0.0) / total)
    shares = {name: statistics.median(values) for name, values in samples.items()}
    norm = sum(shares.values()) or 1.0
    return {name: value / norm for name, value in shares.items()}


def measure_setting(
    decoders: dict[str, _Decoder], context: int, config: DecodeBenchConfig, dtype: str
) -> list[DecodeMeasurement]:
    """Every model at one context, batch and dtype, timed together in interleaved rounds; then the shares."""
    steps = config.new_tokens
    for decoder in decoders.values():
        decoder.context = context
    calls = [
        TimedCall(name, functools.partial(decoder.decode, steps), decoder.reset) for name, decoder in decoders.items()
    ]
    with torch.inference_mode():
        timings = time_interleaved(calls, config.rounds)
    results = []
    for name, decoder in decoders.items():
        batch = decoder.prompt.shape[0]
        timing = timings[name]
        ms_per_step = timing.median_s * 1e3 / steps
        weights = weight_bytes_per_step(decoder.model, batch)
        results.append(
            DecodeMeasurement(
                model=name,
                context=context,
                batch=batch,
                dtype=dtype,
                new_tokens=steps,
                ms_per_step=ms_per_step,
                ms_per_token=ms_per_step / batch,
                tokens_per_s=batch * 1e3 / ms_per_step,
                min_ms_per_step=timing.min_s * 1e3 / steps,
                repeats=timing.repeats,
                threads=timing.threads,
                weight_bytes_per_step=weights,
                bytes_per_token=weights // batch,
                kv_cache_bytes_per_step=kv_cache_bytes(decoder.model, batch, context),
                shares=measure_shares(decoder, steps, config.share_repeats),
            )
        )
    return results


def run_decoding(config: DecodeBenchConfig, log=print) -> tuple[list[DecodeMeasurement], dict[str, float]]:  # noqa: ANN001
    """Every dtype, batch and context (longest first: each call crops the prefilled cache); the FFF checks."""
    models = build_models(config)
    vocab = next(iter(models.values())).config.vocab_size
    results: list[DecodeMeasurement] = []
    checks: dict[str, float] = {}
    for dtype_name in config.dtypes:
        dtype = getattr(torch, dtype_name)
        for model in models.values():
            model.to(dtype)
        generator = torch.Generator().manual_seed(config.seed)
        if "fff" in models:
            sample = torch.randint(0, vocab, (2, min(config.contexts)), generator=generator)
            checks[dtype_name] = check_fff_model(models["fff"], sample)
        prompt = torch.randint(0, vocab, (1, max(config.contexts)), generator=generator)
        log(f"  prefill {max(config.contexts) - 1} tokens, {dtype_name}", flush=True)
        single = {name: _Decoder(model, prompt) for name, model in models.items()}
        for decoder in single.values():
            decoder.prefill()
        by_batch = {}
        for batch in config.batches:  # every batch's cache copied before any call crops the prefilled one
            if batch == 1:
                by_batch[batch] = single
                continue
            rows = prompt.repeat(batch, 1)
            last = [context - 1 for context in config.contexts]
            rows[1:, last] = torch.randint(0, vocab, (batch - 1, len(last)), generator=generator)
            by_batch[batch] = {name: decoder.batched(batch, rows) for name, decoder in single.items()}
        for decoders in by_batch.values():
            for context in sorted(config.contexts, reverse=True):
                for measurement in measure_setting(decoders, context, config, dtype_name):
                    results.append(measurement)
                    log(_progress_line(measurement), flush=True)
        del single, by_batch
    return results, checks


def _progress_line(m: DecodeMeasurement) -> str:
    return (
        f"  {m.dtype:<8} batch {m.batch:>2} context {m.context:>5} {m.model:<7} {m.ms_per_step:9.2f} ms/step "
        f"{m.tokens_per_s:9.1f} tokens/s"
    )


def run_decode_benchmark(config: DecodeBenchConfig, output: str | Path | None = None) -> dict:
    """The decoding runs and the GPT-3 layer (each unless left out); writes ``<output>/report.json`` and
    ``report.md``. A part left out keeps its records from the report already in ``output``, if any, with the
    conditions of the run that measured them (``runs``)."""
    check_config(config)
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        decoding, checks = [], {}
        if config.decoding:
            print(f"decoding: {config.decoder_size} models {list(config.models)}", flush=True)
            decoding, checks = run_decoding(config)
        layer, bandwidth, routed = [], [], {}
        if config.gpt3_layer:
            print("GPT-3 feedforward layer", flush=True)
            shape = Gpt3Shape(config.gpt3_width, config.gpt3_hidden, config.gpt3_depth)
            layer, bandwidth, routed = run_gpt3_layer(
                shape,
                config.gpt3_tokens,
                config.dtypes,
                config.gpt3_rounds,
                config.bandwidth_mib * 2**20,
                config.flush_mib * 2**20,
            )
        machine = machine_info()
    finally:
        torch.set_num_threads(previous_threads)
    records: list[dict] = [asdict(m) for m in decoding] + [asdict(m) for m in layer]
    if bandwidth:
        best = max(bandwidth, key=lambda b: b.best_gb_s)
        records.append(
            {"model": "memory-read", "bandwidth_gb_s": best.best_gb_s, "buffer_bytes": best.buffer_bytes,
             "threads": best.threads, "method": "torch.sum over a float32 buffer, fastest round"}
        )  # fmt: skip
    run = {
        "machine": machine,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "seconds": time.perf_counter() - started,
        "config": asdict(config),
    }
    report = {
        "benchmark": "decode",
        **run,
        "timing": TIMING_METHOD,
        "fff_default_vs_reference_relative_error": checks,
        "gpt3_fff_routed_otherwise_than_reference": routed,
        "bandwidth_groups": [asdict(b) for b in bandwidth],
        "records": records,
        "runs": {part: run for part, ran in (("decoding", config.decoding), ("gpt3", config.gpt3_layer)) if ran},
    }
    folder = Path(output) if output is not None else None
    if folder is not None and (folder / "report.json").is_file():
        report = keep_parts_not_run(report, json.loads((folder / "report.json").read_text()))
    text = format_report(report)
    print()
    print(text)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (folder / "report.md").write_text(text + "\n")
        print(f"\nwrote {folder / 'report.json'} and {folder / 'report.md'}")
    return report


# The report's fields that belong to one part, besides its records and its run.
PART_FIELDS = {
    "decoding": ("fff_default_vs_reference_relative_error",),
    "gpt3": ("gpt3_fff_routed_otherwise_than_reference", "bandwidth_groups"),
}


def record_part(record: dict) -> str:
    """``decoding`` or ``gpt3``: the part of the benchmark that measured ``record``."""
    return "decoding" if "context" in record else "gpt3"


def keep_parts_not_run(report: dict, previous: dict) -> dict:
    """``report`` with the records, fields and run conditions of every part it did not run taken from
    ``previous`` (a report of an earlier run; one written before reports had ``runs`` ran every part it holds,
    under its top-level conditions)."""
    merged = dict(report)
    runs = dict(report["runs"])
    kept = [part for part in PART_FIELDS if part not in runs]
    for part in kept:
        if not any(record_part(r) == part for r in previous["records"]):
            continue
        runs[part] = previous.get("runs", {}).get(part) or {
            key: previous[key] for key in ("machine", "load_average", "seconds", "config")
        }
        for key in PART_FIELDS[part]:
            merged[key] = previous.get(key, merged[key])
    merged["runs"] = {part: runs[part] for part in PART_FIELDS if part in runs}
    merged["records"] = [
        r for part in PART_FIELDS for r in (report if part in report["runs"] else previous)["records"]
        if record_part(r) == part and part in runs
    ]  # fmt: skip
    return merged


def format_report(report: dict) -> str:
    """The Markdown report: machine and load, decoding tables, shares, the GPT-3 layer against its floors."""
    records = report["records"]
    decode = [r for r in records if "context" in r]
    current = {key: report[key] for key in ("machine", "load_average", "seconds", "config")}
    runs = report.get("runs", {})
    lines = ["# Decoding benchmark", "", *_run_lines(current), ""]
    for part, run in runs.items():
        if run != current:
            title = {"decoding": "The decoding tables", "gpt3": "The GPT-3 layer's figures"}[part]
            lines += [f"{title} are kept from an earlier run, as measured then:", "", *_run_lines(run), ""]
    config = runs.get("decoding", current)["config"]
    if decode:
        lines += [
            f"## Decoding ({config['preset']} shape, {config['new_tokens']} new tokens per call, greedy, KV cache)",
            "",
            "ms per step (one token for every sequence), tokens/s, and tokens/s as a share of the no-FF ceiling "
            "of the same context, batch and dtype; weight MB read per step and per token; KV cache MB read per step.",
            "",
            "| dtype | batch | context | model | ms/step | tokens/s | of no-FF | weight MB/step | weight MB/token "
            "| KV MB/step |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        ceiling = {(r["dtype"], r["batch"], r["context"]): r["tokens_per_s"] for r in decode if r["model"] == "no-ff"}
        for r in decode:
            top = ceiling.get((r["dtype"], r["batch"], r["context"]))
            share = f"{r['tokens_per_s'] / top:.0%}" if top else "-"
            lines.append(
                f"| {r['dtype']} | {r['batch']} | {r['context']} | {r['model']} | {r['ms_per_step']:.2f} | "
                f"{r['tokens_per_s']:.1f} | {share} | {r['weight_bytes_per_step'] / 1e6:.1f} | "
                f"{r['bytes_per_token'] / 1e6:.2f} | {r['kv_cache_bytes_per_step'] / 1e6:.1f} |"
            )
        lines += [
            "",
            "## Where a decode step's time goes (share of the step, forward hooks)",
            "",
            "| dtype | batch | context | model | " + " | ".join(SHARES) + " |",
            "|---|---|---|---|" + "---|" * len(SHARES),
        ]
        for r in decode:
            cells = " | ".join(f"{r['shares'].get(name, 0.0):.0%}" for name in SHARES)
            lines.append(f"| {r['dtype']} | {r['batch']} | {r['context']} | {r['model']} | {cells} |")
    layer = [r for r in records if r["model"] in ("gpt3-dense", "gpt3-fff")]
    bandwidth = [r for r in records if "bandwidth_gb_s" in r]
    lines += _summary(decode, layer)
    config = runs.get("gpt3", current)["config"]
    if layer:
        lines += [
            "",
            f"## The GPT-3 feedforward layer (width {config['gpt3_width']}, dense {config['gpt3_hidden']} vs FFF depth "
            f"{config['gpt3_depth']})",
            "",
            f"Memory-read rate (best round of `torch.sum` over {bandwidth[0]['buffer_bytes'] / 2**20:.0f} MiB): "
            f"{bandwidth[0]['bandwidth_gb_s']:.1f} GB/s; per group (best / median): "
            + ", ".join(
                f"{b['group']} {b['best_gb_s']:.1f} / {b['median_gb_s']:.1f}" for b in report["bandwidth_groups"]
            )
            + ".",
            "",
            "| layer | dtype | tokens | caches | median ms | min ms | weight MB read | floor ms (bytes / bandwidth) | "
            "time / floor | GB/s achieved |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in layer:
            lines.append(
                f"| {r['model']} | {r['dtype']} | {r['tokens']} | {r['caches']} | {r['ms']:.4g} | {r['min_ms']:.4g} | "
                f"{r['weight_bytes'] / 1e6:.3g} | {r['floor_ms']:.4g} | {r['time_over_floor']:.1f}x | "
                f"{r['achieved_gb_s']:.1f} |"
            )
        lines += ["", "The FFF on new inputs against the dense layer: as measured (medians; fastest calls), and "
                  "against the dense layer's floor (its weights read at the measured rate):", ""]  # fmt: skip
        for r, dense in _gpt3_pairs(layer):
            lines.append(
                f"- {r['dtype']}, {r['tokens']} token{'s' * (r['tokens'] > 1)}, caches {r['caches']}: "
                f"{_times(dense['ms'] / r['ms'])} ({_times(dense['min_ms'] / r['min_ms'])}) measured, "
                f"{_times(dense['floor_ms'] / r['ms'])} against the dense floor"
            )
        lines += _target_lines(layer, config["gpt3_depth"])
    return "\n".join(lines)


# The paper's claim for the GPT-3 layer, checked at one token: the tree this many times faster than the dense floor.
TARGET_SPEEDUP = 1000


def _target_lines(layer: list[dict], depth: int) -> list[str]:
    """Per dtype, one token on new inputs: whether the tree is ``TARGET_SPEEDUP`` times under the dense floor, and
    where its time stands against its own floor and against its warm time (what is left once memory costs
    nothing)."""
    warm = {r["dtype"]: r for r in layer if r["model"] == "gpt3-fff" and r["tokens"] == 1 and r["caches"] == "warm"}
    lines = []
    for r, dense in _gpt3_pairs(layer):
        if r["tokens"] != 1 or r["caches"] != "fresh":
            continue
        speedup = dense["floor_ms"] / r["ms"]
        verdict = "meets" if speedup >= TARGET_SPEEDUP else "misses"
        line = (
            f"- {r['dtype']}: {_times(speedup)} {verdict} the {TARGET_SPEEDUP:,}x target, which needs "
            f"{dense['floor_ms'] / TARGET_SPEEDUP * 1e3:.1f} us per token; the tree takes {r['ms'] * 1e3:.1f} us, "
            f"{r['time_over_floor']:.1f}x its own floor ({r['weight_bytes'] / 1e6:.2f} MB at the measured rate: "
            f"{r['floor_ms'] * 1e3:.1f} us): its {depth + 1} levels fetch their rows one after another"
        )
        if r["dtype"] in warm:
            line += f", and with its rows in cache it takes {warm[r['dtype']]['ms'] * 1e3:.1f} us"
        lines.append(line)
    if lines:
        lines = ["", f"The {TARGET_SPEEDUP:,}x target at one token (new inputs):", "", *lines]
    return lines


def _run_lines(run: dict) -> list[str]:
    """The machine, load and command of one run of the benchmark."""
    machine, load = run["machine"], run["load_average"]
    return [
        f"Machine: {machine['cpu']} ({machine['cpu_capability']}), {machine['logical_cores']} logical cores, "
        f"{machine['torch_threads']} torch threads, torch {machine['torch']}, {machine['date']}. Load average "
        f"(1/5/15 min) before {_load(load['before'])}, after {_load(load['after'])}; the run took "
        f"{run['seconds'] / 60:.1f} min.",
        "",
        f"Command: `{('ultrafastbert bench decode ' + _command_flags(run['config'])).strip()}`",
    ]


def _gpt3_pairs(layer: list[dict]) -> list[tuple[dict, dict]]:
    """(FFF on new inputs, caches flushed or not; dense) records of the same dtype and token count."""
    dense = {(r["dtype"], r["tokens"]): r for r in layer if r["model"] == "gpt3-dense"}
    return [
        (r, dense[(r["dtype"], r["tokens"])])
        for r in layer
        if r["model"] == "gpt3-fff" and r["caches"] != "warm" and (r["dtype"], r["tokens"]) in dense
    ]


def _summary(decode: list[dict], layer: list[dict]) -> list[str]:
    """Each context, batch and dtype in one row: tokens/s of every model, the FFF's share of the no-FF ceiling,
    and the ceiling over dense as measured and by bytes read (weights and KV cache); the GPT-3 layer's speed-up
    over the dense floor at one token."""
    lines = []
    rows = {}
    for r in decode:
        rows.setdefault((r["dtype"], r["batch"], r["context"]), {})[r["model"]] = r
    if rows:
        lines += [
            "",
            "## Summary",
            "",
            "| dtype | batch | context | dense tokens/s | FFF tokens/s | narrow tokens/s | no-FF tokens/s "
            "| FFF / no-FF | no-FF / dense measured | no-FF / dense by bytes |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (dtype, batch, context), models in rows.items():
            rate = {name: f"{m['tokens_per_s']:.1f}" for name, m in models.items()}
            no_ff, fff, dense = models.get("no-ff"), models.get("fff"), models.get("dense")
            share = f"{fff['tokens_per_s'] / no_ff['tokens_per_s']:.0%}" if fff and no_ff else "-"
            measured = by_bytes = "-"
            if no_ff and dense:
                measured = f"{no_ff['tokens_per_s'] / dense['tokens_per_s']:.2f}x"
                read = {m: models[m]["weight_bytes_per_step"] + models[m]["kv_cache_bytes_per_step"] for m in
                        ("no-ff", "dense")}  # fmt: skip
                by_bytes = f"{read['dense'] / read['no-ff']:.2f}x"
            cells = " | ".join(rate.get(name, "-") for name in ("dense", "fff", "narrow", "no-ff"))
            lines.append(f"| {dtype} | {batch} | {context} | {cells} | {share} | {measured} | {by_bytes} |")
    for r, dense in _gpt3_pairs(layer):
        if r["tokens"] == 1:
            lines.append(
                f"\nGPT-3 layer, {r['dtype']}, 1 token, caches {r['caches']}: the FFF takes {r['ms']:.4g} ms; the "
                f"dense layer's floor ({dense['weight_bytes'] / 1e9:.3g} GB at the measured rate: "
                f"{dense['floor_ms']:.4g} ms) is {_times(dense['floor_ms'] / r['ms'])} that, the dense layer as "
                f"measured ({dense['ms']:.4g} ms) {_times(dense['ms'] / r['ms'])}."
            )
    return lines


def _times(ratio: float) -> str:
    """A ratio as ``516x`` or ``1,234x`` above 100, else to three significant figures."""
    return f"{ratio:,.0f}x" if ratio >= 100 else f"{ratio:.3g}x"


def _load(values: list[float] | tuple[float, ...]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def _command_flags(config: dict) -> str:
    """The flags that differ from the defaults, so the command in the report reproduces the run."""
    defaults = asdict(DecodeBenchConfig())
    parts = []
    for name, value in config.items():
        if (
            name not in defaults
            or value == defaults[name]
            or (isinstance(value, list) and tuple(value) == defaults[name])
        ):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append({"gpt3_layer": "--no-gpt3-layer", "decoding": "--no-decoding"}.get(name, flag))
        elif isinstance(value, (list, tuple)):
            parts.append(f"{flag} {' '.join(map(str, value))}")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)
