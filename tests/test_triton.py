"""The Triton kernels (``ultrafastbert/fff/triton_kernels.py``): against the reference under Triton's interpreter on
CPU (``scripts/triton_check.py`` in a fresh process), compiled on a GPU where there is one, and how the package
offers them: registered for CUDA only, chosen by ``impl="auto"`` on CUDA only, never imported with the package."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ultrafastbert import FFF
from ultrafastbert.cli import main
from ultrafastbert.fff import IMPLEMENTATIONS, ops

SCRIPT = Path(__file__).parent / "scripts" / "triton_check.py"
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not TRITON_INSTALLED, reason="Triton is not installed (requirements.txt pins it)")
needs_cuda = pytest.mark.gpu  # skipped without a CUDA GPU (tests/conftest.py)

# Every case the script runs on both devices; a case that stops being run fails here rather than passing silently.
CASES = (
    "one token",
    "odd shapes, three trees",
    "depth 0, two trees",
    "depth 7",
    "depth 15, width 3",
    "offsets: one token",
    "offsets: odd shapes, three trees",
    "offsets: depth 0, two trees",
    "offsets: depth 7",
    "offsets: bfloat16 tensors",
    "zero logit goes left",
    "NaN goes left",
    "bfloat16 values in float32",
    "bfloat16 tensors",
    "tf32 dot",
    "layer impl=triton",
    "opcheck",
    "refusals",
)
GPU_CASES = ("1x11 width 768 float32", "1x11 width 768 bfloat16")


def run_check(device: str, output: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}  # the script sets it
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), str(output), "--device", device],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-6000:]
    return json.loads(output.read_text())


@pytest.fixture(scope="module")
def interpreter_report(tmp_path_factory) -> dict:
    return run_check("cpu", tmp_path_factory.mktemp("triton") / "interpreter.json")


@pytest.fixture(scope="module")
def gpu_report(tmp_path_factory) -> dict:
    return run_check("cuda", tmp_path_factory.mktemp("triton") / "gpu.json")


def assert_case(report: dict, name: str) -> None:
    case = report["cases"][name]
    failed = [check for check, passed in case["exact"].items() if not passed]
    assert not failed, f"{name}: {failed}"
    for quantity, result in case["errors"].items():
        assert result["error"] <= result["tolerance"], f"{name}: {quantity} {result}"


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("name", CASES)
def test_kernels_match_reference_under_interpreter(interpreter_report, name):
    assert interpreter_report["device"] == "cpu (Triton interpreter)"
    assert_case(interpreter_report, name)


@pytest.mark.slow
@needs_triton
@needs_cuda
@pytest.mark.parametrize("name", CASES + GPU_CASES)
def test_kernels_match_reference_on_gpu(gpu_report, name):
    assert_case(gpu_report, name)


def test_triton_is_an_impl_registered_for_cuda_only_where_torch_has_cuda():
    assert "triton" in IMPLEMENTATIONS
    assert ("cuda" in ops.TRITON_DEVICES) == (torch.backends.cuda.is_built() and TRITON_INSTALLED)
    assert "cpu" not in ops.TRITON_DEVICES  # only the interpreter check registers it, in its own process


def test_auto_never_picks_triton_on_cpu_and_explicit_triton_says_why():
    layer = FFF(12, 3, 2)
    x = torch.randn(5, 12)
    assert layer.resolve_impl(x) in ("kernel", "sparse")
    with torch.no_grad():
        assert layer.resolve_impl(x) in ("kernel", "walk")
    layer.impl = "triton"
    with pytest.raises(RuntimeError, match="impl='triton' needs a float32/bfloat16 input on a device with the Triton"):
        layer(x)


@pytest.mark.slow
def test_the_package_imports_neither_triton_nor_its_kernels_on_cpu():
    """``import ultrafastbert`` imports no Triton, and running a layer on CPU never loads the Triton kernels.
    (Triton itself does get imported once the layer is, by ``torch._dynamo``, which imports an installed Triton.)"""
    code = (
        "import sys\n"
        "import ultrafastbert\n"
        "print('triton' in sys.modules)\n"
        "import torch\n"
        "layer = ultrafastbert.FFF(8, 2)\n"
        "layer(torch.randn(3, 8)).sum().backward()\n"
        "print('ultrafastbert.fff.triton_kernels' in sys.modules)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.split() == ["False", "False"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("benchmark", ["layer", "model"])
def test_benchmarks_refuse_cuda_without_a_gpu_in_one_line(benchmark, tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["bench", benchmark, "--device", "cuda", "--output", str(tmp_path / benchmark)])
    message = str(refused.value)
    assert message.startswith("ultrafastbert bench: error: --device cuda: CUDA is not available"), message
    assert "\n" not in message
    assert not list(tmp_path.iterdir())  # refused before any work
