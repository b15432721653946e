"""The study's report: ``report.json`` (every number), ``report.md`` (tables and plain findings) and plots."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..train.finetune import TaskResult
from .config import StudyConfig
from .retention import Retention, TaskScores, retention
from .state import write_json, write_text


def task_scores(result: TaskResult, split: str, majority: float) -> TaskScores:
    return TaskScores(result.task, tuple(s.metrics[split][result.main_metric] for s in result.seeds), majority)


def build_report(
    config: StudyConfig,
    pretraining: dict[str, dict[str, Any]],
    finetuning: dict[str, dict[str, TaskResult]],
    splits: dict[str, str],
    majority: dict[str, float],
    baseline: dict[str, Any],
    timing: dict[str, Any],
    machine: dict[str, Any],
    command: str | None = None,
) -> dict[str, Any]:
    """Everything the report shows, JSON-ready: per variant its pretraining, scores, retention and speed."""
    scores = {
        variant: [task_scores(result, splits[task], majority[task]) for task, result in results.items()]
        for variant, results in finetuning.items()
    }
    retentions: dict[str, Retention] = {variant: retention(scores[variant], scores["dense"]) for variant in scores}
    report = {
        "machine": machine,
        "command": command,
        "settings": config.settings(),
        "copy_unigram_baseline": baseline,
        "score_splits": splits,
        "majority": majority,
        "pretraining": pretraining,
        "scores": {
            variant: {s.task: {"seeds": list(s.scores), "median": s.median, "spread": s.spread} for s in task_list}
            for variant, task_list in scores.items()
        },
        "metrics": {task: result.main_metric for task, result in finetuning["dense"].items()},
        "retention": {variant: asdict(value) for variant, value in retentions.items()},
        "timing": timing,
    }
    return json.loads(json.dumps(report))  # JSON's own types (lists, string keys): what report.json reads back


def _pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _ms(value: float) -> str:
    return "-" if value == 0 else f"{value:.3g}"


def findings(report: dict[str, Any]) -> list[str]:
    """Plain statements read off the numbers (no judgement beyond what they show)."""
    lines = []
    dense = report["pretraining"]["dense"]
    baseline = report["copy_unigram_baseline"]
    informative = report["retention"]["dense"]["informative_tasks"]
    tasks = list(report["majority"])
    lines.append(
        f"The dense reference reaches {_percent(dense['val_accuracy'])} masked-token accuracy "
        f"({_percent(dense['val_accuracy_replaced'])} on replaced tokens) against {_percent(baseline['accuracy'])} "
        f"({_percent(baseline['accuracy_replaced'])}) for the context-free copy/unigram guess."
    )
    lines.append(
        f"It beats the majority class by more than its own seed spread on {len(informative)} of {len(tasks)} "
        f"tasks ({', '.join(informative) or 'none'}); gain-above-majority retention averages over those."
    )
    for variant, value in report["retention"].items():
        if variant == "dense":
            continue
        name = report["pretraining"][variant]["name"]
        verdicts = {t["task"]: t["versus_dense"] for t in value["tasks"]}
        below = [task for task, verdict in verdicts.items() if verdict == "below"]
        above = [task for task, verdict in verdicts.items() if verdict == "above"]
        noise = "; outside seed noise: " + (
            ", ".join([f"below dense on {t}" for t in below] + [f"above dense on {t}" for t in above]) or "nowhere"
        )
        lines.append(
            f"{variant} ({name}): gain-above-majority retention {_percent(value['gain'])}, raw {_percent(value['raw'])}"
            f"{noise}."
        )
    slowed = [
        variant
        for variant, summary in report["pretraining"].items()
        if summary["tokens_per_second"]["p10"] < 0.5 * summary["tokens_per_second"]["median"]
    ]
    if slowed:
        lines.append(
            f"Other work on the machine slowed part of the pretraining of {', '.join(slowed)} (10th percentile of "
            "tokens/s below half the median), costing them steps within the same wall-clock budget."
        )
    if {"fff", "narrow"} <= set(report["retention"]):
        fff, narrow = report["retention"]["fff"]["gain"], report["retention"]["narrow"]["gain"]
        if fff is not None and narrow is not None:
            per_task = {
                task: (report["scores"]["fff"][task], report["scores"]["narrow"][task]) for task in report["majority"]
            }
            separated = [
                task
                for task, (f, n) in per_task.items()
                if min(f["seeds"]) > max(n["seeds"]) or max(f["seeds"]) < min(n["seeds"])
            ]
            lines.append(
                f"FFF 1xD against a dense FF of the same neurons per token (narrow): {_percent(fff)} vs "
                f"{_percent(narrow)} gain-above-majority retention; their seed ranges separate on {len(separated)} "
                f"of {len(per_task)} tasks ({', '.join(separated) or 'none'})."
            )
    return lines


def format_report(report: dict[str, Any]) -> str:
    settings, machine = report["settings"], report["machine"]
    tokens = report["timing"]["tokens"]
    budget = (
        f"{settings['minutes_per_variant']} min" if settings["minutes_per_variant"] is not None else "no time limit"
    )
    if settings["steps_per_variant"] is not None:
        budget += f", at most {settings['steps_per_variant']} steps"
    lines = [
        "# Quality study: does an FFF model keep the dense model's quality?",
        "",
        f"Machine: {machine['cpu']}, {machine['torch_threads']} threads, torch {machine['torch']}. Every variant: "
        f"hidden {settings['hidden_size']}, {settings['layers']} layers, {settings['heads']} heads, vocabulary "
        f"{settings['vocab_size']}, sequence {settings['seq_len']}; pretraining budget {budget} each, batch ramp to "
        f"{settings['final_batch']}, peak lr {settings['lr']}, seed {settings['seed']}; finetuning "
        f"{len(settings['finetune_seeds'])} seeds, lr {settings['finetune_lr']}, {settings['finetune_epochs']} epochs, "
        f"at most {settings['max_train_examples']} training examples per task.",
        "",
        *([f"Command: `{report['command']}`", ""] if report.get("command") else []),
        "## Findings",
        "",
        *[f"- {line}" for line in findings(report)],
        "",
        "## Pretraining",
        "",
        f"FF time: inference of the feedforward layer alone, median ms for {tokens[-1]} tokens, at the study's size "
        "and at paper size (the same variant rule at hidden 768, W = 3072).",
        "",
        "| variant | model | parameters | FF neurons / token | FF FLOPs / token | FF ms (study) | FF ms (paper) "
        "| steps | sequences | minutes | tokens/s: median (10th pct) | MLM val loss | masked acc % | replaced acc % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    timing = report["timing"]["ms"]
    for variant, summary in report["pretraining"].items():
        lines.append(
            f"| {variant} | {summary['name']} | {summary['parameters']:,} | {summary['ff_neurons_per_token']} | "
            f"{summary['ff_flops_per_token']:,} | {_ms(timing['study'][variant][str(tokens[-1])])} | "
            f"{_ms(timing['paper'][variant][str(tokens[-1])])} | {summary['steps']} | {summary['sequences']:,} | "
            f"{summary['minutes']:.1f} | {summary['tokens_per_second']['median']:,.0f} "
            f"({summary['tokens_per_second']['p10']:,.0f}) | {summary['val_loss']:.3f} | "
            f"{_pct(summary['val_accuracy'])} | {_pct(summary['val_accuracy_replaced'])} |"
        )
    baseline = report["copy_unigram_baseline"]
    lines += [
        f"| copy/unigram guess | | | | | | | | | | | | {_pct(baseline['accuracy'])} | "
        f"{_pct(baseline['accuracy_replaced'])} |",
        "",
        "## Finetuning: median [min - max] over seeds",
        "",
        "A variant's cell is marked ▲ or ▼ where its seed range lies entirely above or below the dense one "
        "(a difference beyond seed noise).",
        "",
    ]
    variants = list(report["scores"])
    lines.append("| task (split, metric) | majority | " + " | ".join(variants) + " |")
    lines.append("|---|---|" + "---|" * len(variants))
    for task in report["majority"]:
        cells = []
        for variant in variants:
            score = report["scores"][variant][task]
            verdict = next(t for t in report["retention"][variant]["tasks"] if t["task"] == task)["versus_dense"]
            mark = {"above": " ▲", "below": " ▼"}.get(verdict, "")
            cells.append(
                f"{_pct(score['median'])} [{_pct(min(score['seeds']))}-{_pct(max(score['seeds']))}]{mark}"
            )
        lines.append(
            f"| {task} ({report['score_splits'][task]}, {report['metrics'][task]}) | "
            f"{_pct(report['majority'][task])} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "## Retention against the dense reference",
        "",
        "Raw: mean over tasks of score / dense score. Gain above majority: mean of (score - majority) / (dense - "
        "majority) over the tasks where the dense model beats the majority class by more than its seed spread.",
        "",
        "| variant | raw % | gain above majority % | tasks averaged for the gain |",
        "|---|---|---|---|",
    ]
    for variant, value in report["retention"].items():
        lines.append(
            f"| {variant} | {_pct(value['raw'])} | {_pct(value['gain'])} | "
            f"{', '.join(value['informative_tasks']) or 'none'} |"
        )
    lines += [
        "",
        "## Tree health (validation text, per FFF layer)",
        "",
        "| variant | layer | leaves never visited % | nodes never visited per level % | leaf entropy / uniform "
        "| root: share going left |",
        "|---|---|---|---|---|---|",
    ]
    for variant, summary in report["pretraining"].items():
        for index, layer in enumerate(summary["tree_health"]):
            levels = " / ".join(f"{100 * v:.0f}" for v in layer["unvisited_node_fraction_per_level"])
            root = "n/a" if layer["root_left_share"] is None else f"{layer['root_left_share']:.2f}"
            lines.append(
                f"| {variant} | {index} | {_pct(layer['unvisited_leaf_fraction'])} | {levels} | "
                f"{layer['leaf_entropy_ratio']:.3f} | {root} |"
            )
    lines += [
        "",
        "Plots: `learning_curves.png` (training and validation MLM loss), `task_scores.png` (scores with seed "
        "ranges and majority baselines), `quality_vs_flops.png` (retention against FF FLOPs per token).",
        "",
    ]
    return "\n".join(lines)


def _curves(metrics_file: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, training loss) and (step, validation loss), the last record of a step kept (resumed runs)."""
    train: dict[int, float] = {}
    validation: dict[int, float] = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if record.get("loss") is not None:
            train[record["step"]] = record["loss"]
        if "val_loss" in record and "step" in record:
            validation[record["step"]] = record["val_loss"]
    return sorted(train.items()), sorted(validation.items())


