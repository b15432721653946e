"""UltraFastBERT: crammedBERT with fast feedforward (FFF) layers run as conditional matrix multiplication."""

from .fff import FFF

__version__ = "0.1.0"
__all__ = ["FFF", "__version__"]
