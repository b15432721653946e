"""The main job: the paper's two-sided claim in miniature, on the embedded real data, within a time budget.

1. Build (or reread) the embedded corpus, the local tasks and a tokenizer.
2. Pretrain, with the same recipe and the same time, a small dense crammedBERT and a small UltraFastBERT whose
   FFF has as many neurons as the dense feedforward is wide (511 vs 512) but evaluates only ``depth+1`` per token.
3. Finetune both on the local tasks with several seeds; report medians on the held-out test splits.
4. Time both (layer and whole model, fast path vs dense and vs the masking reference).
5. Write ``report.md``, ``report.json`` and plots (learning curves, task scores, speed).
"""

from __future__ import annotations

import functools
import json
import shutil
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .bench.layer import LayerBenchConfig, run_layer_benchmark
from .bench.timing import Rounds, TimedCall, machine_info, time_interleaved
from .cache import cache_root
from .data import DefaultData, MLMCollator, packed_dataset, prepare_default_data, tokenizer_for_corpus
from .demo_config import DemoConfig
from .fff import kernels, neurons_per_token, nodes_per_tree
from .model.modeling import CrammedBertForMaskedLM
from .study.retention import TaskScores
from .study.retention import retention as compare_to_dense
from .train.finetune import TaskResult, finetune_task, majority_baseline
from .train.pretrain import PretrainConfig, Pretrainer


def _pretrain(name: str, model_config: Any, data: dict[str, Any], config: DemoConfig, minutes: float, out: Path):
    torch.manual_seed(config.seed)
    model = CrammedBertForMaskedLM(model_config)
    train = PretrainConfig(
        micro_batch=config.micro_batch,
        final_batch=config.final_batch,
        max_minutes=minutes,
        lr=config.lr,
        seed=config.seed,
        checkpoint_every_minutes=max(minutes, 1.0),
        eval_every_steps=0,
        log_every_steps=1,
    )
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo starts fresh: no stale metrics or checkpoints
    trainer = Pretrainer(
        model,
        data["train"],
        data["masker"],
        train,
        run_dir,
        validation_sequences=data["validation"],
        run_config={"demo": name},
    )
    before = trainer.evaluate(max_sequences=256)
    final = trainer.run()
    model.save_pretrained(run_dir / "model")
    data["tokenizer"].save_pretrained(run_dir / "model")
    return {
        "name": model_config.name,
        "parameters": model.num_parameters(),
        "steps": final["step"],
        "minutes": final["elapsed"] / 60,
        "val_loss_before": before.get("val_loss"),
        "val_loss": final.get("val_loss"),
        "val_accuracy": final.get("val_accuracy"),
        "sequences": _sequences_seen(run_dir),
        "model_dir": str(run_dir / "model"),
    }


def _sequences_seen(run_dir: Path) -> int:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return sum(record["batch_sequences"] for record in records if "batch_sequences" in record)


def _model_speed(model_dirs: dict[str, str], config: DemoConfig, batch: int = 8) -> dict[str, float]:
    """Median ms of an inference forward (batch x seq_len) of each pretrained model, FFF also with the masking
    reference, all timed together in interleaved rounds."""
    calls = []
    generator = torch.Generator().manual_seed(0)
    for name, folder in model_dirs.items():
        model = CrammedBertForMaskedLM.from_pretrained(folder).eval()
        ids = torch.randint(7, model.config.vocab_size, (batch, config.seq_len), generator=generator)
        impls = ["auto", "reference"] if model.config.ffn_type == "fff" else ["auto"]
        for impl in impls:
            label = name if impl == "auto" else f"{name} (masking reference)"
            forward = functools.partial(model, input_ids=ids)
            calls.append(TimedCall(label, forward, prepare=functools.partial(model.set_fff_impl, impl)))
    with torch.no_grad():
        timings = time_interleaved(calls, Rounds(min_rounds=3, max_rounds=1000, min_seconds=1.0 * len(calls)))
    return {label: timing.median_s * 1e3 for label, timing in timings.items()}


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _average(results: list[TaskResult], split: str) -> float:
    return statistics.mean(result.median[split][result.main_metric] for result in results)