def _smooth(values: list[float], window: int = 25) -> list[float]:
    return [statistics.mean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def plot_report(report: dict[str, Any], out: Path) -> None:
    """``learning_curves.png``, ``task_scores.png`` and ``quality_vs_flops.png`` in ``out``."""
    import matplotlib  # lazy: plotting is the report's last step and matplotlib is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (train_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for variant, summary in report["pretraining"].items():
        train, validation = _curves(out / variant / "pretrain" / "metrics.jsonl")
        label = f"{variant} ({summary['name']})"
        if train:
            steps, losses = zip(*train, strict=True)
            train_ax.plot(steps, _smooth(list(losses)), label=label)
        if validation:
            val_ax.plot(*zip(*validation, strict=True), marker="o", markersize=3, label=label)
    train_ax.set(xlabel="optimizer step", ylabel="training MLM loss (smoothed)", title="Training")
    val_ax.set(xlabel="optimizer step", ylabel="validation MLM loss", title="Validation")
    val_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)

    tasks, variants = list(report["majority"]), list(report["scores"])
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(tasks)), 4.5))
    width = 0.8 / len(variants)
    for index, variant in enumerate(variants):
        medians, lows, highs = [], [], []
        for task in tasks:
            score = report["scores"][variant][task]
            medians.append(100 * score["median"])
            lows.append(100 * (score["median"] - min(score["seeds"])))
            highs.append(100 * (max(score["seeds"]) - score["median"]))
        positions = [t + (index - (len(variants) - 1) / 2) * width for t in range(len(tasks))]
        ax.bar(positions, medians, width, yerr=[lows, highs], capsize=2, label=variant)
    for t, task in enumerate(tasks):
        ax.hlines(100 * report["majority"][task], t - 0.45, t + 0.45, colors="black", linestyles="dashed")
    ax.set_xticks(range(len(tasks)), [f"{task}\n({report['metrics'][task]})" for task in tasks])
    ax.set_ylabel("score %, median and min-max over seeds")
    ax.set_title("Finetuned scores; dashed: majority class")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "task_scores.png", dpi=110)
    plt.close(fig)

    plot_quality_vs_flops(report, out)


