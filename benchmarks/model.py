"""Benchmark of record for whole models: ``python benchmarks/model.py [--batches 1 8] [--threads N] ...``.

Same as ``ultrafastbert bench model``: crammedBERT dense, UltraFastBERT with the masking reference and with the
default path, and transformers' BERT, side by side; writes ``benchmarks/results/model.{json,png}`` by default.
``--device cuda`` runs them on a GPU (``benchmarks/gpu.sh``; ``docs/gpu.md``).
"""

import sys

from ultrafastbert.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "model", *sys.argv[1:]]))
