"""Benchmark of record for the FFF layer: ``python benchmarks/layer.py [--tokens ...] [--threads 2 all]``.

Same as ``ultrafastbert bench layer``; writes ``benchmarks/results/layer.{json,png}`` by default. With
``--device cuda [--dtypes float32 bfloat16]``: dense FF (cuBLAS, torch.compile) against the FFF Triton kernels on
a GPU (``benchmarks/gpu.sh`` runs it as of record; ``docs/gpu.md``).
"""

import sys

from ultrafastbert.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", "layer", *sys.argv[1:]]))
