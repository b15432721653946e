"""Tiny causal decoders with a dense, an FFF (plain and balanced), a narrow dense and no feedforward, pretrained
alike on the corpus, for equal time and for equal steps.

``python benchmarks/decoder_quality.py OUT --minutes 6 --steps 1000 --threads 1`` pretrains the ``tiny-gpt``
decoder (4 layers x 128, 4 heads) with each feedforward (``dense``: 512 wide; ``fff``: one tree of depth 8, 9 of
511 neurons per token; ``fff-balanced``: the same tree with its routing offsets balanced, as the study's variant;
``narrow``: dense 9 wide, the tree's neurons per token; ``no-ff``) through ``ultrafastbert pretrain``'s own job on
the embedded corpus, with one recipe (sequences of 128 tokens, vocabulary 8192, batch ramped from 8 to 16, peak lr
3e-3, seed 0; validation at the end), twice: every arm for the same wall-clock minutes (``OUT/equal-time``: the
user's budget) and every arm for the same optimizer steps (``OUT/equal-steps``: the model's capacity). It writes
``OUT/report.json`` and ``OUT/report.md``: steps, training time, tokens per second (median and 10th percentile
step, with the load average: other work on the machine costs an equal-time arm steps), validation next-token
loss, perplexity and accuracy, each tree's health on the validation text, and greedy and sampled continuations
of a few prompts. Each arm's run folder is kept and checkpointed; a rerun resumes an unfinished arm and reuses
the finished ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from dataclasses import asdict
from pathlib import Path

import torch

from ultrafastbert.cache import cache_root
from ultrafastbert.data import prepare_default_data
from ultrafastbert.model.ultrafastgpt import UltraFastGPTConfig
from ultrafastbert.study.variants import BALANCE_RATE
from ultrafastbert.train.config import GenerateConfig, PretrainConfig, PretrainJob
from ultrafastbert.train.generation import generate_text
from ultrafastbert.train.jobs import FINAL, METRICS, MODEL, pretrain_job, validation_tree_health

# arm -> (decoder preset, routing-offset step of its trees)
ARMS = {
    "dense": ("tiny-gpt-dense", 0.0),
    "fff": ("tiny-gpt-fff", 0.0),
    "fff-balanced": ("tiny-gpt-fff", BALANCE_RATE),
    "narrow": ("tiny-gpt-narrow", 0.0),
    "no-ff": ("tiny-gpt-no-ff", 0.0),
}
REGIMES = ("equal-time", "equal-steps")
PROMPTS = ("the cat", "a computer program is", "the meaning of the word")
SEQ_LEN, VOCAB_SIZE = 128, 8192


def pretrain_arm(arm: str, folder: Path, budget: dict, seed: int) -> dict:
    """Pretrain one arm in ``folder`` (resuming its checkpoint, or reading back its finished run) for ``budget``
    (``max_minutes`` or ``max_steps``) and return its final record."""
    if (folder / FINAL).is_file():
        return json.loads((folder / FINAL).read_text())
    preset, balance_rate = ARMS[arm]
    train = PretrainConfig(
        micro_batch=8,
        final_batch=16,
        lr=3e-3,
        seed=seed,
        checkpoint_every_minutes=2.0,
        tree_health_every_steps=0,
        **budget,
    )
    job = PretrainJob(
        str(folder),
        preset=preset,
        vocab_size=VOCAB_SIZE,
        seq_len=SEQ_LEN,
        fff_balance_rate=balance_rate,
        resume=True,
        train=train,
    )
    load_before = os.getloadavg()[0]
    final = pretrain_job(job)
    (folder / "load_average.json").write_text(json.dumps([load_before, os.getloadavg()[0]]) + "\n")
    return final


def tree_health(model_dir: Path, sequences: int = 128) -> list[dict]:
    """Tree health of the model's FFF layers on the first ``sequences`` validation sequences (empty: no tree)."""
    corpus = prepare_default_data(cache_root()).corpus
    _, layers, _ = validation_tree_health(model_dir, corpus, SEQ_LEN, cache_root(), max_sequences=sequences)
    return [asdict(layer) for layer in layers]


