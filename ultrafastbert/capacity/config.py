"""Settings of the capacity benchmark: one dataclass (its defaults are the benchmark of record) and presets.

Free of torch and transformers, so that building the command line imports nothing heavy. Every value is checked
in ``__post_init__`` (``check_fields`` plus the cross-field rules), so a nonsense setting is one line before any
work, from the command line or from Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..flags import check_fields, positive

# Feedforward arms, all at the FF FLOPs per token of a path through a depth-D tree (D+1 neurons) except "wide".
ARMS = ("no-ff", "narrow", "fff", "fff-balanced", "wide", "fff-balance-loss")
ARM_HELP = {
    "no-ff": "attention-only block: what the rest of the model stores without a feedforward",
    "narrow": "dense GELU feedforward of width D+1: the tree's FLOPs per token in a plain layer",
    "fff": "FFF 1xD: 2^(D+1)-1 neurons, D+1 of them per token",
    "fff-balanced": "FFF 1xD with loss-free routing balance (per-node routing offsets)",
    "wide": "dense GELU feedforward of width 2^(D+1)-1: the tree's parameters, every neuron per token",
    "fff-balance-loss": "FFF 1xD with an auxiliary per-node load-balancing loss instead of routing offsets",
}


def _non_negative(value: float) -> None:
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")


def _at_least_two(value: int) -> None:
    if value < 2:
        raise ValueError(f"must be >= 2, got {value}")


def _arm(value: str) -> None:
    if value not in ARMS:
        raise ValueError(f"unknown arm {value!r}; choose from {', '.join(ARMS)}")


_NOT_SETTINGS = ("output_dir", "threads", "arms", "people", "wordnet_lemmas")


@dataclass
class CapacityConfig:
    """Settings of one capacity benchmark. Defaults: the run of record (about 40 minutes on two idle cores)."""

    output_dir: str = field(
        default="benchmarks/results/capacity", metadata={"flag": "--output", "help": "the benchmark's folder"}
    )
    arms: tuple[str, ...] = field(default=ARMS, metadata={"help": "feedforward arms to compare", "check": _arm})
    people: tuple[int, ...] = field(
        default=(256, 1024, 4096, 8192),
        metadata={"help": "people per synthetic fact set (facts N = people x attributes)", "check": positive},
    )
    attributes: int = field(default=4, metadata={"help": "attributes K per person", "check": positive})
    values: int = field(default=64, metadata={"help": "values V per attribute", "check": _at_least_two})
    name_pool: int = field(
        default=128, metadata={"help": "first names and last names to draw from (each)", "check": positive}
    )
    wordnet_lemmas: tuple[int, ...] = field(
        default=(512,),
        metadata={
            "help": "WordNet lemmas learnt in the real-facts variant (lemma -> lexicographer file); none to skip",
            "nargs": "*",
            "check": positive,
        },
    )
    wordnet_heldout: int = field(
        default=2048, metadata={"help": "WordNet lemmas never trained on (what spelling alone predicts)"}
    )
    wordnet_max_letters: int = field(default=8, metadata={"help": "longest WordNet lemma used", "check": positive})
    hidden_size: int = field(default=32, metadata={"help": "hidden size of every arm", "check": positive})
    heads: int = field(default=4, metadata={"help": "attention heads", "check": positive})
    layers: int = field(default=1, metadata={"help": "transformer layers", "check": positive})
    depth: int = field(default=11, metadata={"help": "tree depth D of the FFF arms (sets every arm's width)"})
    exposures: int = field(default=128, metadata={"help": "times each fact is seen in training", "check": positive})
    steps_per_epoch: int = field(
        default=8,
        metadata={"help": "optimizer steps per pass over the facts (batch = facts / this)", "check": positive},
    )
    init_std: float = field(
        default=0.1, metadata={"help": "standard deviation of every initial weight", "check": positive}
    )
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (Adam, warmup then linear decay)"})
    warmup_fraction: float = field(default=0.05, metadata={"help": "share of the steps spent warming up"})
    balance_rate: float = field(
        default=0.01, metadata={"help": "routing-offset step of the fff-balanced arm", "check": _non_negative}
    )
    balance_loss: float = field(
        default=0.01,
        metadata={"help": "load-balancing loss weight of the fff-balance-loss arm", "check": _non_negative},
    )
    evaluations: int = field(
        default=8, metadata={"help": "recall measurements during training (the last at the end)", "check": positive}
    )
    threads: int = field(default=1, metadata={"help": "torch CPU threads", "check": positive})
    seed: int = field(default=0, metadata={"help": "seeds facts, weights and order"})

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.arms:
            raise ValueError("capacity needs at least one arm")
        for name in ("arms", "people", "wordnet_lemmas"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"capacity {name} repeat: {', '.join(map(str, values))}")
        if not 0 <= self.depth <= 16:
            raise ValueError(f"capacity depth must lie in [0, 16], got {self.depth}")
        if self.lr <= 0:
            raise ValueError(f"capacity lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"capacity warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of heads {self.heads}")
        if self.wordnet_heldout < 0:
            raise ValueError(f"capacity wordnet_heldout must be >= 0, got {self.wordnet_heldout}")
        most = max(self.people)
        if most > self.name_pool**2:
            raise ValueError(
                f"{most} people cannot have distinct names from {self.name_pool} first x {self.name_pool} last names"
            )

    @property
    def path_width(self) -> int:
        """Neurons per token of the tree: one per level."""
        return self.depth + 1

    @property
    def tree_width(self) -> int:
        """Neurons of the tree: ``2^(D+1) - 1``."""
        return 2 ** (self.depth + 1) - 1

    @property
    def bits_per_fact(self) -> float:
        return math.log2(self.values)

    @property
    def total_steps(self) -> int:
        return self.exposures * self.steps_per_epoch

    def settings(self) -> dict[str, Any]:
        """What every result depends on: a rerun into a folder made with other settings is refused. Not in it:
        where it is written, the thread count, and which arms and fact counts run (each has its own result)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_SETTINGS}


CAPACITY_PRESETS: dict[str, dict[str, Any]] = {
    "record": {},
    # A minute or two on two cores: a tree of depth 6, few facts, fewer exposures; recall of the wide arm is far
    # above chance, the rest of the figures are only a smoke test of the pipeline.
    "smoke": {
        "people": (128,),
        "values": 16,
        "name_pool": 32,
        "depth": 6,
        "hidden_size": 32,
        "exposures": 128,
        "steps_per_epoch": 8,
        "wordnet_lemmas": (),
        "evaluations": 2,
    },
}


def capacity_config(preset: str, **overrides: Any) -> CapacityConfig:
    """The preset's settings with ``overrides`` on top (checked as a whole)."""
    if preset not in CAPACITY_PRESETS:
        raise ValueError(f"unknown capacity preset {preset!r}; choose from {', '.join(CAPACITY_PRESETS)}")
    return replace(CapacityConfig(**CAPACITY_PRESETS[preset]), **overrides)
