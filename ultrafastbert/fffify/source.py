"""The BERT a conversion starts from: what it must be (checked from ``config.json`` before anything loads), and
the converted model built around its weights."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..fff import nodes_per_tree
from ..fff.layer import MAX_DEPTH
from ..model.loading import check_finite_weights
from .config import DEFAULT_SEQ_LEN, MAX_NODES_PER_DENSE_NEURON, FffifyConfig
from .grouped import GroupedShape, grouped_shape

SUPPORTED_MODEL_TYPES = ("bert",)
# architecture in config.json -> the FFF-BERT class the converted model gets (same head, same parameter names)
SUPPORTED_ARCHITECTURES = {
    "BertModel": "FFFBertModel",
    "BertForMaskedLM": "FFFBertForMaskedLM",
    "BertForSequenceClassification": "FFFBertForSequenceClassification",
}
# FFF neurons are GELU; the converter is built and tested for GELU feedforwards (exact or tanh-approximated)
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_python")
# per layer, the dense feedforward's parameters (replaced) under BERT's names (not the attention's output.dense)
FF_PARAMETER = re.compile(r"(^|\.)layer\.\d+\.(intermediate|output)\.dense\.(weight|bias)$")


class ConversionError(ValueError):
    """A model folder, tree shape or output the converter cannot work with; the message names the problem."""


def check_source(model_dir: str | Path, config: FffifyConfig) -> dict[str, Any]:
    """The source's ``config.json`` when it is a BERT this converter supports and the tree shape fits it;
    ``ConversionError`` naming the problem otherwise. Reads one small file: nothing is loaded yet."""
    folder = Path(model_dir)
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder} holds no config.json: not a saved model folder")
    try:
        source = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from None
    model_type = source.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConversionError(
            f"{folder} is a {model_type!r} model, not a BERT-family model this converter supports "
            f"(model_type {' or '.join(SUPPORTED_MODEL_TYPES)})"
        )
    architectures = source.get("architectures") or ["BertModel"]
    if len(architectures) != 1 or architectures[0] not in SUPPORTED_ARCHITECTURES:
        raise ConversionError(
            f"{folder} has architecture {architectures}; the converter supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    activation = source.get("hidden_act", "gelu")
    if activation not in SUPPORTED_ACTIVATIONS:
        raise ConversionError(
            f"{folder} has hidden_act={activation!r}; the converter supports GELU feedforwards "
            f"({', '.join(SUPPORTED_ACTIVATIONS)}), the activation of the FFF's neurons"
        )
    if source.get("is_decoder") or source.get("add_cross_attention"):
        raise ConversionError(f"{folder} is a decoder layout (is_decoder / add_cross_attention); only encoders convert")
    width = source.get("intermediate_size")
    if not isinstance(width, int) or width < 1:
        raise ConversionError(f"{folder} config.json has no valid intermediate_size (got {width!r})")
    if config.method == "grouped":
        conversion_shape(source, config)
        return source
    nodes = config.trees * nodes_per_tree(config.depth) if config.depth <= MAX_DEPTH else None
    if nodes is None or nodes > MAX_NODES_PER_DENSE_NEURON * width:
        deepest = max(
            (d for d in range(MAX_DEPTH + 1) if config.trees * nodes_per_tree(d) <= MAX_NODES_PER_DENSE_NEURON * width),
            default=None,
        )
        hint = f"depth <= {deepest}" if deepest is not None else "fewer trees"
        raise ConversionError(
            f"{config.trees} tree(s) of depth {config.depth} hold "
            f"{'over a million' if nodes is None else f'{nodes:,}'} neurons per layer, more than "
            f"{MAX_NODES_PER_DENSE_NEURON}x the {width} of the dense feedforward they replace; choose {hint} "
            f"for {config.trees} tree(s)"
        )
    return source


def conversion_shape(source: dict[str, Any], config: FffifyConfig) -> GroupedShape:
    """The grouped split of the source's feedforward (``grouped_shape``); ``ConversionError`` when there is none."""
    try:
        return grouped_shape(source["intermediate_size"], config.depth, config.active_fraction)
    except ValueError as error:
        raise ConversionError(str(error)) from None


