"""The variants of the quality study: one rule that turns a dense width ``W`` into every model compared.

With ``D`` the depth whose tree has about ``W`` nodes (``2^(D+1) - 1 ~ W``, e.g. 511 for 512, 4095 for 3072):

=============  =====================================  ==========================================================
name           feedforward                            question it answers
=============  =====================================  ==========================================================
dense          dense GELU FF of width ``W``           the reference
fff            UltraFastBERT ``1xD``                  the paper's setup: ``D+1`` neurons per token
fff-balanced   ``1xD`` with balanced trees            does keeping the tree alive (routing offsets moved by
               (``fff_balance_rate``)                 ``BALANCE_RATE`` a step, ``docs/design.md`` §1) help?
narrow         dense FF of width ``D+1``              same neurons per token (same FF FLOPs) as the FFF: does the
                                                      tree buy anything over a plain narrow layer?
narrow4        dense FF of width ``4(D+1)``           a narrow layer with 4x the FFF's FLOPs
no-ff          none (attention-only blocks)           the floor: what the feedforward contributes at all
fff-4trees     ``4x(D-2)``                            trees vs depth at (nearly) equal total nodes
fff-16trees    ``16x(D-4)``                           the same, more and shallower trees
=============  =====================================  ==========================================================

The same rule at the published size (768, ``W = 3072``, ``D = 11``) gives each variant's paper-size counterpart,
whose layer speed the study also measures.
"""

from __future__ import annotations

import math
from typing import Any

VARIANTS = ("dense", "fff", "fff-balanced", "narrow", "narrow4", "no-ff", "fff-4trees", "fff-16trees")
PAPER_HIDDEN, PAPER_WIDTH = 768, 3072
BALANCE_RATE = 0.01  # routing-offset step of the fff-balanced variant


def tree_depth_for(width: int) -> int:
    """The depth ``D`` whose tree's node count ``2^(D+1) - 1`` is closest to ``width`` (on a log scale)."""
    if width < 1:
        raise ValueError(f"dense width must be >= 1, got {width}")
    return max(round(math.log2(width + 1)) - 1, 0)


def check_variants(names: tuple[str, ...] | list[str], width: int) -> None:
    """``ValueError`` naming unknown variants, repeated ones, or tree shapes ``width`` is too small for."""
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown study variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"study variants repeat: {', '.join(names)}")
    depth = tree_depth_for(width)
    for name, needed in (("fff-4trees", 2), ("fff-16trees", 4)):
        if name in names and depth < needed:
            raise ValueError(f"variant {name} needs tree depth >= {needed}, but dense width {width} gives {depth}")


def variant_fields(name: str, width: int) -> dict[str, Any]:
    """The ``CrammedBertConfig`` feedforward fields of variant ``name`` for dense width ``width``."""
    check_variants((name,), width)
    depth = tree_depth_for(width)
    dense = {"ffn_type": "dense", "hidden_act": "gelu"}
    fields: dict[str, dict[str, Any]] = {
        "dense": {**dense, "intermediate_size": width},
        "fff": {"ffn_type": "fff", "fff_trees": 1, "fff_depth": depth},
        "fff-balanced": {"ffn_type": "fff", "fff_trees": 1, "fff_depth": depth, "fff_balance_rate": BALANCE_RATE},
        "narrow": {**dense, "intermediate_size": depth + 1},
        "narrow4": {**dense, "intermediate_size": 4 * (depth + 1)},
        "no-ff": {"ffn_type": "none"},
        "fff-4trees": {"ffn_type": "fff", "fff_trees": 4, "fff_depth": depth - 2},
        "fff-16trees": {"ffn_type": "fff", "fff_trees": 16, "fff_depth": depth - 4},
    }
    return fields[name]
