"""FFF-BERT: a transformers BERT whose feedforward layers are fast feedforward trees (``ultrafastbert fffify``).

The model classes are ``transformers``' own BERT classes (``BertModel``, ``BertForMaskedLM``,
``BertForSequenceClassification``, ``BertForTokenClassification``, ``BertForQuestionAnswering``) with one change,
made in ``post_init``: each layer's feedforward (``intermediate.dense``, the activation, ``output.dense``) becomes an
FFF of ``fff_trees`` trees of depth ``fff_depth`` plus the dense layer's output bias. Attention, embeddings, layer norms
and heads are BERT's, under BERT's parameter names, so a converted model keeps every non-feedforward weight of the
BERT it came from, bit for bit, and the original tokenizer. Per layer ``N`` the new parameters are
``encoder.layer.N.intermediate.fff.linear_in.{weight,bias}``, ``encoder.layer.N.intermediate.fff.linear_out.weight``
and ``encoder.layer.N.output.bias``.

No ``from __future__ import annotations`` here: ``@strict`` checks each config field against its annotation.
"""

from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import Tensor, nn
from transformers import BertConfig
from transformers.activations import ACT2FN
from transformers.models.bert.modeling_bert import (
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertLayer,
    BertModel,
    BertPreTrainedModel,
)

from ...fff import FFF, GroupedFFF, check_grouped_impl, check_impl
from ...fff.grouped import MAX_GROUPED_DEPTH
from ...fff.layer import MAX_DEPTH
from ..base import FFFPreTrainedMixin

FFFBERT_MODEL_TYPE = "fffbert"
FFFBERT_FILE = "modeling_fffbert"  # the folder file holding this module's copy (config and models alike)
FFFBERT_AUTO_MAP = {
    "AutoConfig": f"{FFFBERT_FILE}.FFFBertConfig",
    "AutoModel": f"{FFFBERT_FILE}.FFFBertModel",
    "AutoModelForMaskedLM": f"{FFFBERT_FILE}.FFFBertForMaskedLM",
    "AutoModelForSequenceClassification": f"{FFFBERT_FILE}.FFFBertForSequenceClassification",
    "AutoModelForTokenClassification": f"{FFFBERT_FILE}.FFFBertForTokenClassification",
    "AutoModelForQuestionAnswering": f"{FFFBERT_FILE}.FFFBertForQuestionAnswering",
}
# The feedforward's kind: a tree of single neurons (FFF), or a routing tree over leaves of dense neurons (GroupedFFF)
FFF_LAYERS = ("tree", "grouped")
# The grouped layer's module, which the folder carries beside the FFF layer's (``portable.SHARED_FILES``).
GROUPED_FILES = {f"{__name__.partition('.')[0]}.fff.grouped": "fff_grouped"}
# Parameters of the task heads: a checkpoint of one head loads into another (e.g. a bare encoder -> a classifier).
HEAD_PREFIXES = ("pooler.", "bert.pooler.", "cls.", "classifier.", "qa_outputs.")


@strict
class FFFBertConfig(BertConfig):
    """``BertConfig`` plus the FFF shape: ``fff_trees`` trees of depth ``fff_depth`` replace each layer's
    ``intermediate_size``-wide feedforward (``intermediate_size`` and ``hidden_act`` are kept as a record of the
    BERT the model was converted from; the FFF neurons use GELU). ``fff_impl`` picks the FFF execution path.
    ``fff_layer="grouped"`` makes it a ``GroupedFFF`` instead: ``fff_depth`` routing levels over leaves of
    ``fff_leaf_width`` neurons, a shared leaf of ``fff_shared_width``, the neurons using ``hidden_act``
    (``fff_trees`` 1; ``fff_impl`` ``auto`` or ``reference``)."""

    model_type = FFFBERT_MODEL_TYPE

    fff_trees: int = 1
    fff_depth: int = 8
    fff_impl: str = "auto"
    fff_layer: str = "tree"
    fff_leaf_width: int = 0
    fff_shared_width: int = 0

    def __post_init__(self, **kwargs: Any) -> None:
        self.auto_map = dict(FFFBERT_AUTO_MAP)
        super().__post_init__(**kwargs)
        if self.fff_layer not in FFF_LAYERS:
            raise ValueError(f"unknown fff_layer {self.fff_layer!r}; choose one of {FFF_LAYERS}")
        if self.fff_layer == "grouped":
            if self.fff_trees != 1 or not 0 <= self.fff_depth <= MAX_GROUPED_DEPTH:
                raise ValueError(
                    f"a grouped feedforward needs fff_trees 1 and 0 <= fff_depth <= {MAX_GROUPED_DEPTH}, got "
                    f"{self.fff_trees}, {self.fff_depth}"
                )
            check_grouped_impl(self.fff_impl, name="fff_impl of a grouped feedforward")
            return
        if self.fff_trees < 1 or not 0 <= self.fff_depth <= MAX_DEPTH:
            raise ValueError(
                f"need fff_trees >= 1 and 0 <= fff_depth <= {MAX_DEPTH}, got {self.fff_trees}, {self.fff_depth}"
            )
        check_impl(self.fff_impl, name="fff_impl")

    @property
    def name(self) -> str:
        """E.g. ``FFF-BERT-4x5`` (trees x depth), ``FFF-BERT-grouped-2x384+0`` (depth x leaf width + shared)."""
        if self.fff_layer == "grouped":
            return f"FFF-BERT-grouped-{self.fff_depth}x{self.fff_leaf_width}+{self.fff_shared_width}"
        return f"FFF-BERT-{self.fff_trees}x{self.fff_depth}"


