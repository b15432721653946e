# Written by save_pretrained from ultrafastbert/model/loading.py: edit the package, not this copy.
"""Checks that keep loading strict, run by ``CrammedBertPreTrainedModel.from_pretrained`` (and, for FFF-BERT,
``FFFBertPreTrainedModel.from_pretrained``).

``transformers`` logs missing and unexpected keys and carries on; these checks raise ``CheckpointError`` naming
them instead (a deliberate departure: a checkpoint that silently loads half its weights is worse than an error).
Weights that are not finite (NaN or infinity: a corrupted file, or a run saved after it diverged) are refused
the same way, naming the tensors, rather than turning every prediction into NaN.
Both checkpoint formats (the published one and the clean one, see ``convert.py``) use the same parameter names,
so one set of checks serves both.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import PreTrainedModel

WORD_EMBEDDING = "encoder.embedding.word_embedding.weight"
DECODER = "decoder.weight"
POOLER_WEIGHT = "pooler.dense.weight"
HEAD_WEIGHT = "head.weight"
# Parameters of the task heads; a checkpoint of one task loads into another (e.g. masked-LM -> classifier).
HEAD_KEYS = frozenset(
    {DECODER, POOLER_WEIGHT, "pooler.dense.bias", HEAD_WEIGHT, "head.bias", "qa_outputs.weight", "qa_outputs.bias"}
)
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model it is loaded into, or is inconsistent in itself."""


def check_loading_info(
    model: PreTrainedModel,
    info: dict[str, Any],
    source: Any,
    ignore_mismatched_sizes: bool,
    is_head: Callable[[str], bool] = HEAD_KEYS.__contains__,
) -> None:
    """Raise ``CheckpointError`` for what ``from_pretrained`` only warns about.

    Allowed: missing head parameters (a fresh head, e.g. a classifier started from a masked-LM checkpoint) and
    unexpected parameters of another head of the family (the masked-LM decoder when loading a classifier);
    ``is_head`` tells head parameters by name (default: crammedBERT's ``HEAD_KEYS``). Refused:
    missing encoder parameters, any other unexpected parameter, and mis-shaped parameters (unless
    ``ignore_mismatched_sizes``, which re-initialises them).
    """
    missing = sorted(key for key in info["missing_keys"] if not is_head(key))
    unexpected = sorted(key for key in info["unexpected_keys"] if not is_head(key))
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


def check_finite_weights(model: torch.nn.Module, source: Any) -> None:
    """Raise ``CheckpointError`` naming every parameter or buffer of the loaded ``model`` that holds a NaN or an
    infinity (the file's bytes are damaged, or it was saved from a diverged run)."""
    bad = []
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            bad.append(f"{name} ({count} of {tensor.numel()} values)")
    if bad:
        raise CheckpointError(
            f"checkpoint {source} holds non-finite weights (NaN or infinity) in {', '.join(bad)}; the file is "
            "damaged or was saved from a diverged run"
        )


def check_tied_decoder_copy(source: Any) -> None:
    """An original masked-LM file stores ``decoder.weight`` besides the word embedding; our model ties the two, so
    they must be equal (otherwise one would silently replace the other). Checked for local folders only."""
    files = safetensors_files(source)
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


def checkpoint_keys(source: Any) -> set[str]:
    """The tensor names stored in a local checkpoint folder's safetensors file(s); empty for anything else."""
    return {key for path in safetensors_files(source) for key in _keys(path)}


def safetensors_files(source: Any) -> list[Path]:
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
