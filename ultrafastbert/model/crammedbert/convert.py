"""Checkpoint formats: the original (published) one and the clean one, and conversion between them.

Both formats use the same parameter names (our modules are named like the original ones). They differ in:

- ``config.json``: original = ``{"arch": {nested architecture}, "architectures": ["ScriptableLM..."], ...}``;
  clean = the flat ``CrammedBertConfig`` fields plus ``auto_map``.
- ``model.safetensors``: the original masked-LM file also stores ``decoder.weight``, a copy of the tied word
  embedding; the clean file stores the tied tensor once (as ``transformers`` does).

Loading either needs no conversion (``from_pretrained`` reads both); ``convert_checkpoint`` rewrites a folder
from one format into the other (``ultrafastbert convert``). This module builds on ``modeling`` (never the reverse).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

import transformers
from safetensors.torch import save_file
from transformers import PreTrainedModel

from ..loading import (
    HEAD_WEIGHT,
    POOLER_WEIGHT,
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
    CheckpointError,
    checkpoint_keys,
)
from .configuration import MODEL_TYPE, ORIGINAL_CLASS_NAMES, CrammedBertConfig
from .modeling import (
    CrammedBertForMaskedLM,
    CrammedBertForQuestionAnswering,
    CrammedBertForSequenceClassification,
    CrammedBertForTokenClassification,
    CrammedBertModel,
)
from .tokenizer import TOKENIZER_FILE

TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json")


def read_config_json(folder: str | Path) -> dict[str, Any]:
    """The raw ``config.json`` of a checkpoint folder."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json; is it a checkpoint folder?")
    config = json.loads(path.read_text())
    if config.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{path} has model_type={config.get('model_type')!r}, expected {MODEL_TYPE!r}")
    return config


def checkpoint_format(folder: str | Path) -> Literal["original", "clean"]:
    """``"original"`` when ``config.json`` nests the architecture under ``"arch"``, else ``"clean"``."""
    return "original" if "arch" in read_config_json(folder) else "clean"


def model_class_for(folder: str | Path) -> type[PreTrainedModel]:
    """Which model a folder holds, from its parameter names: classifier heads, masked-LM, or the bare encoder."""
    keys = checkpoint_keys(folder)
    if not keys:
        raise CheckpointError(f"{folder} has no {SAFETENSORS_FILE} (or {SAFETENSORS_INDEX})")
    if POOLER_WEIGHT in keys:
        return CrammedBertForSequenceClassification
    if HEAD_WEIGHT in keys:
        return CrammedBertForTokenClassification
    if "qa_outputs.weight" in keys:
        return CrammedBertForQuestionAnswering
    if any(key.startswith("encoder.") for key in keys):
        return CrammedBertForMaskedLM
    return CrammedBertModel


def convert_checkpoint(source: str | Path, destination: str | Path, to: Literal["clean", "original"] = "clean") -> Path:
    """Rewrite the checkpoint folder ``source`` (either format) into ``destination`` in the format ``to``.

    The weights pass through the model (so they are checked like any load); tokenizer files are copied as they are.
    """
    source, destination = Path(source), Path(destination)
    if source.resolve() == destination.resolve():
        raise CheckpointError("convert needs a destination folder other than the source")
    model = model_class_for(source).from_pretrained(source)
    destination.mkdir(parents=True, exist_ok=True)
    if to == "clean":
        model.save_pretrained(destination)
    elif to == "original":
        save_original(model, destination)
    else:
        raise ValueError(f"unknown checkpoint format {to!r}; use 'clean' or 'original'")
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, destination / name)
    return destination


def save_original(model: PreTrainedModel, folder: str | Path) -> None:
    """Write ``model`` in the published format: nested ``arch`` config and a state dict with the tied copy."""
    config: CrammedBertConfig = model.config
    class_name = type(model).__name__
    if class_name not in ORIGINAL_CLASS_NAMES:
        raise CheckpointError(
            f"the published format has no class for {class_name}; keep this model in the clean format "
            f"(it has {', '.join(sorted(ORIGINAL_CLASS_NAMES))})"
        )
    arch = config.to_arch()
    is_classifier = class_name in ("CrammedBertForSequenceClassification", "CrammedBertForTokenClassification")
    if not is_classifier:
        arch["num_labels"] = None
    config_json: dict[str, Any] = {
        "arch": arch,
        "architectures": [ORIGINAL_CLASS_NAMES[class_name]],
        "model_type": MODEL_TYPE,
        "torch_dtype": str(model.dtype).removeprefix("torch."),
        "transformers_version": transformers.__version__,
    }
    if is_classifier:
        config_json["id2label"] = {str(index): label for index, label in config.id2label.items()}
        config_json["label2id"] = dict(config.label2id)
    # Clones: the tied decoder is written as its own copy, as the original export does.
    state_dict = {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n")
    save_file(state_dict, folder / SAFETENSORS_FILE, metadata={"format": "pt"})
