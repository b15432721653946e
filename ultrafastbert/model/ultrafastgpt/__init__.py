"""The UltraFastGPT family: GPT-style causal decoders whose feedforward is dense, narrow dense, an FFF, or absent.

One module, ``modeling`` (configuration with its presets, then the models), which saved folders carry as one file
(``modeling_ultrafastgpt.py``). Built on the shared ``model`` modules (``base``) and the FFF layer; no other
family.
"""

from .modeling import UltraFastGPTConfig, UltraFastGPTForCausalLM, UltraFastGPTModel, UltraFastGPTPreTrainedModel

__all__ = ["UltraFastGPTConfig", "UltraFastGPTForCausalLM", "UltraFastGPTModel", "UltraFastGPTPreTrainedModel"]