def samples(model_dir: Path, new_tokens: int) -> list[dict]:
    greedy = GenerateConfig(max_new_tokens=new_tokens)
    sampled = GenerateConfig(max_new_tokens=new_tokens, do_sample=True, temperature=0.8, top_k=40, seed=0)
    return [
        {
            "prompt": prompt,
            "greedy": generate_text(model_dir, prompt, greedy, stream=False).text,
            "sampled": generate_text(model_dir, prompt, sampled, stream=False).text,
        }
        for prompt in PROMPTS
    ]


def arm_record(arm: str, folder: Path, final: dict, new_tokens: int) -> dict:
    records = [json.loads(line) for line in (folder / METRICS).read_text().splitlines()]
    rates = sorted(record["tokens_per_second"] for record in records if "tokens_per_second" in record)
    config = UltraFastGPTConfig.from_pretrained(folder / MODEL)
    load_file = folder / "load_average.json"
    return {
        "arm": arm,
        "preset": ARMS[arm][0],
        "fff_balance_rate": ARMS[arm][1],
        "name": final["name"],
        "parameters": final["parameters"],
        "ff_neurons_per_token": config.ff_neurons_per_token,
        "steps": final["step"],
        "train_seconds": final["elapsed"],
        "tokens_per_second_median_step": statistics.median(rates),
        "tokens_per_second_p10_step": rates[len(rates) // 10],
        "load_average": json.loads(load_file.read_text()) if load_file.is_file() else None,
        "val_loss": final["val_loss"],
        "val_perplexity": final["val_perplexity"],
        "val_accuracy": final["val_accuracy"],
        "tree_health": tree_health(folder / MODEL),
        "samples": samples(folder / MODEL, new_tokens),
    }


def verdict(records: list[dict]) -> str:
    """One sentence: how the best tree compares with the narrow layer of its neurons per token and with no FF."""
    by_arm = {record["arm"]: record for record in records}
    trees = [by_arm[arm] for arm in ("fff", "fff-balanced") if arm in by_arm]
    if not trees or "narrow" not in by_arm:
        return ""
    best = min(trees, key=lambda record: record["val_loss"])
    narrow = by_arm["narrow"]
    difference = best["val_loss"] - narrow["val_loss"]
    losses = f"({best['val_loss']:.3f} vs {narrow['val_loss']:.3f})"
    if abs(difference) < 0.02:
        compared = f"matches the narrow dense layer {losses}"
    elif difference < 0:
        compared = f"beats the narrow dense layer by {-difference:.3f} nats {losses}"
    else:
        compared = f"trails the narrow dense layer by {difference:.3f} nats {losses}"
    sentence = f"The better tree (`{best['arm']}`) {compared}"
    if "dense" in by_arm:
        dense = by_arm["dense"]
        sentence += f"; the dense layer reaches {dense['val_loss']:.3f}"
    if "no-ff" in by_arm:
        sentence += f", no feedforward {by_arm['no-ff']['val_loss']:.3f}"
        if "dense" in by_arm and by_arm["no-ff"]["val_loss"] > by_arm["dense"]["val_loss"]:
            floor, span = by_arm["no-ff"]["val_loss"], by_arm["no-ff"]["val_loss"] - by_arm["dense"]["val_loss"]
            shares = ", ".join(
                f"`{arm}` {100 * (floor - by_arm[arm]['val_loss']) / span:.0f}%"
                for arm in ("fff", "fff-balanced", "narrow")
                if arm in by_arm
            )
            sentence += f". Share of the dense layer's loss reduction over no feedforward: {shares}"
    return sentence + "."


def regime_markdown(regime: str, budget: str, records: list[dict]) -> list[str]:
    lines = [
        f"## {regime}: {budget} per arm",
        "",
        "| arm | model | FF neurons per token | steps | train s | tokens/s (median / p10 step) | load before, after | "
        "val loss | val perplexity | next-token accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    if regime == "equal-time":
        lines[1:1] = [
            "",
            "The arms ran one after another on a shared machine: the load average before and after each, and its "
            "10th-percentile step rate against its median, show how much other work cost it steps.",
        ]
    for r in records:
        load = "" if r["load_average"] is None else ", ".join(f"{value:.1f}" for value in r["load_average"])
        lines.append(
            f"| `{r['arm']}` | {r['name']} | {r['ff_neurons_per_token']} | {r['steps']} | {r['train_seconds']:.0f} | "
            f"{r['tokens_per_second_median_step']:,.0f} / {r['tokens_per_second_p10_step']:,.0f} | {load} | "
            f"{r['val_loss']:.3f} | {r['val_perplexity']:.1f} | {100 * r['val_accuracy']:.1f}% |"
        )
    lines += ["", verdict(records)]
    for r in records:
        for layer, health in enumerate(r["tree_health"]):
            if layer == 0:
                lines += ["", f"Tree health of `{r['arm']}` on 128 validation sequences:", ""]
            lines.append(
                f"- layer {layer}: {100 * health['unvisited_leaf_fraction']:.1f}% of leaves unvisited, leaf entropy "
                f"{health['leaf_entropy_ratio']:.3f} of uniform, root sends {100 * health['root_left_share']:.1f}% left"
            )
    lines += ["", f"### Samples, {regime} (greedy; sampled at temperature 0.8, top-k 40, seed 0)", ""]
    for r in records:
        lines += [f"`{r['arm']}`:", ""]
        for sample in r["samples"]:
            lines += [f"- greedy: {sample['greedy']}", f"- sampled: {sample['sampled']}"]
        lines.append("")
    return lines


def report_markdown(report: dict) -> str:
    lines = [
        "# Tiny causal decoders: dense vs FFF vs narrow dense vs no feedforward",
        "",
        f"`{report['command']}` ({report['train_minutes']:.0f} minutes of pretraining in all; {report['cpu']}, "
        f"{report['threads']} thread(s)): `tiny-gpt` (4 layers x 128, 4 heads), sequences of {SEQ_LEN}, "
        f"vocabulary {VOCAB_SIZE}, the "
        "embedded corpus, one recipe (batch ramped 8 -> 16 sequences, peak lr 3e-3, seed 0); validation next-token "
        "loss on the corpus's held-out split. `fff-balanced` moves its trees' routing offsets by "
        f"{BALANCE_RATE} a step toward even splits.",
        "",
    ]
    for regime in REGIMES:
        lines += regime_markdown(regime, report["budgets"][regime], report["regimes"][regime])
    return "\n".join(lines)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="folder: equal-time/ and equal-steps/ with a run folder per arm, report.*")
    parser.add_argument("--minutes", type=float, default=6.0, help="pretraining minutes per arm (equal time)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per arm (equal steps)")
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES, help="regimes to run now")
    parser.add_argument("--new-tokens", type=int, default=24, help="tokens per sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    if args.steps < 1 or args.new_tokens < 1 or not args.minutes > 0:
        raise SystemExit("decoder_quality.py: --minutes must be > 0, --steps and --new-tokens >= 1")
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    budgets = {"equal-time": {"max_minutes": args.minutes}, "equal-steps": {"max_steps": args.steps}}
    for regime in args.regimes:  # the regimes asked for now; the report needs both
        for arm in ARMS:
            pretrain_arm(arm, out / regime / arm, budgets[regime], args.seed)
    if not all((out / regime / arm / FINAL).is_file() for regime in REGIMES for arm in ARMS):
        print("decoder_quality.py: the other regime has not run yet; the report is written when both have")
        return
    regimes = {
        regime: [
            arm_record(arm, out / regime / arm, json.loads((out / regime / arm / FINAL).read_text()), args.new_tokens)
            for arm in ARMS
        ]
        for regime in REGIMES
    }
    command = (
        f"python benchmarks/decoder_quality.py {args.output} --minutes {args.minutes:g} --steps {args.steps} "
        f"--threads {args.threads}"
    )
    report = {
        "command": command,
        "train_minutes": sum(record["train_seconds"] for records in regimes.values() for record in records) / 60,
        "cpu": cpu_name(),
        "threads": args.threads,
        "budgets": {"equal-time": f"{args.minutes:g} minutes", "equal-steps": f"{args.steps} steps"},
        "regimes": regimes,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report) + "\n")
    print(report_markdown(report))


if __name__ == "__main__":
    main()
