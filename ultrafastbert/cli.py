"""Command line: ``ultrafastbert <command>``. Thin: parses arguments and calls the library."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks (layer)")
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
    layer.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    layer.add_argument("--repeats", type=int, default=None, help="timed repeats (default: adaptive)")
    layer.add_argument("--output", default="benchmarks/results/layer", help="path prefix for .json and .png")

    def run(args: argparse.Namespace) -> int:
        from .bench.layer import LayerBenchConfig, run_layer_benchmark

        config = LayerBenchConfig(
            tokens=tuple(args.tokens),
            train_tokens=tuple(args.train_tokens),
            width=args.width,
            depth=args.depth,
            trees=args.trees,
            threads=args.threads,
            repeats=args.repeats,
        )
        run_layer_benchmark(config, output=args.output)
        return 0

    layer.set_defaults(handler=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ultrafastbert",
        description="UltraFastBERT: fast feedforward (FFF) layers and the crammedBERT models built from them.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_bench(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
