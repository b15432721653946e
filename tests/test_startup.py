"""Start-up: the command line answers ``--help`` and ``--version`` without importing torch or transformers, and
``import ultrafastbert`` still makes the transformers Auto classes resolve ``model_type = "crammedBERT"``, whichever
of the two is imported first. Each check runs in a fresh interpreter, since what it imports is what is checked.
The times themselves are measured by ``benchmarks/startup.py``, not here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ultrafastbert.cli import COMMANDS

pytestmark = pytest.mark.slow  # fresh Python processes

HEAVY = ("torch", "transformers")

# argv: the words after ``ultrafastbert``; the check fails if building the parser imported a HEAVY module
HELP_CHECK = f"""
import sys
from ultrafastbert.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    assert exit.code in (0, None), f"exit code {{exit.code}}"
heavy = [name for name in {HEAVY!r} if name in sys.modules]
assert not heavy, f"ultrafastbert {{' '.join(sys.argv[1:])}} imported {{heavy}}"
"""

# The commands whose flags still come from a module that imports torch (train/finetune.py's FinetuneConfig).
def run_python(source: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *argv], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        *([name, "--help"] for name in COMMANDS),
        ["bench", "layer", "--help"],
        ["bench", "model", "--help"],
    ],
    ids=" ".join,
)
def test_help_imports_neither_torch_nor_transformers(argv: list[str]) -> None:
    result = run_python(HELP_CHECK, *argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ultrafastbert")


def test_version_is_the_installed_package_version() -> None:
    from importlib.metadata import version

    result = run_python(HELP_CHECK, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ultrafastbert", version("ultrafastbert")]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    from ultrafastbert import CrammedBertConfig, CrammedBertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-ufb")
    sizes = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CrammedBertConfig.from_preset("tiny-ufb-1x2", vocab_size=32, max_position_embeddings=16, **sizes)
    CrammedBertForMaskedLM(config).save_pretrained(folder)
    return folder


# Loads the saved folder through the Auto classes; the first lines (``order``) import ultrafastbert and
# transformers in the order under test.
AUTO_CHECK = """
import sys
{order}
from transformers import AutoConfig, AutoModelForMaskedLM
config = AutoConfig.from_pretrained(sys.argv[1])
model = AutoModelForMaskedLM.from_pretrained(sys.argv[1])
assert type(config).__name__ == "CrammedBertConfig", type(config)
assert type(model).__name__ == "CrammedBertForMaskedLM", type(model)
"""

ORDERS = {
    # the package first: nothing heavy yet, the registration waits for transformers' Auto classes
    "package first": "import ultrafastbert\nassert not [name for name in {heavy!r} if name in sys.modules]",
    # transformers' Auto classes loaded while modeling_utils is still executing: registration must wait for it
    "then PreTrainedModel": "import ultrafastbert\nfrom transformers import PreTrainedModel",
    # the Auto classes loaded already: the package registers on import
    "transformers first": "from transformers import AutoConfig\nimport ultrafastbert",
}


@pytest.mark.parametrize("order", ORDERS)
def test_import_ultrafastbert_registers_the_auto_classes(order: str, saved_model: Path) -> None:
    source = AUTO_CHECK.format(order=ORDERS[order].format(heavy=HEAVY))
    result = run_python(source, str(saved_model))
    assert result.returncode == 0, result.stderr
