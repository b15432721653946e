"""The settings of the benchmarks, as dataclasses whose fields are also the commands' flags (``flags.py``).

Kept apart from the benchmarks, and free of torch, so that building the command line imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .timing import DEVICES, Rounds, thread_count

DTYPES = ("float32", "bfloat16")


@dataclass
class LayerBenchConfig:
    tokens: tuple[int, ...] = field(default=(1, 128, 16384), metadata={"help": "token counts of the forward timings"})
    device: str = field(
        default="cpu",
        metadata={
            "choices": DEVICES,
            "help": "cpu: every FFF path and the C++ kernel, one pass per thread count and dtype; cuda: dense FF "
            "(cuBLAS, torch.compile) vs the FFF Triton kernels, one pass per dtype, timed with CUDA events",
        },
    )
    dtypes: tuple[str, ...] = field(
        default=("float32",),
        metadata={"choices": DTYPES, "help": "one pass per dtype (on CPU: per thread count and dtype)"},
    )
    width: int = field(default=768, metadata={"help": "features in and out"})
    depth: int = field(default=11, metadata={"help": "FFF tree depth"})
    trees: int = field(default=1, metadata={"help": "FFF trees"})
    dense_width: int = field(default=3072, metadata={"help": "hidden units of the dense baseline"})
    threads: tuple[int, ...] = field(
        default=(),
        metadata={
            "type": thread_count,
            "help": "one pass per thread count, in order; 'all' = every logical core (default: torch's own setting)",
        },
    )
    repeats: int | None = field(default=None, metadata={"help": "timed rounds (default: adaptive)"})
    min_rounds: int = field(default=3, metadata={"help": "adaptive: at least this many rounds"})
    max_rounds: int = field(default=1000, metadata={"help": "adaptive: at most this many rounds"})
    seconds_per_candidate: float = field(
        default=0.3, metadata={"help": "adaptive: timed seconds per candidate in a group, at least"}
    )
    warmup: int = field(default=2, metadata={"help": "untimed calls of each candidate first"})
    train_tokens: tuple[int, ...] = field(
        default=(128, 4096),
        metadata={"nargs": "*", "help": "token counts for the training-step (forward + backward) timings"},
    )
    compiled_gather: bool = field(
        default=True,
        metadata={
            "flag": "--no-compile",
            "help": "leave out the torch.compile'd gather walk (it compiles once per token count)",
        },
    )
    seed: int = field(default=0, metadata={"help": "seeds weights and inputs"})

    def rounds(self, candidates: int) -> Rounds:
        """The round limits for a group of ``candidates`` timed together."""
        return Rounds(
            repeats=self.repeats,
            min_rounds=self.min_rounds,
            max_rounds=self.max_rounds,
            min_seconds=self.seconds_per_candidate * candidates,
            warmup=self.warmup,
        )


@dataclass
class ModelBenchConfig:
    """Shapes default to the published models: 16 layers, hidden 768, 12 heads, vocab 32768, sequence 128."""

    batches: tuple[int, ...] = field(default=(1, 8), metadata={"help": "batch sizes (sequences per forward)"})
    device: str = field(
        default="cpu",
        metadata={"choices": DEVICES, "help": "cuda: timed with CUDA events, without the per-component split"},
    )
    seq_len: int = field(default=128, metadata={"help": "tokens per sequence"})
    layers: int = field(default=16, metadata={"help": "transformer layers"})
    hidden: int = field(default=768, metadata={"help": "hidden size"})
    heads: int = field(default=12, metadata={"help": "attention heads"})
    vocab: int = field(default=32768, metadata={"help": "vocabulary size"})
    dense_intermediate: int = field(default=3072, metadata={"help": "crammedBERT's GELUglu feedforward width"})
    fff_trees: int = field(default=1, metadata={"help": "UltraFastBERT's FFF trees"})
    fff_depth: int = field(default=11, metadata={"help": "UltraFastBERT's FFF depth"})
    head: Literal["classification", "mlm"] = field(
        default="classification", metadata={"help": "the model's head; mlm: the vocabulary-wide decoder"}
    )
    threads: int | None = field(
        default=None, metadata={"type": thread_count, "help": "torch threads, or 'all' (default: torch's own)"}
    )
    repeats: int | None = field(default=None, metadata={"help": "timed rounds (default: adaptive)"})
    min_rounds: int = field(default=5, metadata={"help": "adaptive: at least this many rounds"})
    max_rounds: int = field(default=100, metadata={"help": "adaptive: at most this many rounds"})
    min_seconds: float = field(default=5.0, metadata={"help": "adaptive: timed seconds per batch size, at least"})
    warmup: int = field(default=2, metadata={"help": "untimed forwards of each candidate first"})
    component_repeats: int = field(default=3, metadata={"help": "rounds of the component split (with hooks)"})
    seed: int = field(default=0, metadata={"help": "seeds weights and token ids"})

    @property
    def rounds(self) -> Rounds:
        return Rounds(self.repeats, self.min_rounds, self.max_rounds, self.min_seconds, self.warmup)
