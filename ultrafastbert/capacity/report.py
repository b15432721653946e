"""The capacity benchmark's report: ``report.json`` (every arm and fact count, checkable by a script),
``report.md`` (the command, the machine, the tables, conclusions in words) and two plots."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..train.run_folder import write_json_atomic
from .config import ARM_HELP, CapacityConfig

# The acceptance bar at the largest synthetic fact count: the balanced tree against the dense layers.
MIN_TIMES_NARROW = 4.0
MIN_SHARE_OF_WIDE = 0.8


@dataclass
class ArmResult:
    """What one arm recalled of one fact set, and what it cost."""

    task: str  # "synthetic" or "wordnet"
    arm: str
    size: int  # people (synthetic) or trained lemmas (wordnet)
    facts: int
    values: int
    recall: float  # exact-match share of the trained facts, argmax over the whole vocabulary
    bits_stored: float  # recalled facts x log2(values)
    recall_curve: list[tuple[int, float]]  # (step, recall) at each evaluation
    final_loss: float
    steps: int
    batch_rows: int
    ff_parameters: int
    ff_neurons_per_token: int
    ff_flops_per_token: int  # 2 x multiply-adds of the feedforward, per token
    bits_per_ff_parameter: float | None
    ms_per_step: float  # median wall-clock of a training step
    train_seconds: float
    tree_health: list[dict[str, Any]] | None  # per FFF layer, over every token of the fact set
    heldout_accuracy: float | None = None  # wordnet: lemmas never trained on
    majority_share: float | None = None  # wordnet: share of the commonest file among the trained lemmas


def _row(result: ArmResult) -> dict[str, Any]:
    row = asdict(result)
    row["n_facts"] = result.facts
    return row


def _by(results: list[ArmResult], task: str) -> dict[tuple[int, str], ArmResult]:
    return {(r.size, r.arm): r for r in results if r.task == task}


def _health_text(health: list[dict[str, Any]] | None) -> str:
    if not health:
        return "-"
    return "; ".join(
        f"unused leaves {h['unvisited_leaf_fraction']:.1%}, root left {h['root_left_share']:.1%}, "
        f"leaf entropy {h['leaf_entropy_ratio']:.2f}"
        if h["root_left_share"] is not None
        else f"unused leaves {h['unvisited_leaf_fraction']:.1%}"
        for h in health
    )


def acceptance(results: list[ArmResult]) -> dict[str, Any] | None:
    """The balanced tree's bits against the narrow and the wide dense layer's at the largest synthetic fact count
    (``None`` when one of the three arms is missing there)."""
    synthetic = _by(results, "synthetic")
    if not synthetic:
        return None
    largest = max(size for size, _ in synthetic)
    arms = {arm: synthetic.get((largest, arm)) for arm in ("fff-balanced", "fff", "narrow", "wide")}
    balanced, narrow, wide = arms["fff-balanced"], arms["narrow"], arms["wide"]
    if balanced is None or narrow is None or wide is None:
        return None
    times_narrow = balanced.bits_stored / narrow.bits_stored if narrow.bits_stored else float("inf")
    share_of_wide = balanced.bits_stored / wide.bits_stored if wide.bits_stored else float("inf")
    floor = synthetic.get((largest, "no-ff"))
    own = None  # the feedforwards' own bits: above what attention and embeddings store without one (no-ff)
    if floor is not None:
        above = {arm: r.bits_stored - floor.bits_stored for arm, r in arms.items() if r is not None}
        own = {
            "no_ff_bits": floor.bits_stored,
            "balanced_bits_above_no_ff": above["fff-balanced"],
            "times_narrow": above["fff-balanced"] / above["narrow"] if above["narrow"] > 0 else None,
            "share_of_wide": above["fff-balanced"] / above["wide"] if above["wide"] > 0 else None,
        }
    return {
        "people": largest,
        "facts": balanced.facts,
        "balanced_bits": balanced.bits_stored,
        "times_narrow": times_narrow,
        "share_of_wide": share_of_wide,
        "plain_times_narrow": arms["fff"].bits_stored / narrow.bits_stored
        if arms["fff"] and narrow.bits_stored
        else None,
        "plain_share_of_wide": arms["fff"].bits_stored / wide.bits_stored if arms["fff"] and wide.bits_stored else None,
        "met": times_narrow >= MIN_TIMES_NARROW and share_of_wide >= MIN_SHARE_OF_WIDE,
        "above_no_ff": own,
        "balanced_tree_health": balanced.tree_health,
        "plain_tree_health": arms["fff"].tree_health if arms["fff"] else None,
    }


def _recall_at(result: ArmResult, fraction: float) -> float:
    """Recall at the last evaluation at or before ``fraction`` of the steps (0 before the first)."""
    earlier = [recall for step, recall in result.recall_curve if step <= fraction * result.steps]
    return earlier[-1] if earlier else 0.0


def _conclusions(results: list[ArmResult], verdict: dict[str, Any] | None, config: CapacityConfig) -> list[str]:
    lines = []
    synthetic = _by(results, "synthetic")
    for size in sorted({size for size, _ in synthetic}):
        here = {arm: synthetic[(size, arm)] for s, arm in synthetic if s == size}
        ranked = sorted(here.values(), key=lambda r: -r.bits_stored)
        lines.append(
            f"- {here[ranked[0].arm].facts:,} facts ({size:,} people): "
            + ", ".join(f"{r.arm} {r.recall:.1%} ({r.bits_stored:,.0f} bits)" for r in ranked)
            + "."
        )
    rising = [
        f"{r.arm} at {r.size:,} people (+{r.recall - _recall_at(r, 0.75):.1%})"
        for r in sorted(synthetic.values(), key=lambda r: (r.size, r.arm))
        if r.recall - _recall_at(r, 0.75) > 0.01
    ]
    if rising:
        lines.append(
            "- Not at a plateau: these arms gained more than one point of recall over the last quarter of the steps, "
            "so their figures are what equal steps buy, not what the layer can hold: " + ", ".join(rising) + "."
        )
    if verdict is None:
        lines.append("- The acceptance comparison needs the fff-balanced, narrow and wide arms at the largest N.")
    else:
        met = "meets" if verdict["met"] else "does NOT meet"
        lines.append(
            f"- At the largest N ({verdict['facts']:,} facts) the balanced FFF-1x{config.depth} stores "
            f"{verdict['times_narrow']:.2f}x the bits of the narrow dense layer of equal FLOPs and "
            f"{verdict['share_of_wide']:.1%} of the wide dense layer's: it {met} the bar of "
            f">= {MIN_TIMES_NARROW:g}x narrow and >= {MIN_SHARE_OF_WIDE:.0%} of wide. Tree health at the end: "
            f"balanced {_health_text(verdict['balanced_tree_health'])}; "
            f"plain {_health_text(verdict['plain_tree_health'])}."
        )
        own = verdict.get("above_no_ff")
        if own and own["times_narrow"] is not None and own["share_of_wide"] is not None:
            lines.append(
                f"- Counting only what each feedforward adds to the attention-only model ({own['no_ff_bits']:,.0f} "
                f"bits at this N), the balanced tree adds {own['balanced_bits_above_no_ff']:,.0f} bits: "
                f"{own['times_narrow']:.1f}x the narrow layer's addition and {own['share_of_wide']:.1%} of the wide "
                "layer's."
            )
    wordnet = _by(results, "wordnet")
    for (size, arm), r in sorted(wordnet.items()):
        lines.append(
            f"- WordNet, {size:,} lemmas, {arm}: recalls {r.recall:.1%} of the trained lemmas' files, "
            f"{r.heldout_accuracy:.1%} of unseen lemmas' (majority file {r.majority_share:.1%})."
            if r.heldout_accuracy is not None
            else f"- WordNet, {size:,} lemmas, {arm}: recalls {r.recall:.1%} of the trained lemmas' files."
        )
    return lines


def _markdown(
    config: CapacityConfig,
    results: list[ArmResult],
    command: str,
    machine: dict[str, Any],
    verdict: dict[str, Any] | None,
) -> str:
    out = [
        "# Capacity benchmark: facts stored per feedforward FLOP",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cpu']} ({machine['cpu_capability']}), {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}, {machine['date']}.",
        "",
        f"Model: one-layer crammedBERT, hidden {config.hidden_size}, {config.heads} heads, no dropout; "
        f"tree depth D = {config.depth} ({config.tree_width} neurons, {config.path_width} per token); "
        f"weights start at N(0, {config.init_std:g}). "
        f"Training: {config.total_steps} Adam steps (each fact seen {config.exposures} times), peak lr {config.lr:g}, "
        f"balance rate {config.balance_rate:g}. Synthetic facts: K = {config.attributes} attributes, "
        f"V = {config.values} values ({config.bits_per_fact:g} bits a fact), names from {config.name_pool} x "
        f"{config.name_pool}.",
        "",
        "Arms (equal steps; all but wide at the tree's FF FLOPs per token or fewer):",
        "",
        *(f"- `{arm}`: {ARM_HELP[arm]}" for arm in config.arms),
        "",
        "## Synthetic facts (nothing to infer: recalled facts x log2 V = bits stored)",
        "",
        "| people | facts | arm | recall | bits stored | FF params | bits / FF param | FF FLOPs / token | ms / step "
        "| tree health |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted((r for r in results if r.task == "synthetic"), key=lambda r: (r.size, r.ff_flops_per_token, r.arm)):
        per_param = f"{r.bits_per_ff_parameter:.3f}" if r.bits_per_ff_parameter is not None else "-"
        out.append(
            f"| {r.size:,} | {r.facts:,} | {r.arm} | {r.recall:.1%} | {r.bits_stored:,.0f} | {r.ff_parameters:,} | "
            f"{per_param} | {r.ff_flops_per_token:,} | {r.ms_per_step:.1f} | {_health_text(r.tree_health)} |"
        )
    wordnet = [r for r in results if r.task == "wordnet"]
    if wordnet:
        out += [
            "",
            "## WordNet: lemma -> lexicographer file (real facts, partly inferable from spelling)",
            "",
            "| lemmas | arm | recall (trained) | accuracy (unseen lemmas) | majority file | ms / step | tree health |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sorted(wordnet, key=lambda r: (r.size, r.ff_flops_per_token, r.arm)):
            heldout = f"{r.heldout_accuracy:.1%}" if r.heldout_accuracy is not None else "-"
            out.append(
                f"| {r.size:,} | {r.arm} | {r.recall:.1%} | {heldout} | {r.majority_share:.1%} | "
                f"{r.ms_per_step:.1f} | {_health_text(r.tree_health)} |"
            )
    out += ["", "## Conclusions", "", *_conclusions(results, verdict, config), ""]
    out += [
        "Recall is measured on the trained facts at the end of the decayed schedule (the curve per arm is in "
        "report.json); wall-clock per step is the median of the training steps on a machine that may have been "
        "shared, so compare it only roughly.",
        "",
    ]
    return "\n".join(out)


def _plots(folder: Path, results: list[ArmResult], config: CapacityConfig) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    synthetic = [r for r in results if r.task == "synthetic"]
    if not synthetic:
        return []
    arms = [arm for arm in config.arms if any(r.arm == arm for r in synthetic)]
    figure, axes = plt.subplots(figsize=(6, 4))
    for arm in arms:
        points = sorted((r.facts, r.recall) for r in synthetic if r.arm == arm)
        axes.plot(*zip(*points, strict=True), marker="o", label=arm)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("facts N")
    axes.set_ylabel("exact-match recall")
    axes.set_ylim(0, 1.02)
    axes.axhline(1 / config.values, color="grey", linestyle=":", label="chance")
    axes.legend()
    axes.set_title("Recall vs facts, equal steps")
    figure.tight_layout()
    figure.savefig(folder / "recall_vs_facts.png", dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(6, 4))
    for size in sorted({r.size for r in synthetic}):
        rows = sorted((r for r in synthetic if r.size == size), key=lambda r: r.ff_flops_per_token)
        axes.plot(
            [r.ff_flops_per_token for r in rows], [r.bits_stored for r in rows], "o", label=f"{rows[0].facts:,} facts"
        )
        for r in rows:
            axes.annotate(
                r.arm, (r.ff_flops_per_token, r.bits_stored), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    axes.set_xscale("symlog", linthresh=1000)
    axes.set_yscale("symlog", linthresh=1000)
    axes.set_xlabel("FF FLOPs per token")
    axes.set_ylabel("bits stored")
    axes.legend()
    axes.set_title("Bits stored vs feedforward FLOPs per token")
    figure.tight_layout()
    figure.savefig(folder / "bits_vs_flops.png", dpi=120)
    plt.close(figure)
    return ["recall_vs_facts.png", "bits_vs_flops.png"]


def write_report(
    folder: Path, config: CapacityConfig, results: list[ArmResult], command: str, machine: dict[str, Any]
) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and the plots into ``folder``; returns the JSON report."""
    verdict = acceptance(results)
    plots = _plots(folder, results, config)
    report = {
        "command": command,
        "machine": machine,
        "settings": {name: list(v) if isinstance(v, tuple) else v for name, v in config.settings().items()},
        "results": [_row(r) for r in results],
        "acceptance": verdict,
        "plots": plots,
    }
    write_json_atomic(folder / "report.json", report)
    (folder / "report.md").write_text(_markdown(config, results, command, machine, verdict))
    return report