def sequence_length(source: dict[str, Any], config: FffifyConfig) -> int:
    """Tokens per text: ``--seq-len``, or ``DEFAULT_SEQ_LEN`` capped at the source's ``max_position_embeddings``;
    ``ConversionError`` when ``--seq-len`` exceeds what the model accepts."""
    limit = source.get("max_position_embeddings", 512)
    if config.seq_len is None:
        return min(DEFAULT_SEQ_LEN, limit)
    if config.seq_len > limit:
        raise ConversionError(
            f"--seq-len {config.seq_len} exceeds the model's max_position_embeddings={limit} (the longest sequence "
            "it accepts)"
        )
    return config.seq_len


def load_source(model_dir: str | Path, source: dict[str, Any]) -> nn.Module:
    """The dense BERT of ``model_dir`` (the class its ``config.json`` names), in eval mode; ``ConversionError``
    when its weights do not cover the encoder, ``CheckpointError`` naming the tensors that hold NaN or infinity."""
    import transformers
    from safetensors import SafetensorError

    cls = getattr(transformers, (source.get("architectures") or ["BertModel"])[0])
    try:
        model, info = cls.from_pretrained(str(model_dir), output_loading_info=True)
    except SafetensorError as error:  # a truncated or garbled file: name the folder, not the parser
        raise ConversionError(f"{model_dir} has a corrupt weights file: {error}") from None
    missing = [key for key in info["missing_keys"] if "encoder." in key or "embeddings." in key]
    if missing or info.get("mismatched_keys"):
        raise ConversionError(
            f"{model_dir}'s weights do not fit its config.json: missing {missing[:5]}, mis-shaped "
            f"{[key for key, *_ in info.get('mismatched_keys', [])][:5]}"
        )
    check_finite_weights(model, model_dir)  # a NaN in the source would spread to every distilled tree
    return model.eval()


def converted_skeleton(dense: nn.Module, source: dict[str, Any], config: FffifyConfig) -> nn.Module:
    """The FFF-BERT of the same head as ``dense``, holding every one of its weights outside the feedforwards (copied
    exactly) and each layer's output bias; the FFF weights are left at their default initialisation."""
    from ..model import fffbert

    kept = {
        name: value
        for name, value in source.items()
        if name not in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")
    }
    kept.update(dtype="float32", fff_depth=config.depth, fff_trees=config.trees)
    if config.method == "grouped":
        shape = conversion_shape(source, config)
        kept.update(fff_layer="grouped", fff_leaf_width=shape.leaf_width, fff_shared_width=shape.shared_width)
    fff_config = fffbert.FFFBertConfig(**kept)
    cls = getattr(fffbert, SUPPORTED_ARCHITECTURES[(source.get("architectures") or ["BertModel"])[0]])
    model = cls(fff_config)
    state = {name: value for name, value in dense.state_dict().items() if not FF_PARAMETER.search(name)}
    for name, value in dense.state_dict().items():
        if FF_PARAMETER.search(name) and name.endswith("output.dense.bias"):
            state[name.removesuffix("output.dense.bias") + "output.bias"] = value
    result = model.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if ".intermediate.fff." not in key]
    if missing or result.unexpected_keys:
        raise ConversionError(
            f"the converted model does not take the source's weights: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}"
        )
    with torch.no_grad():  # tied parameters (the MLM decoder) follow the copied embedding
        model.tie_weights()
    return model.eval()


def ff_modules(model: nn.Module) -> list[nn.Module]:
    """The ``BertLayer`` modules of ``model``, in order (each has ``intermediate`` and ``output``)."""
    from transformers.models.bert.modeling_bert import BertLayer

    return [module for module in model.modules() if isinstance(module, BertLayer)]