class FFFBertFeedForward(nn.Module):
    """Takes the place of ``BertIntermediate``: the FFF (or grouped FFF), whose output is already ``hidden_size``
    wide."""

    def __init__(self, config: FFFBertConfig) -> None:
        super().__init__()
        if config.fff_layer == "grouped":
            self.fff = GroupedFFF(
                config.hidden_size,
                config.fff_depth,
                config.fff_leaf_width,
                config.fff_shared_width,
                activation=ACT2FN[config.hidden_act],
                output_bias=False,
                impl=config.fff_impl,
            )
        else:
            self.fff = FFF(config.hidden_size, config.fff_depth, config.fff_trees, impl=config.fff_impl)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.fff(hidden_states)


class FFFBertOutput(nn.Module):
    """Takes the place of ``BertOutput``: the dense layer's output ``bias``, then BERT's dropout and residual
    LayerNorm (under BERT's names)."""

    def __init__(self, config: FFFBertConfig) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(config.hidden_size))
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: Tensor, input_tensor: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(hidden_states + self.bias) + input_tensor)


def use_fff_layers(model: nn.Module, config: FFFBertConfig) -> None:
    """Give every ``BertLayer`` of ``model`` an FFF feedforward (idempotent)."""
    for module in model.modules():
        if isinstance(module, BertLayer) and not isinstance(module.intermediate, FFFBertFeedForward):
            module.intermediate = FFFBertFeedForward(config)
            module.output = FFFBertOutput(config)


class FFFBertPreTrainedModel(FFFPreTrainedMixin, BertPreTrainedModel):
    """What the FFF-BERT classes add to their BERT classes: the FFF layers (built in ``post_init``, which every
    BERT class calls at the end of its ``__init__``), strict loading and portable saving."""

    config_class = FFFBertConfig
    config: FFFBertConfig
    fff_layer_types = (FFF, GroupedFFF)
    folder_files = {__name__: FFFBERT_FILE, **GROUPED_FILES}

    def post_init(self) -> None:
        use_fff_layers(self, self.config)
        super().post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, FFF | GroupedFFF):
            module.reset_parameters()
        elif isinstance(module, FFFBertOutput):
            module.bias.zero_()

    def check_fff_impl(self, impl: str) -> str:
        return check_grouped_impl(impl) if self.config.fff_layer == "grouped" else check_impl(impl)

    @classmethod
    def is_head_key(cls, key: str) -> bool:
        return key.startswith(HEAD_PREFIXES)


class FFFBertModel(FFFBertPreTrainedModel, BertModel):
    """The bare encoder (``AutoModel``)."""


class FFFBertForMaskedLM(FFFBertPreTrainedModel, BertForMaskedLM):
    """BERT's masked-LM head on the FFF encoder (``AutoModelForMaskedLM``)."""


class FFFBertForSequenceClassification(FFFBertPreTrainedModel, BertForSequenceClassification):
    """BERT's pooled classifier on the FFF encoder (``AutoModelForSequenceClassification``)."""


class FFFBertForTokenClassification(FFFBertPreTrainedModel, BertForTokenClassification):
    """BERT's token classifier on the FFF encoder (``AutoModelForTokenClassification``)."""


class FFFBertForQuestionAnswering(FFFBertPreTrainedModel, BertForQuestionAnswering):
    """BERT's answer-span head on the FFF encoder (``AutoModelForQuestionAnswering``)."""
