"""Model presets by name: the published sizes and ``tiny-*`` sizes that train in minutes on a CPU.

``crammed-bert``       crammedBERT, 16 layers x 768, GELUglu feedforward 3072 (the dense baseline)
``ufb-KxD``            UltraFastBERT with K trees of depth D per layer (``ufb-1x11`` is the published model)
``tiny-crammed-bert``  4 layers x 256, 4 heads, GELU feedforward 1024 (``tiny-crammed-bert-W`` for width W)
``tiny-ufb-KxD``       4 layers x 256, 4 heads, FFF with K trees of depth D
Dropout is off in every preset: the crammed recipe pretrains without it (finetuning turns it back on).
"""

from __future__ import annotations

import re
from typing import Any

from ..model.configuration import CrammedBertConfig

_NO_DROPOUT = {"embedding_dropout_prob": 0.0, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
_BASE = {"hidden_size": 768, "num_hidden_layers": 16, "num_attention_heads": 12}
_TINY = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4}
PRESET_NAMES = ("crammed-bert", "ufb-KxD", "tiny-crammed-bert[-W]", "tiny-ufb-KxD")


def preset_config(name: str, vocab_size: int, max_seq_length: int = 128, **overrides: Any) -> CrammedBertConfig:
    """The ``CrammedBertConfig`` of preset ``name``; ``overrides`` replace any field."""
    fields: dict[str, Any]
    if name == "crammed-bert":
        fields = {**_BASE, "ffn_type": "dense", "intermediate_size": 3072, "hidden_act": "gelu_glu"}
    elif match := re.fullmatch(r"ufb-(\d+)x(\d+)", name):
        fields = {**_BASE, "ffn_type": "fff", "fff_trees": int(match[1]), "fff_depth": int(match[2])}
    elif match := re.fullmatch(r"tiny-crammed-bert(?:-(\d+))?", name):
        width = int(match[1]) if match[1] else 1024
        fields = {**_TINY, "ffn_type": "dense", "intermediate_size": width, "hidden_act": "gelu"}
    elif match := re.fullmatch(r"tiny-ufb-(\d+)x(\d+)", name):
        fields = {**_TINY, "ffn_type": "fff", "fff_trees": int(match[1]), "fff_depth": int(match[2])}
    else:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESET_NAMES)}")
    fields |= {"vocab_size": vocab_size, "max_position_embeddings": max_seq_length, **_NO_DROPOUT, **overrides}
    return CrammedBertConfig(**fields)
