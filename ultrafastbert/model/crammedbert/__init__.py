"""The crammedBERT family: crammedBERT (dense feedforward) and UltraFastBERT (FFF feedforward) encoders.

``configuration`` (``CrammedBertConfig`` and its presets), ``modeling`` (the models, in data-flow order),
``convert`` (the published checkpoint format and the clean one) and ``tokenizer`` (the published checkpoints'
tokenizer). Built on the shared ``model`` modules (``base``, ``loading``) and the FFF layer; no other family.
"""

from .configuration import MODEL_TYPE, CrammedBertConfig
from .convert import convert_checkpoint
from .modeling import (
    CrammedBertForMaskedLM,
    CrammedBertForQuestionAnswering,
    CrammedBertForSequenceClassification,
    CrammedBertForTokenClassification,
    CrammedBertModel,
    CrammedBertPreTrainedModel,
)
from .tokenizer import CrammedBertTokenizer, load_tokenizer

__all__ = [
    "MODEL_TYPE",
    "CrammedBertConfig",
    "CrammedBertForMaskedLM",
    "CrammedBertForQuestionAnswering",
    "CrammedBertForSequenceClassification",
    "CrammedBertForTokenClassification",
    "CrammedBertModel",
    "CrammedBertPreTrainedModel",
    "CrammedBertTokenizer",
    "convert_checkpoint",
    "load_tokenizer",
]