def seed_range_of_gain(report: dict[str, Any], variant: str) -> tuple[float, float] | None:
    """The variant's gain-above-majority retention with every informative task at its worst seed and at its best
    (the dense medians fixed): how far seed noise alone moves the figure. ``None`` without informative tasks."""
    tasks = report["retention"][variant]["informative_tasks"]
    if not tasks:
        return None
    ends = []
    for pick in (min, max):
        gains = []
        for task in tasks:
            majority, dense = report["majority"][task], report["scores"]["dense"][task]["median"]
            gains.append((pick(report["scores"][variant][task]["seeds"]) - majority) / (dense - majority))
        ends.append(statistics.mean(gains))
    return ends[0], ends[1]


def plot_quality_vs_flops(report: dict[str, Any], out: Path) -> None:
    """``quality_vs_flops.png``: gain-above-majority retention (median, and its seed range) against the
    feedforward FLOPs per token on a log axis; a variant without feedforward (0 FLOPs) is a horizontal band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ends: list[float] = []
    for index, (variant, summary) in enumerate(report["pretraining"].items()):
        gain = report["retention"][variant]["gain"]
        if gain is None:
            continue
        low, high = seed_range_of_gain(report, variant) or (gain, gain)
        ends += [100 * low, 100 * high]
        flops, color = summary["ff_flops_per_token"], f"C{index}"
        if flops == 0:
            ax.axhline(100 * gain, color=color, linestyle=":", label=f"{variant} (no feedforward, 0 FLOPs)")
            ax.axhspan(100 * low, 100 * high, color=color, alpha=0.12)
            continue
        ax.errorbar(
            [flops], [100 * gain], yerr=[[100 * (gain - low)], [100 * (high - gain)]], fmt="o", color=color, capsize=3
        )
        ax.annotate(variant, (flops, 100 * gain), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    if ends:
        margin = 0.08 * (max(ends) - min(ends) or 1.0)
        ax.set_ylim(min(ends) - margin, max(ends) + margin)
    ax.set_xlabel("FF FLOPs per token and layer")
    ax.set_ylabel("gain-above-majority retention %")
    ax.set_title("Quality against feedforward compute\n(bars: every task at its worst / best finetuning seed)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "quality_vs_flops.png", dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> None:
    write_json(out / "report.json", report)
    write_text(out / "report.md", format_report(report))
    plot_report(report, out)
