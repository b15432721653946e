"""Benchmark of record for whole models: ``python benchmarks/model.py [--batches 1 8] [--threads N] ...``.

crammedBERT dense, UltraFastBERT with the masking reference and with the default path, and transformers' BERT,
side by side; writes ``benchmarks/results/model.{json,png}`` by default.
"""

import sys

from ultrafastbert.bench.model import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
