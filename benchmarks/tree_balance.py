"""Tree health of the quality study's UltraFastBERT-1x8 pretrained with a tree-balancing remedy.

``python benchmarks/tree_balance.py OUT --steps 2000 --balance-rate 0.01`` (or ``--balance-loss 0.1``) pretrains
the study's ``fff`` variant (``cpu-2core`` settings: hidden 128, 2 layers, depth 8, batch ramp to 64, peak lr
3e-3) for a step budget, set up by the study's own ``variant_pretrainer``, with tree health logged every 100 steps
in ``OUT/metrics.jsonl``, and writes ``OUT/summary.json``: the final validation MLM metrics and the tree health
of every layer on the validation text as it is (the study's figure) and with the masks of masked-language-model
training applied (the inputs the trees were trained and balanced on). The study itself runs the same pretraining for its
``fff-balanced`` variant; this script adds the remedies' options and leaves out the finetuning.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ultrafastbert.fff import check_balance_rate
from ultrafastbert.model.health import model_tree_health
from ultrafastbert.study.config import study_config
from ultrafastbert.study.run import load_study_data, validation_batches, variant_pretrainer
from ultrafastbert.train.pretrain import mask_generators


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="run folder (metrics.jsonl, summary.json)")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    parser.add_argument("--balance-rate", type=float, default=0.0, help="routing-offset step (0: off)")
    parser.add_argument("--balance-loss", type=float, default=0.0, help="load-balancing loss weight (0: off)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    if args.steps < 1:
        raise SystemExit("tree_balance.py: --steps must be >= 1")
    try:  # refused before any work
        check_balance_rate(args.balance_rate, "--balance-rate")
        check_balance_rate(args.balance_loss, "--balance-loss")
    except ValueError as error:
        raise SystemExit(f"tree_balance.py: {error}") from None
    torch.set_num_threads(args.threads)
    config = study_config("cpu-2core", minutes_per_variant=None, steps_per_variant=args.steps)
    data = load_study_data(config)
    balance = {"fff_balance_rate": args.balance_rate, "fff_balance_loss": args.balance_loss}
    out = Path(args.output)
    trainer = variant_pretrainer(config, "fff", data, out, balance, checkpoint_every_minutes=100.0, log_every_steps=50)
    model = trainer.model
    started = time.time()
    final = trainer.run()
    health = model_tree_health(model, validation_batches(data, config.micro_batch))
    masked = model_tree_health(model, masked_batches(data.validation, data.masker, config.micro_batch, config.seed))
    summary = {
        "balance_rate": args.balance_rate,
        "balance_loss": args.balance_loss,
        "final": final,
        "minutes": (time.time() - started) / 60,
        "tree_health": [asdict(layer) for layer in health],
        "tree_health_masked_inputs": [asdict(layer) for layer in masked],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for label, layers in (("text", health), ("masked", masked)):
        for index, layer in enumerate(layers):
            print(
                f"{label} layer {index}: unvisited leaves {layer.unvisited_leaf_fraction:.1%}, leaf entropy "
                f"{layer.leaf_entropy_ratio:.3f}, root left {layer.root_left_share:.1%}"
            )


def masked_batches(sequences, masker, batch_size: int, seed: int):
    """The validation sequences with masks drawn as in training, as ``(input_ids, None)`` batches."""
    for start in range(0, len(sequences), batch_size):
        positions = list(range(start, min(start + batch_size, len(sequences))))
        inputs, _ = masker(torch.stack([sequences[p] for p in positions]), mask_generators(seed, positions))
        yield inputs, None


if __name__ == "__main__":
    main()
