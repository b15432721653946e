"""Settings of ``ultrafastbert fffify`` (one dataclass, its fields are the command's flags). Free of torch and
transformers, so ``--help`` answers at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..flags import check_fields, fraction, positive

INIT_METHODS = ("split", "pca", "random")
METHODS = ("tree", "grouped")
# A tree with more nodes than this many times the dense layer's neurons is bigger than the layer it replaces by a
# wide margin: a typo in --depth rather than a model (depth 11 at width 1536 is 2.7x; depth 12 is 5.3x).
MAX_NODES_PER_DENSE_NEURON = 4
DEFAULT_SEQ_LEN = 128
# [CLS], [SEP] and at least one token of text: shorter sequences hold nothing to distil on
MIN_SEQ_LEN = 3


@dataclass
class FffifyConfig:
    """How a BERT's feedforward layers become FFFs: the tree shape, the initialisation, and the distillation
    (layer by layer on the FF's real inputs, then optionally end to end on the final hidden states); or, with
    ``method="grouped"``, grouped-leaf FFFs holding the layer's own neurons (``fffify/grouped.py``)."""

    method: Literal["tree", "grouped"] = field(
        default="tree",
        metadata={
            "help": "tree: trees of single neurons distilled to imitate each feedforward; grouped: the feedforward's "
            "own neurons kept, grouped by co-activation into 2^depth leaves beside an always-on shared leaf, only "
            "the routing nodes fitted (--depth and --active-fraction; --init and the layer-wise steps do not apply)"
        },
    )
    depth: int = field(
        default=8,
        metadata={"help": "depth D of each tree (D+1 neurons per token per tree); grouped: routing levels"},
    )
    active_fraction: float = field(
        default=0.25,
        metadata={
            "help": "grouped: share of the dense neurons one token evaluates (its leaf and the shared leaf, which "
            "holds what 2^depth equal leaves leave over)"
        },
    )
    trees: int = field(default=1, metadata={"help": "trees K per layer", "check": positive})
    init: Literal["split", "pca", "random"] = field(
        default="split",
        metadata={
            "help": "split: route by recursive median splits along the input direction most covariant with the FF "
            "output still unexplained, output weights by least squares; pca: the same along the inputs' principal "
            "direction; random: the FFF's default random initialisation (no data)"
        },
    )
    layer_steps: int = field(default=300, metadata={"help": "distillation steps per layer", "check": positive})
    lr: float = field(
        default=2e-3, metadata={"help": "peak learning rate of the layer-wise distillation", "check": positive}
    )
    batch_tokens: int = field(
        default=2048, metadata={"help": "tokens per layer-wise distillation step", "check": positive}
    )
    e2e_steps: int = field(
        default=0,
        metadata={
            "help": "end-to-end distillation steps on the final hidden states (0: none); grouped: a recovery stage "
            "training the leaves, the shared leaf and the biases under the fitted routing"
        },
    )
    e2e_lr: float = field(
        default=1e-4, metadata={"help": "learning rate of the end-to-end distillation", "check": positive}
    )
    e2e_batch: int = field(default=16, metadata={"help": "sequences per end-to-end step", "check": positive})
    budget_minutes: float | None = field(
        default=None,
        metadata={"help": "wall-clock cap on the distillation (layers share it equally; end to end gets a third)"},
    )
    train_tokens: int = field(
        default=32768,
        metadata={"help": "tokens of distillation text (real tokens, padding excluded)", "check": positive},
    )
    heldout_tokens: int = field(default=8192, metadata={"help": "held-out tokens for R^2", "check": positive})
    heldout_sentences: int = field(
        default=1000, metadata={"help": "held-out texts for embedding fidelity and retrieval", "check": positive}
    )
    seq_len: int | None = field(
        default=None,
        metadata={
            "help": f"tokens per text, longer ones truncated (default: {DEFAULT_SEQ_LEN}, or the model's "
            "max_position_embeddings when smaller)",
            "check": positive,
        },
    )
    init_tokens: int = field(
        default=16384, metadata={"help": "tokens the split/pca routing is chosen on", "check": positive}
    )
    ridge: float = field(
        default=1e-3, metadata={"help": "relative ridge of the least-squares output fit", "check": positive}
    )
    seed: int = field(default=0, metadata={"help": "seeds the text sample, initialisation and batches"})
    corpus: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "text or JSONL files for distillation and held-out text (default: the embedded corpus)",
            "nargs": "*",
        },
    )
    validation_fraction: float = field(
        default=0.05,
        metadata={
            "help": "share of --corpus documents held out (the embedded corpus has its own split)",
            "check": fraction,
        },
    )

    def __post_init__(self) -> None:
        self.corpus = tuple(self.corpus)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if not 0 < self.active_fraction <= 1:
            raise ValueError(f"active fraction must lie in (0, 1], got {self.active_fraction}")
        if self.method == "grouped" and self.trees != 1:
            raise ValueError(f"--method grouped builds one routing tree per layer; --trees must be 1, got {self.trees}")
        if self.init not in INIT_METHODS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {INIT_METHODS}")
        if self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")
        if self.e2e_steps < 0:
            raise ValueError(f"e2e_steps must be >= 0, got {self.e2e_steps}")
        if self.seq_len is not None and self.seq_len < MIN_SEQ_LEN:
            raise ValueError(
                f"seq_len must be >= {MIN_SEQ_LEN} ([CLS], [SEP] and at least one token of text), got {self.seq_len}"
            )
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise ValueError(f"budget_minutes must be > 0, got {self.budget_minutes}")
        check_fields(self)

    @property
    def shape(self) -> str:
        """``KxD``, e.g. ``4x5``; grouped: ``grouped-D@F``, e.g. ``grouped-2@0.25``."""
        if self.method == "grouped":
            return f"grouped-{self.depth}@{self.active_fraction:g}"
        return f"{self.trees}x{self.depth}"
