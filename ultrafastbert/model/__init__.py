"""The model families and their ``transformers`` integration: one sub-package per family (``crammedbert``:
crammedBERT / UltraFastBERT; ``fffbert``: converted BERTs; ``ultrafastgpt``: causal decoders), on the modules every
family shares (``base``, ``loading``, ``portable``). Importing it registers the families with the Auto classes."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from .crammedbert import (
    MODEL_TYPE,
    CrammedBertConfig,
    CrammedBertForMaskedLM,
    CrammedBertForQuestionAnswering,
    CrammedBertForSequenceClassification,
    CrammedBertForTokenClassification,
    CrammedBertModel,
    CrammedBertPreTrainedModel,
    CrammedBertTokenizer,
    convert_checkpoint,
    load_tokenizer,
)
from .fffbert import (
    FFFBertConfig,
    FFFBertForMaskedLM,
    FFFBertForQuestionAnswering,
    FFFBertForSequenceClassification,
    FFFBertForTokenClassification,
    FFFBertModel,
)
from .loading import CheckpointError
from .ultrafastgpt import UltraFastGPTConfig, UltraFastGPTForCausalLM, UltraFastGPTModel, UltraFastGPTPreTrainedModel


def register_auto_classes() -> None:
    """Make the ``Auto*`` classes resolve ``model_type = "crammedBERT"``, ``"fffbert"`` and ``"ultrafastgpt"`` to
    these classes (idempotent)."""
    AutoConfig.register(MODEL_TYPE, CrammedBertConfig, exist_ok=True)
    AutoModel.register(CrammedBertConfig, CrammedBertModel, exist_ok=True)
    AutoModelForMaskedLM.register(CrammedBertConfig, CrammedBertForMaskedLM, exist_ok=True)
    AutoModelForSequenceClassification.register(CrammedBertConfig, CrammedBertForSequenceClassification, exist_ok=True)
    AutoModelForTokenClassification.register(CrammedBertConfig, CrammedBertForTokenClassification, exist_ok=True)
    AutoModelForQuestionAnswering.register(CrammedBertConfig, CrammedBertForQuestionAnswering, exist_ok=True)
    AutoTokenizer.register(CrammedBertConfig, tokenizer_class=CrammedBertTokenizer, exist_ok=True)
    AutoConfig.register(FFFBertConfig.model_type, FFFBertConfig, exist_ok=True)
    AutoModel.register(FFFBertConfig, FFFBertModel, exist_ok=True)
    AutoModelForMaskedLM.register(FFFBertConfig, FFFBertForMaskedLM, exist_ok=True)
    AutoModelForSequenceClassification.register(FFFBertConfig, FFFBertForSequenceClassification, exist_ok=True)
    AutoModelForTokenClassification.register(FFFBertConfig, FFFBertForTokenClassification, exist_ok=True)
    AutoModelForQuestionAnswering.register(FFFBertConfig, FFFBertForQuestionAnswering, exist_ok=True)
    AutoConfig.register(UltraFastGPTConfig.model_type, UltraFastGPTConfig, exist_ok=True)
    AutoModel.register(UltraFastGPTConfig, UltraFastGPTModel, exist_ok=True)
    AutoModelForCausalLM.register(UltraFastGPTConfig, UltraFastGPTForCausalLM, exist_ok=True)


register_auto_classes()

__all__ = [
    "CheckpointError",
    "CrammedBertConfig",
    "CrammedBertForMaskedLM",
    "CrammedBertForQuestionAnswering",
    "CrammedBertForSequenceClassification",
    "CrammedBertForTokenClassification",
    "CrammedBertModel",
    "CrammedBertPreTrainedModel",
    "CrammedBertTokenizer",
    "FFFBertConfig",
    "FFFBertForMaskedLM",
    "FFFBertForQuestionAnswering",
    "FFFBertForSequenceClassification",
    "FFFBertForTokenClassification",
    "FFFBertModel",
    "UltraFastGPTConfig",
    "UltraFastGPTForCausalLM",
    "UltraFastGPTModel",
    "UltraFastGPTPreTrainedModel",
    "convert_checkpoint",
    "load_tokenizer",
    "register_auto_classes",
]
