"""Command line: ``ultrafastbert <command>``. Thin: parses arguments and calls the library."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (layer, model)")
    which = bench.add_subparsers(dest="bench", required=True)
    layer = which.add_parser("layer", help="FFF layer vs dense FF, all implementations side by side")
    layer.add_argument("--tokens", type=int, nargs="+", default=[1, 128, 16384])
    layer.add_argument("--width", type=int, default=768)
    layer.add_argument("--depth", type=int, default=11)
    layer.add_argument("--trees", type=int, default=1)
    layer.add_argument(
        "--train-tokens",
        type=int,
        nargs="*",
        default=[128, 4096],
        help="token counts for the training-step (forward + backward) timings",
    )
    layer.add_argument(
        "--threads",
        nargs="+",
        default=[],
        help="one pass per thread count, in order; 'all' = every logical core (default: torch's own setting)",
    )
    layer.add_argument("--repeats", type=int, default=None, help="timed repeats (default: adaptive)")
    layer.add_argument(
        "--no-compile", action="store_true", help="leave out the torch.compile'd gather walk (saves compile time)"
    )
    layer.add_argument("--output", default="benchmarks/results/layer", help="path prefix for .json and .png")

    def run(args: argparse.Namespace) -> int:
        from .bench.layer import LayerBenchConfig, all_threads, run_layer_benchmark

        def thread_count(value: str) -> int:
            if value == "all":
                return all_threads()
            if not value.isdigit() or int(value) < 1:
                raise SystemExit(f"ultrafastbert bench layer: --threads takes positive integers or 'all', not {value}")
            return int(value)

        config = LayerBenchConfig(
            tokens=tuple(args.tokens),
            train_tokens=tuple(args.train_tokens),
            width=args.width,
            depth=args.depth,
            trees=args.trees,
            threads=tuple(thread_count(value) for value in args.threads),
            repeats=args.repeats,
            compiled_gather=not args.no_compile,
        )
        run_layer_benchmark(config, output=args.output)
        return 0

    layer.set_defaults(handler=run)

    shapes = which.add_parser("shapes", help="FFF trees vs depth at (nearly) equal total neurons: time per token")
    shapes.add_argument("--shapes", nargs="+", default=["1x11", "2x10", "4x9", "8x8", "16x7"], help="KxD")
    shapes.add_argument("--width", type=int, default=768)
    shapes.add_argument("--tokens", type=int, default=4096)
    shapes.add_argument("--threads", type=int, default=None)
    shapes.add_argument("--output", default="benchmarks/results/layer_shapes", help="path prefix for .json")

    def run_shapes(args: argparse.Namespace) -> int:
        from .bench.layer import run_shape_benchmark

        parsed = tuple(tuple(int(part) for part in shape.split("x")) for shape in args.shapes)
        run_shape_benchmark(parsed, args.width, args.tokens, args.threads, args.output)
        return 0

    shapes.set_defaults(handler=run_shapes)

    from .bench import model as model_bench

    model = which.add_parser("model", help="whole-model forward: crammedBERT vs UltraFastBERT paths vs BERT")
    model_bench.add_arguments(model)
    model.set_defaults(handler=model_bench.run_from_args)


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser(
        "convert", help="rewrite a checkpoint folder between the original (published) and the clean format"
    )
    convert.add_argument("source", help="checkpoint folder (either format)")
    convert.add_argument("destination", help="folder to write")
    convert.add_argument("--to", choices=("clean", "original"), default="clean", help="format to write")

    def run(args: argparse.Namespace) -> int:
        from .model import convert_checkpoint

        print(convert_checkpoint(args.source, args.destination, to=args.to))
        return 0

    convert.set_defaults(handler=run)


def _add_fill_mask(subparsers: argparse._SubParsersAction) -> None:
    fill = subparsers.add_parser("fill-mask", help="top-k predictions for every <mask> in a text")
    fill.add_argument("--model", required=True, help="masked-LM checkpoint folder (with its tokenizer)")
    fill.add_argument("--top-k", type=int, default=5)
    fill.add_argument("text", help='text with one or more <mask>, e.g. "paris is the <mask> of france"')

    def run(args: argparse.Namespace) -> int:
        from .model import CrammedBertForMaskedLM
        from .model.inference import fill_mask, load_tokenizer

        model = CrammedBertForMaskedLM.from_pretrained(args.model).eval()
        predictions = fill_mask(model, load_tokenizer(args.model), args.text, top_k=args.top_k)
        for index, candidates in enumerate(predictions):
            for rank, candidate in enumerate(candidates, start=1):
                print(f"mask {index}\t{rank}\t{candidate.token}\t{candidate.probability:.4f}")
        return 0

    fill.set_defaults(handler=run)


def _add_classify(subparsers: argparse._SubParsersAction) -> None:
    classify = subparsers.add_parser(
        "classify", help="classify lines from stdin (a tab separates a sentence pair); prints label and score"
    )
    classify.add_argument("--model", required=True, help="sequence-classification checkpoint folder")
    classify.add_argument("--batch-size", type=int, default=32)

    def run(args: argparse.Namespace) -> int:
        import sys

        from .model import CrammedBertForSequenceClassification
        from .model.inference import classify as classify_texts
        from .model.inference import load_tokenizer

        model = CrammedBertForSequenceClassification.from_pretrained(args.model).eval()
        tokenizer = load_tokenizer(args.model)
        lines = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        for prediction in classify_texts(model, tokenizer, lines, batch_size=args.batch_size):
            label = "" if prediction.label is None else f"{prediction.label}\t"
            print(f"{label}{prediction.score:.4f}")
        return 0

    classify.set_defaults(handler=run)


def _add_pretrain(subparsers: argparse._SubParsersAction) -> None:
    pretrain = subparsers.add_parser(
        "pretrain",
        help="MLM pretraining with the crammed recipe (also under torchrun)",
        description="Pretrain on your text/JSONL files (--corpus) or the embedded default corpus. Stops at "
        "--max-steps or --max-minutes, whichever comes first; SIGINT/SIGTERM checkpoint and stop.",
    )
    pretrain.add_argument("--output", required=True, help="run folder: checkpoints/, metrics.jsonl, model/")
    pretrain.add_argument(
        "--preset", default="tiny-ufb-1x8", help="crammed-bert, ufb-KxD, tiny-crammed-bert[-W], tiny-ufb-KxD"
    )
    pretrain.add_argument("--corpus", nargs="*", default=[], help="text files, folders or .jsonl (default: embedded)")
    pretrain.add_argument("--tokenizer", help="folder with tokenizer.json (default: train one on the corpus)")
    pretrain.add_argument("--vocab-size", type=int, default=32768)
    pretrain.add_argument("--seq-len", type=int, default=128)
    pretrain.add_argument("--max-steps", type=int)
    pretrain.add_argument("--max-minutes", type=float)
    pretrain.add_argument("--micro-batch", type=int, default=128, help="sequences per forward pass per process")
    pretrain.add_argument("--batch", type=int, default=8192, help="final sequences per optimizer step (all processes)")
    pretrain.add_argument("--lr", type=float, default=1e-3)
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    pretrain.add_argument(
        "--train-position-scale",
        action="store_true",
        help="also train the position embeddings' scalar (fixed by default: it collapses to 0 in short runs)",
    )
    pretrain.add_argument("--checkpoint-every-minutes", type=float, default=10.0)
    pretrain.add_argument("--eval-every-steps", type=int, default=0)
    pretrain.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    pretrain.add_argument("--cache-dir", help="data cache (default: $ULTRAFASTBERT_CACHE or ~/.cache/ultrafastbert)")
    pretrain.add_argument("--device", default="auto", help="auto, cpu or cuda")

    def run(args: argparse.Namespace) -> int:
        from .train.jobs import PretrainJob, pretrain_job
        from .train.pretrain import PretrainConfig

        if args.max_steps is None and args.max_minutes is None:
            raise SystemExit("ultrafastbert pretrain: give a budget with --max-steps and/or --max-minutes")
        train = PretrainConfig(
            micro_batch=args.micro_batch,
            final_batch=args.batch,
            max_steps=args.max_steps,
            max_minutes=args.max_minutes,
            lr=args.lr,
            seed=args.seed,
            bf16=args.bf16,
            train_position_scale=args.train_position_scale,
            checkpoint_every_minutes=args.checkpoint_every_minutes,
            eval_every_steps=args.eval_every_steps,
        )
        job = PretrainJob(
            output_dir=args.output,
            preset=args.preset,
            corpus=args.corpus,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            seq_len=args.seq_len,
            cache_dir=args.cache_dir,
            resume=args.resume,
            device=args.device,
            train=train,
        )
        final = pretrain_job(job)
        if "val_loss" in final:
            print(
                f"validation MLM loss {final['val_loss']:.3f}, accuracy {final['val_accuracy']:.3f} "
                f"({final['val_accuracy_replaced']:.3f} on replaced tokens)"
            )
        return 0

    pretrain.set_defaults(handler=run)


def _add_finetune(subparsers: argparse._SubParsersAction) -> None:
    finetune = subparsers.add_parser(
        "finetune",
        help="finetune + evaluate a pretrained model on GLUE or local tasks (median of seeds)",
        description="Tasks: the local ones (wn-pos, wn-supersense, wn-sense-match, fortune-topic) or GLUE's (cola, "
        "sst2, mrpc, stsb, qqp, mnli, qnli, rte) from --glue-dir in GLUE's TSV layout.",
    )
    finetune.add_argument("--model", required=True, help="pretrained model folder (with tokenizer)")
    finetune.add_argument("--tasks", nargs="+", required=True)
    finetune.add_argument("--glue-dir", help="folder holding GLUE task folders (CoLA/, SST-2/, ...)")
    finetune.add_argument("--output", default="results/finetune", help="path prefix for .json and .md")
    finetune.add_argument("--lr", type=float, default=4e-5)
    finetune.add_argument("--batch-size", type=int, default=16)
    finetune.add_argument("--epochs", type=float, default=5.0)
    finetune.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    finetune.add_argument("--max-train-examples", type=int)
    finetune.add_argument("--max-eval-examples", type=int)
    finetune.add_argument("--cache-dir")

    def run(args: argparse.Namespace) -> int:
        from .train.finetune import FinetuneConfig
        from .train.jobs import finetune_job

        config = FinetuneConfig(
            lr=args.lr,
            batch_size=args.batch_size,
            epochs=args.epochs,
            seeds=tuple(args.seeds),
            max_train_examples=args.max_train_examples,
            max_eval_examples=args.max_eval_examples,
        )
        finetune_job(args.model, args.tasks, args.output, config, args.glue_dir, args.cache_dir)
        return 0

    finetune.set_defaults(handler=run)


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser("evaluate", help="MLM validation loss/accuracy of a pretrained model")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--corpus", nargs="*", default=[], help="text files (default: embedded corpus)")
    evaluate.add_argument("--seq-len", type=int, default=128)
    evaluate.add_argument("--max-sequences", type=int, default=512)
    evaluate.add_argument("--cache-dir")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from .cache import cache_root
        from .train.jobs import PretrainJob, load_corpus_for, mlm_validation

        cache = Path(args.cache_dir) if args.cache_dir else cache_root()
        corpus = load_corpus_for(PretrainJob(output_dir="", corpus=args.corpus), cache)
        metrics = mlm_validation(args.model, corpus, args.seq_len, cache, args.max_sequences)
        print(
            f"validation MLM loss {metrics['val_loss']:.4f}, accuracy {metrics['val_accuracy']:.4f} "
            f"({metrics['val_accuracy_replaced']:.4f} on replaced tokens) over {metrics['val_masked_tokens']} "
            "masked tokens"
        )
        return 0

    evaluate.set_defaults(handler=run)


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="the main job: dense vs FFF model pretrained, finetuned and timed on the embedded real data",
        description="Pretrains a small crammedBERT and a small UltraFastBERT with the same recipe and time, "
        "finetunes both on the local tasks (several seeds), times layers and models, and writes a report.",
    )
    demo.add_argument("--budget-minutes", type=float, default=10.0, help="wall-clock budget of the whole job")
    demo.add_argument("--output", default="results/demo")
    demo.add_argument("--cache-dir")

    def run(args: argparse.Namespace) -> int:
        from .demo import DemoConfig, run_demo

        run_demo(DemoConfig(budget_minutes=args.budget_minutes, output_dir=args.output, cache_dir=args.cache_dir))
        return 0

    demo.set_defaults(handler=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ultrafastbert",
        description="UltraFastBERT: fast feedforward (FFF) layers and the crammedBERT models built from them.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_bench(subparsers)
    _add_convert(subparsers)
    _add_fill_mask(subparsers)
    _add_classify(subparsers)
    _add_pretrain(subparsers)
    _add_finetune(subparsers)
    _add_evaluate(subparsers)
    _add_demo(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
