"""Tiny causal decoders with a dense, an FFF, a narrow dense and no feedforward, pretrained alike on the corpus.

``python benchmarks/decoder_quality.py OUT --steps 100`` pretrains the ``tiny-gpt`` decoder (4 layers x 128, 4
heads) with each feedforward (``-dense``: 512 wide; ``-fff``: one tree of depth 8, 9 of 511 neurons per token;
``-narrow``: dense 9 wide, the tree's neurons per token; ``-no-ff``) through ``ultrafastbert pretrain``'s own job
on the embedded corpus, with one recipe and the same number of steps (sequences of 128 tokens, vocabulary 8192,
batch ramped from 8 to 16, peak lr 3e-3, seed 0; validation once, at the end), and writes ``OUT/report.json``
and ``OUT/report.md``: steps, training time and tokens per second (the median step), validation next-token loss,
perplexity and accuracy, the FFF's tree health on the validation text, and greedy and sampled continuations of a
few prompts. Each arm's run folder (``OUT/<preset>``) is kept; rerunning reuses the arms that finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from ultrafastbert.cache import cache_root
from ultrafastbert.data import packed_dataset, prepare_default_data
from ultrafastbert.model.decoder import UltraFastGPTConfig
from ultrafastbert.model.health import model_tree_health
from ultrafastbert.model.tokenizer import load_tokenizer
from ultrafastbert.train.config import GenerateConfig, PretrainConfig, PretrainJob
from ultrafastbert.train.generation import generate_text
from ultrafastbert.train.jobs import FINAL, METRICS, MODEL, pretrain_job

ARMS = ("tiny-gpt-dense", "tiny-gpt-fff", "tiny-gpt-narrow", "tiny-gpt-no-ff")
PROMPTS = ("the cat", "a computer program is", "the meaning of the word")
SEQ_LEN, VOCAB_SIZE = 128, 8192


def pretrain_arm(preset: str, out: Path, steps: int, seed: int) -> dict:
    """Pretrain one arm (or read back its finished run) and return its final record."""
    folder = out / preset
    if (folder / FINAL).is_file():
        return json.loads((folder / FINAL).read_text())
    train = PretrainConfig(
        micro_batch=8,
        final_batch=16,
        max_steps=steps,
        lr=3e-3,
        seed=seed,
        checkpoint_every_minutes=100.0,
        tree_health_every_steps=0,
    )
    job = PretrainJob(str(folder), preset=preset, vocab_size=VOCAB_SIZE, seq_len=SEQ_LEN, overwrite=True, train=train)
    return pretrain_job(job)


def tree_health(model_dir: Path, sequences: int = 128) -> list[dict]:
    """Tree health of the model's FFF layers on the first ``sequences`` validation sequences (empty: no tree)."""
    corpus = prepare_default_data(cache_root()).corpus
    validation = packed_dataset(corpus, load_tokenizer(model_dir), "validation", SEQ_LEN, cache_root())
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    count = min(sequences, len(validation))
    batches = (
        (torch.stack([validation[index] for index in range(start, min(count, start + 32))]), None)
        for start in range(0, count, 32)
    )
    return [asdict(layer) for layer in model_tree_health(model, batches)]


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


def arm_record(preset: str, out: Path, final: dict, new_tokens: int) -> dict:
    folder = out / preset
    records = [json.loads(line) for line in (folder / METRICS).read_text().splitlines()]
    steps = [record for record in records if "tokens_per_second" in record]
    config = UltraFastGPTConfig.from_pretrained(folder / MODEL)
    return {
        "preset": preset,
        "name": final["name"],
        "parameters": final["parameters"],
        "ff_neurons_per_token": config.ff_neurons_per_token,
        "steps": final["step"],
        "train_seconds": final["elapsed"],
        "tokens_per_second_median_step": statistics.median(record["tokens_per_second"] for record in steps),
        "val_loss": final["val_loss"],
        "val_perplexity": final["val_perplexity"],
        "val_accuracy": final["val_accuracy"],
        "tree_health": tree_health(folder / MODEL),
        "samples": samples(folder / MODEL, new_tokens),
    }


def report_markdown(records: list[dict], command: str) -> str:
    lines = [
        "# Tiny causal decoders: dense vs FFF vs narrow dense vs no feedforward",
        "",
        f"`{command}`: `tiny-gpt` (4 layers x 128, 4 heads), sequences of {SEQ_LEN}, vocabulary {VOCAB_SIZE}, the "
        "embedded corpus, one recipe, the same steps; validation on the corpus's held-out split.",
        "",
        "| preset | model | FF neurons per token | steps | train s | tokens/s | val loss | val perplexity | "
        "next-token accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| `{r['preset']}` | {r['name']} | {r['ff_neurons_per_token']} | {r['steps']} | "
            f"{r['train_seconds']:.0f} | {r['tokens_per_second_median_step']:,.0f} | {r['val_loss']:.3f} | "
            f"{r['val_perplexity']:.1f} | {100 * r['val_accuracy']:.1f}% |"
        )
    for r in records:
        for layer, health in enumerate(r["tree_health"]):
            if layer == 0:
                lines += ["", f"Tree health of `{r['preset']}` on 128 validation sequences:", ""]
            lines.append(
                f"- layer {layer}: {100 * health['unvisited_leaf_fraction']:.1f}% of leaves unvisited, leaf entropy "
                f"{health['leaf_entropy_ratio']:.3f} of uniform, root sends {100 * health['root_left_share']:.1f}% left"
            )
    lines += ["", "## Samples (greedy; sampled at temperature 0.8, top-k 40, seed 0)", ""]
    for r in records:
        lines += [f"### `{r['preset']}`", ""]
        for sample in r["samples"]:
            lines += [f"- greedy: {sample['greedy']}", f"- sampled: {sample['sampled']}"]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="folder: one run folder per arm, report.json, report.md")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per arm")
    parser.add_argument("--new-tokens", type=int, default=24, help="tokens per sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    if args.steps < 1 or args.new_tokens < 1:
        raise SystemExit("decoder_quality.py: --steps and --new-tokens must be >= 1")
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    finals = {preset: pretrain_arm(preset, out, args.steps, args.seed) for preset in ARMS}
    records = [arm_record(preset, out, finals[preset], args.new_tokens) for preset in ARMS]
    command = f"python benchmarks/decoder_quality.py {args.output} --steps {args.steps} --threads {args.threads}"
    report = {"command": command, "minutes": (time.time() - started) / 60, "arms": records}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(records, command) + "\n")
    print(report_markdown(records, command))


if __name__ == "__main__":
    main()
