"""Benchmark of record for the FFF layer: ``python benchmarks/layer.py [--tokens ...] [--threads 2 all]``.

Same as ``ultrafastbert bench layer``; writes ``benchmarks/results/layer.{json,png}`` by default.
"""

import sys

from ultrafastbert.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "layer", *sys.argv[1:]]))
