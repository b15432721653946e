"""Checkpoint formats: the original (published) one and the clean one, and the checks that keep loading strict.

Both formats use the same parameter names (our modules are named like the original ones). They differ in:

- ``config.json``: original = ``{"arch": {nested architecture}, "architectures": ["ScriptableLM..."], ...}``;
  clean = the flat ``CrammedBertConfig`` fields plus ``auto_map``.
- ``model.safetensors``: the original masked-LM file also stores ``decoder.weight``, a copy of the tied word
  embedding; the clean file stores the tied tensor once (as ``transformers`` does).

Loading either needs no conversion (``from_pretrained`` reads both); ``convert_checkpoint`` rewrites a folder
from one format into the other (``ultrafastbert convert``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel

from .configuration import MODEL_TYPE, ORIGINAL_CLASS_NAMES, CrammedBertConfig

WORD_EMBEDDING = "encoder.embedding.word_embedding.weight"
DECODER = "decoder.weight"
# Parameters of the task heads; a checkpoint of one task loads into another (e.g. masked-LM -> classifier).
HEAD_KEYS = frozenset({DECODER, "pooler.dense.weight", "pooler.dense.bias", "head.weight", "head.bias"})
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model it is loaded into, or is inconsistent in itself."""


def check_loading_info(
    model: PreTrainedModel, info: dict[str, Any], source: Any, ignore_mismatched_sizes: bool
) -> None:
    """Raise ``CheckpointError`` for what ``from_pretrained`` only warns about.

    Allowed: missing head parameters (a fresh head, e.g. a classifier started from a masked-LM checkpoint) and
    unexpected parameters of another crammedBERT head (the masked-LM decoder when loading a classifier). Refused:
    missing encoder parameters, any other unexpected parameter, and mis-shaped parameters (unless
    ``ignore_mismatched_sizes``, which re-initialises them).
    """
    missing = sorted(key for key in info["missing_keys"] if key not in HEAD_KEYS)
    unexpected = sorted(key for key in info["unexpected_keys"] if key not in HEAD_KEYS)
    mismatched = [] if ignore_mismatched_sizes else sorted(info["mismatched_keys"])
    if not (missing or unexpected or mismatched):
        return
    config = model.config
    lines = [
        f"checkpoint {source} does not fit {type(model).__name__} ({config.name}, hidden {config.hidden_size}, "
        f"{config.num_hidden_layers} layers, vocab {config.vocab_size}):"
    ]
    if missing:
        lines.append(f"  missing ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): {', '.join(unexpected)}")
    if mismatched:
        shapes = [f"{key} (checkpoint {tuple(saved)}, model {tuple(ours)})" for key, saved, ours in mismatched]
        lines.append(f"  mis-shaped ({len(mismatched)}): {', '.join(shapes)}")
    if any(key.endswith("head.weight") for key, _, _ in mismatched):
        lines.append(
            "  the classifier head has another number of labels: pass num_labels=<the checkpoint's> to "
            "from_pretrained, or ignore_mismatched_sizes=True to start a fresh head"
        )
    if any(".ffn." in key for key in missing + unexpected):
        lines.append("  the feedforward weights do not match the config's ffn_type / fff_trees / fff_depth")
    raise CheckpointError("\n".join(lines))


def check_tied_decoder_copy(source: Any) -> None:
    """An original masked-LM file stores ``decoder.weight`` besides the word embedding; our model ties the two, so
    they must be equal (otherwise one would silently replace the other). Checked for local folders only."""
    files = _safetensors_files(source)
    if not files:
        return
    locations = {key: path for path in files for key in _keys(path) if key in (WORD_EMBEDDING, DECODER)}
    if DECODER in locations and WORD_EMBEDDING not in locations:
        raise CheckpointError(
            f"checkpoint {source} has {DECODER} but no {WORD_EMBEDDING}; both are needed (they are tied)"
        )
    if DECODER in locations:
        embedding, decoder = (_tensor(locations[key], key) for key in (WORD_EMBEDDING, DECODER))
        if embedding.shape != decoder.shape or not torch.equal(embedding, decoder):
            detail = (
                f"shapes {tuple(embedding.shape)} and {tuple(decoder.shape)}"
                if embedding.shape != decoder.shape
                else f"max abs difference {(embedding - decoder).abs().max().item():.3g}"
            )
            raise CheckpointError(
                f"checkpoint {source}: {DECODER} differs from {WORD_EMBEDDING} ({detail}); the model ties them, "
                "so the checkpoint is inconsistent"
            )


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
    from .modeling import (
        CrammedBertForMaskedLM,
        CrammedBertForSequenceClassification,
        CrammedBertForTokenClassification,
        CrammedBertModel,
    )

    files = _safetensors_files(folder)
    if not files:
        raise CheckpointError(f"{folder} has no {SAFETENSORS_FILE} (or {SAFETENSORS_INDEX})")
    keys = {key for path in files for key in _keys(path)}
    if "pooler.dense.weight" in keys:
        return CrammedBertForSequenceClassification
    if "head.weight" in keys:
        return CrammedBertForTokenClassification
    if any(key.startswith("encoder.") for key in keys):
        return CrammedBertForMaskedLM
    return CrammedBertModel


def convert_checkpoint(
    source: str | Path, destination: str | Path, to: Literal["clean", "original"] = "clean"
) -> Path:
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


def _safetensors_files(source: Any) -> list[Path]:
    folder = Path(str(source))
    if not folder.is_dir():
        return []
    if (folder / SAFETENSORS_FILE).is_file():
        return [folder / SAFETENSORS_FILE]
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        return sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    return []


def _keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def _tensor(path: Path, key: str) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(key)
