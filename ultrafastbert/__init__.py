"""UltraFastBERT: crammedBERT with fast feedforward (FFF) layers run as conditional matrix multiplication."""

from .fff import FFF
from .model import (
    CheckpointError,
    CrammedBertConfig,
    CrammedBertForMaskedLM,
    CrammedBertForSequenceClassification,
    CrammedBertForTokenClassification,
    CrammedBertModel,
    CrammedBertTokenizer,
    convert_checkpoint,
)

__version__ = "0.1.0"
__all__ = [
    "FFF",
    "CheckpointError",
    "CrammedBertConfig",
    "CrammedBertForMaskedLM",
    "CrammedBertForSequenceClassification",
    "CrammedBertForTokenClassification",
    "CrammedBertModel",
    "CrammedBertTokenizer",
    "__version__",
    "convert_checkpoint",
]