def run_demo(config: DemoConfig, data: DefaultData | None = None) -> dict[str, Any]:
    """Run the whole demo; ``data`` replaces the embedded default (tests pass small synthetic data)."""
    started = time.perf_counter()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(config.cache_dir) if config.cache_dir else cache_root()
    print(f"[demo] preparing data (cache: {cache})", flush=True)
    data = data or prepare_default_data(cache, update_index=True)
    tokenizer = tokenizer_for_corpus(data.corpus, config.vocab_size, cache, model_max_length=config.seq_len)
    pretrain_data = {
        "train": packed_dataset(data.corpus, tokenizer, "train", config.seq_len, cache),
        "validation": packed_dataset(data.corpus, tokenizer, "validation", config.seq_len, cache),
        "masker": MLMCollator(tokenizer, seed=config.seed).mask_rows,
        "tokenizer": tokenizer,
    }
    kernels.available()  # build the FFF kernel now, so that its first-use compile is not charged to pretraining
    preparation_minutes = (time.perf_counter() - started) / 60
    left = max(config.budget_minutes - preparation_minutes, 0.0)
    minutes_per_model = max(left * config.pretrain_share / 2, 0.05)
    print(f"[demo] data ready in {preparation_minutes:.1f} min; pretraining each model for {minutes_per_model:.1f} min")

    pretraining = {}
    for name, model_config in config.model_configs(len(tokenizer)).items():
        print(f"[demo] pretraining {model_config.name}", flush=True)
        pretraining[name] = _pretrain(name, model_config, pretrain_data, config, minutes_per_model, out)

    tasks = {name: data.tasks[name] for name in config.tasks}
    finetuning: dict[str, list[TaskResult]] = {}
    for name, summary in pretraining.items():
        print(f"[demo] finetuning {summary['name']} on {', '.join(tasks)}", flush=True)
        finetuning[name] = [
            finetune_task(summary["model_dir"], task, tokenizer, config.finetune) for task in tasks.values()
        ]

    print("[demo] timing layers and models", flush=True)
    layer_demo = run_layer_benchmark(
        LayerBenchConfig(
            tokens=config.bench_tokens,
            width=config.hidden_size,
            depth=config.fff_depth,
            trees=config.fff_trees,
            dense_width=config.dense_width,
            train_tokens=(),
            compiled_gather=False,  # its compile time would come out of the demo's budget
        ),
        output=out / "layer_demo_size",
    )
    layer_paper = (
        run_layer_benchmark(
            LayerBenchConfig(tokens=config.bench_tokens, train_tokens=(), compiled_gather=False),
            out / "layer_paper_size",
        )
        if config.paper_size_bench
        else None
    )
    model_ms = _model_speed({name: s["model_dir"] for name, s in pretraining.items()}, config)

    split = "test" if all("test" in r.median for r in finetuning["fff"]) else "validation"
    retention = _average(finetuning["fff"], split) / _average(finetuning["dense"], split)
    majority = {name: majority_baseline(task, split, config.finetune) for name, task in tasks.items()}
    scores = {
        key: [
            TaskScores(r.task, tuple(s.metrics[split][r.main_metric] for s in r.seeds), majority[r.task])
            for r in results
        ]
        for key, results in finetuning.items()
    }
    gain = compare_to_dense(scores["fff"], scores["dense"])
    report = {
        "machine": machine_info(),
        "config": asdict(config),
        "budget_minutes": config.budget_minutes,
        "preparation_minutes": preparation_minutes,
        "total_minutes": None,
        "neurons_per_token": {
            "dense": config.dense_width,
            "fff": neurons_per_token(config.fff_depth, config.fff_trees),
        },
        "neurons": {"dense": config.dense_width, "fff": config.fff_trees * nodes_per_tree(config.fff_depth)},
        "pretraining": pretraining,
        "finetuning": {name: [asdict(r) for r in results] for name, results in finetuning.items()},
        "score_split": split,
        "retention": retention,
        "retention_gain_above_majority": gain.gain,
        "informative_tasks": list(gain.informative_tasks),
        "task_summaries": {name: task.summary() for name, task in tasks.items()},
        "majority_baseline": majority,
        "layer_speed": {"demo_size": _speedups(layer_demo), "paper_size": _speedups(layer_paper)},
        "model_ms_batch8": model_ms,
    }
    report["total_minutes"] = (time.perf_counter() - started) / 60
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(format_report(report, finetuning))
    plot_report(report, finetuning, out)
    print((out / "report.md").read_text())
    print(f"[demo] wrote {out}/report.md, report.json and plots in {report['total_minutes']:.1f} min")
    return report


def _speedups(layer_report: dict | None) -> dict[str, dict[str, float]] | None:
    """Per token count: forward ms of each implementation and the dense/FFF-default speed-up."""
    if layer_report is None:
        return None
    rows = [r for r in layer_report["results"] if r["mode"] == "forward"]
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        table.setdefault(str(row["tokens"]), {})[row["name"]] = row["median_ms"]
    return table


