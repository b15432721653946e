"""A tiny deterministic pretraining run on synthetic sequences, for the kill/resume and torchrun tests.

Run as a script (``python pretrain_tiny.py OUT --steps N ...`` or under ``torchrun``); it writes checkpoints to
``OUT/checkpoints`` and the final weights to ``OUT/final.safetensors``. ``--causal`` trains a tiny causal decoder
on next-token prediction instead of the masked LM.
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import save_file

from ultrafastbert.data.causal import causal_rows
from ultrafastbert.model.crammedbert.configuration import CrammedBertConfig
from ultrafastbert.model.crammedbert.modeling import CrammedBertForMaskedLM
from ultrafastbert.model.ultrafastgpt import UltraFastGPTConfig, UltraFastGPTForCausalLM
from ultrafastbert.train.distributed import init_distributed, shutdown
from ultrafastbert.train.pretrain import PretrainConfig, Pretrainer

VOCAB, SEQ_LEN, MASK_ID = 64, 16, 3
TIED = ("decoder.weight", "lm_head.weight")  # the output layers, tied to the word embedding: not saved twice


def synthetic_sequences(count: int, seed: int) -> list[torch.Tensor]:
    """Sequences with learnable structure: each token is (previous + a per-sequence stride) mod vocab."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(8, VOCAB, (count, 1), generator=generator)
    stride = torch.randint(1, 4, (count, 1), generator=generator)
    return list(8 + (start + stride * torch.arange(SEQ_LEN)) % (VOCAB - 8))


def mask_quarter(ids: torch.Tensor, generators) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, labels = ids.clone(), torch.full_like(ids, -100)
    count = SEQ_LEN // 4
    for row, generator in enumerate(generators):
        chosen = torch.randperm(SEQ_LEN, generator=generator)[:count]
        labels[row, chosen] = ids[row, chosen]
        inputs[row, chosen] = MASK_ID
    return inputs, labels


def tiny_model(trees: int = 2, depth: int = 2) -> CrammedBertForMaskedLM:
    torch.manual_seed(0)
    config = CrammedBertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=SEQ_LEN,
        fff_trees=trees,
        fff_depth=depth,
        embedding_dropout_prob=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return CrammedBertForMaskedLM(config)


def tiny_decoder() -> UltraFastGPTForCausalLM:
    """A 2-layer UltraFastGPT with FFF 2x2 feedforwards (hidden 32) over the synthetic vocabulary."""
    torch.manual_seed(0)
    config = UltraFastGPTConfig.from_preset(
        "tiny-gpt-fff-2x2", vocab_size=VOCAB, max_position_embeddings=SEQ_LEN, hidden_size=32, num_hidden_layers=2
    )
    return UltraFastGPTForCausalLM(config)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--final-batch", type=int, default=8)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--causal", action="store_true", help="a causal decoder on next-token prediction")
    parser.add_argument("--checkpoint-every-minutes", type=float, default=0.0)
    parser.add_argument("--step-delay", type=float, default=0.0, help="sleep per step, to leave time for a kill")
    args = parser.parse_args()
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    config = PretrainConfig(
        micro_batch=args.micro_batch,
        final_batch=args.final_batch,
        max_steps=args.steps,
        lr=3e-3,
        checkpoint_every_minutes=args.checkpoint_every_minutes,
        keep_checkpoints=100,
    )
    trainer = Pretrainer(
        tiny_decoder() if args.causal else tiny_model(),
        synthetic_sequences(96, seed=1),
        causal_rows if args.causal else mask_quarter,
        config,
        args.output,
        context,
        validation_sequences=synthetic_sequences(32, seed=2),
        run_config={"model": "tiny"},
        objective="causal" if args.causal else "mlm",
    )
    if args.resume:
        trainer.resume()
    if args.step_delay:
        original_step = trainer.train_step

        def slow_step(progress: float, *more):
            import time

            time.sleep(args.step_delay)
            return original_step(progress, *more)

        trainer.train_step = slow_step
    trainer.run()
    if context.is_main:
        save_file(
            {k: v.contiguous() for k, v in trainer.model.state_dict().items() if k not in TIED},
            f"{args.output}/final.safetensors",
        )
    shutdown(context)


if __name__ == "__main__":
    main()
