"""The FFF-BERT family: ``transformers``' BERT classes with fast feedforward trees for feedforwards, the models
that ``ultrafastbert fffify`` converts BERTs into.

One module, ``modeling`` (configuration and models alike), which saved folders carry as one file
(``modeling_fffbert.py``). Built on ``transformers``' BERT, the shared ``model`` modules (``base``) and the FFF
layers; it takes nothing from the crammedBERT family.
"""

from .modeling import (
    FFFBertConfig,
    FFFBertForMaskedLM,
    FFFBertForQuestionAnswering,
    FFFBertForSequenceClassification,
    FFFBertForTokenClassification,
    FFFBertModel,
    FFFBertPreTrainedModel,
)

__all__ = [
    "FFFBertConfig",
    "FFFBertForMaskedLM",
    "FFFBertForQuestionAnswering",
    "FFFBertForSequenceClassification",
    "FFFBertForTokenClassification",
    "FFFBertModel",
    "FFFBertPreTrainedModel",
]