def format_report(report: dict[str, Any], finetuning: dict[str, list[TaskResult]]) -> str:
    split = report["score_split"]
    dense, fff = report["pretraining"]["dense"], report["pretraining"]["fff"]
    lines = [
        "# UltraFastBERT demo report",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['torch_threads']} threads, torch "
        f"{report['machine']['torch']}. Budget {report['budget_minutes']:.1f} min; total "
        f"{report['total_minutes']:.1f} min (data preparation {report['preparation_minutes']:.1f} min).",
        "",
        "## Pretraining (same recipe, same time)",
        "",
        "| model | parameters | FF neurons (per token) | steps | sequences | minutes | MLM val loss | MLM val acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, summary in (("dense", dense), ("fff", fff)):
        lines.append(
            f"| {summary['name']} | {summary['parameters']:,} | {report['neurons'][key]} "
            f"({report['neurons_per_token'][key]}) | {summary['steps']} | {summary['sequences']:,} | "
            f"{summary['minutes']:.1f} | {summary['val_loss']:.3f} | {summary['val_accuracy']:.3f} |"
        )
    lines += ["", f"## Finetuning: median of {len(finetuning['dense'][0].seeds)} seeds, {split} split", ""]
    lines += [
        "| task | metric | dense | FFF | FFF / dense | majority-class accuracy | train / eval examples |",
        "|---|---|---|---|---|---|---|",
    ]
    for dense_result, fff_result in zip(finetuning["dense"], finetuning["fff"], strict=True):
        d = dense_result.median[split][dense_result.main_metric]
        f = fff_result.median[split][fff_result.main_metric]
        lines.append(
            f"| {dense_result.task} | {dense_result.main_metric} | {100 * d:.1f} | {100 * f:.1f} | "
            f"{100 * f / d if d else float('nan'):.1f}% | {100 * report['majority_baseline'][dense_result.task]:.1f} | "
            f"{dense_result.seeds[0].train_examples} / "
            f"{dense_result.eval_examples.get(split, 0)} |"
        )
    lines += [
        "",
        f"**Retention (FFF average / dense average): {100 * report['retention']:.1f}%** (paper: >= 96% on GLUE). "
        f"**Gain above majority: {_percent(report['retention_gain_above_majority'])}**: (FFF - majority) / "
        "(dense - majority), averaged over the tasks where the dense model beats the majority class by more than "
        f"its seed spread ({', '.join(report['informative_tasks']) or 'none'}). Two models that learned nothing "
        "both score the majority class, so raw retention near 100% says little on its own.",
        "",
        "## Speed (forward, no grad, median ms)",
        "",
    ]
    for label, table in report["layer_speed"].items():
        if table is None:
            continue
        lines.append(f"Layer, {label.replace('_', ' ')}:")
        lines.append("")
        names = list(next(iter(table.values())))
        lines.append("| tokens | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        for tokens, row in table.items():
            lines.append(f"| {tokens} | " + " | ".join(f"{row[n]:.4g}" for n in names) + " |")
        lines.append("")
    lines.append("Whole pretrained models, batch 8 x sequence length:")
    lines.append("")
    for name, ms in report["model_ms_batch8"].items():
        lines.append(f"- {name}: {ms:.2f} ms")
    lines += ["", "Task sizes and class balance:", "", "```"]
    lines += [summary for summary in report["task_summaries"].values()]
    lines += ["```", ""]
    return "\n".join(lines)


def plot_report(report: dict[str, Any], finetuning: dict[str, list[TaskResult]], out: Path) -> None:
    """learning_curves.png (train loss vs minutes), task_scores.png (median per task), speed.png (layer ms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, summary in report["pretraining"].items():
        records = [json.loads(line) for line in (out / key / "metrics.jsonl").read_text().splitlines()]
        points = [(r["elapsed"] / 60, r["loss"]) for r in records if r.get("loss") is not None]
        ax.plot(*zip(*points, strict=True), label=summary["name"])
    ax.set_xlabel("minutes")
    ax.set_ylabel("MLM training loss")
    ax.set_title("Pretraining, same recipe and time budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)

    split = report["score_split"]
    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r.task for r in finetuning["dense"]]
    width = 0.38
    for offset, key in ((-width / 2, "dense"), (width / 2, "fff")):
        values = [100 * r.median[split][r.main_metric] for r in finetuning[key]]
        ax.bar([i + offset for i in range(len(names))], values, width, label=report["pretraining"][key]["name"])
    for index, name in enumerate(names):
        majority = 100 * report["majority_baseline"][name]
        ax.hlines(majority, index - 0.45, index + 0.45, colors="black", linestyles="dashed")
    ax.plot([], [], color="black", linestyle="dashed", label="majority class")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(f"median score ({split}), %")
    ax.set_title(
        f"Finetuning: FFF retains {100 * report['retention']:.1f}% of the dense average, "
        f"{_percent(report['retention_gain_above_majority'])} of its gain above majority"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "task_scores.png", dpi=110)
    plt.close(fig)

    plot_speed(report, out)


def plot_speed(report: dict[str, Any], out: Path) -> None:
    """speed.png: layer forward time against tokens per call, each size in a panel, the machine named above."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = {k: v for k, v in report["layer_speed"].items() if v}
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.3), squeeze=False)
    for ax, (label, table) in zip(axes[0], tables.items(), strict=True):
        tokens = [int(t) for t in table]
        for name in next(iter(table.values())):
            ax.plot(tokens, [table[str(t)][name] for t in tokens], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel("median ms")
        ax.set_title(f"layer forward, {label.replace('_', ' ')}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    machine = report["machine"]
    fig.suptitle(
        f"{machine['cpu']} ({machine.get('cpu_capability', '?')}), {machine['torch_threads']} torch threads, torch "
        f"{machine['torch']}, {machine['date'][:10]}; median of interleaved rounds",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "speed.png", dpi=110)
    plt.close(fig)
