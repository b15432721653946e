#!/usr/bin/env bash
# The GPU runs of record in one go, on a machine with a CUDA GPU: `bash benchmarks/gpu.sh [OUTPUT_FOLDER]`.
#
# 1. the Triton kernels' correctness checks, compiled on this GPU (the interpreter tests' cases, plus the published
#    1x11 layer at width 768 in float32 and bfloat16) -> triton_check.json; nothing is timed if they fail;
# 2. the layer benchmark (the same loop as on CPU, one pass per dtype): dense FF-3072 (cuBLAS, torch.compile) and the
#    equal-FLOPs dense FF-12 vs the FFF-1x11 paths, 1 to 16384 tokens, forward and forward + backward, float32 and
#    bfloat16 -> layer.{json,png,log};
# 3. the whole-model benchmark -> model.{json,png,log}.
# Each step has its own time limit (about 10 minutes in all on an H100-class GPU is expected, not yet measured).
# Output goes to benchmarks/results/gpu/ by default. docs/gpu.md describes the run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT=${1:-benchmarks/results/gpu}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUTPUT"

"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; print(torch.cuda.get_device_name())"
timeout 300 "$PYTHON" tests/scripts/triton_check.py "$OUTPUT/triton_check.json" --device cuda
"$PYTHON" - "$OUTPUT/triton_check.json" <<'CHECK'
import json, sys
report = json.load(open(sys.argv[1]))
failed = [
    f"{name}: {check}"
    for name, case in report["cases"].items()
    for check, result in [*case["exact"].items(), *((q, r["error"] <= r["tolerance"]) for q, r in case["errors"].items())]
    if not result
]
print(f"triton_check on {report['device']}: {len(report['cases'])} cases, {len(failed)} failed", *failed, sep="\n  ")
sys.exit(1 if failed else 0)
CHECK

timeout 900 "$PYTHON" benchmarks/layer.py --device cuda --dtypes float32 bfloat16 \
    --tokens 1 128 4096 16384 --train-tokens 1 128 4096 16384 --output "$OUTPUT/layer" 2>&1 | tee "$OUTPUT/layer.log"
timeout 600 "$PYTHON" benchmarks/model.py --device cuda --batches 1 8 32 --output "$OUTPUT/model" 2>&1 \
    | tee "$OUTPUT/model.log"
