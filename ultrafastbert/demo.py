"""The main job (``ultrafastbert demo``): the paper's two-sided claim in miniature, on the embedded real data, within
a time budget.

The demo is the quality study (``study/``) with its ``demo`` preset: a small dense crammedBERT and a small
UltraFastBERT whose FFF has as many neurons as the dense feedforward is wide (511 vs 512) but evaluates only
``depth+1`` per token, pretrained with the same recipe and the same time, finetuned on the local tasks over several
seeds, and their feedforward layers timed at the demo's size and at paper size. The study writes the report, plots
and every intermediate result into the demo's folder, so a rerun of the same command continues where it stopped;
the demo prints a summary of the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .demo_config import DemoConfig
from .study.run import run_study


def run_demo(
    config: DemoConfig, default_data: Any | None = None, command: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """Run (or continue) the demo's study, print its summary and return the report's JSON content. ``command``
    goes into the report; ``default_data`` replaces the embedded data and ``overrides`` the preset's settings
    (tests run a toy size on small synthetic data)."""
    study = config.study_config(**overrides)
    report = run_study(study, default_data, command)
    print(summary(report))
    print(f"[demo] report: {Path(study.output_dir) / 'report.md'} (and report.json, plots)", flush=True)
    return report


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _milliseconds(value: float) -> str:
    return "-" if value == 0 else f"{value:.0f}" if value >= 100 else f"{value:.3g}"  # 0: no feedforward to time


def summary(report: dict[str, Any]) -> str:
    """The report's headline figures as one markdown table, a column per variant: pretraining, the median score
    on each task against its majority class, retention against the dense reference, and the feedforward layer's
    time at the study's size and at paper size (with the speed-up over the dense layer)."""
    pretraining, settings = report["pretraining"], report["settings"]
    variants = list(pretraining)
    timing = report["timing"]
    tokens = str(timing["tokens"][-1])
    dense_ms = [timing["ms"][size]["dense"][tokens] for size in ("study", "paper")]

    def row(label: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = [
        row("variant: model", [f"{variant}: {pretraining[variant]['name']}" for variant in variants]),
        "|---|" + "---|" * len(variants),
        row(
            f"pretraining (hidden {settings['hidden_size']}, layers {settings['layers']}): steps in minutes, "
            "masked-token accuracy",
            [f"{s['steps']} in {s['minutes']:.1f} min, {_percent(s['val_accuracy'])}" for s in pretraining.values()],
        ),
    ]
    for task, split in report["score_splits"].items():
        lines.append(
            row(
                f"{task} ({split} {report['metrics'][task]}; majority class {_percent(report['majority'][task])})",
                [_percent(report["scores"][variant][task]["median"]) for variant in variants],
            )
        )
    kept = {variant: report["retention"][variant] for variant in variants if variant != "dense"}
    cells = {variant: f"{_percent(value['raw'])}; {_percent(value['gain'])}" for variant, value in kept.items()}
    lines.append(row("retention against dense: raw; gain above majority", [cells.get(v, "") for v in variants]))
    speed = []
    for variant in variants:
        ms = [timing["ms"][size][variant][tokens] for size in ("study", "paper")]
        cell = " / ".join(_milliseconds(value) for value in ms) + " ms"
        if variant != "dense" and all(ms):
            cell += ": " + " / ".join(f"{d / value:.1f}x" for d, value in zip(dense_ms, ms, strict=True))
        speed.append(cell)
    lines.append(row(f"feedforward layer forward, {tokens} tokens: demo size / paper size (768, FF-3072)", speed))
    baseline = report["copy_unigram_baseline"]
    lines += [
        "",
        f"Task scores: medians over {len(settings['finetune_seeds'])} finetuning seed(s). A context-free guess (copy "
        f"the input, else the most frequent token) gets {_percent(baseline['accuracy'])} of the masked tokens.",
    ]
    return "\n".join(lines)
