"""The settings of the benchmarks, as dataclasses whose fields are also the commands' flags (``flags.py``).

Kept apart from the benchmarks, and free of torch, so that building the command line imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from ..flags import check_fields, positive
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


DECODE_MODELS = ("dense", "fff", "narrow", "no-ff")
DECODE_PRESETS = ("gpt2-small", "smoke")
# What ``--preset smoke`` puts in place of every setting left at its default: a tiny decoder, a few steps, and a
# GPT-3 layer stand-in small enough for a test.
DECODE_SMOKE = {
    "contexts": (8, 16),
    "new_tokens": 2,
    "batches": (1, 2),
    "min_rounds": 1,
    "max_rounds": 2,
    "min_seconds": 0.0,
    "warmup": 1,
    "gpt3_tokens": (1, 2),
    "gpt3_width": 64,
    "gpt3_hidden": 256,
    "gpt3_depth": 4,
    "gpt3_min_seconds": 0.0,
    "bandwidth_mib": 4,
    "flush_mib": 4,
}


@dataclass
class DecodeBenchConfig:
    """Batch-1 (and batch-B) token-by-token decoding with the KV cache, and the GPT-3 feedforward layer."""

    preset: str = field(
        default="gpt2-small",
        metadata={
            "choices": DECODE_PRESETS,
            "help": "gpt2-small: the decoders at GPT-2 small's shape (12 x 768, vocabulary 50257), the run of record; "
            "smoke: the tiny decoder, contexts 8 and 16, 2 new tokens and a GPT-3 layer stand-in of width 64 "
            "(every setting left at its default takes the smoke value)",
        },
    )
    models: tuple[str, ...] = field(
        default=DECODE_MODELS,
        metadata={"choices": DECODE_MODELS, "help": "feedforwards: dense 4H, FFF (the size's tree), narrow dense as "
                  "wide as the tree's path, none (the ceiling)"},
    )  # fmt: skip
    contexts: tuple[int, ...] = field(
        default=(128, 512, 1024), metadata={"check": positive, "help": "prompt lengths (tokens in the KV cache)"}
    )
    new_tokens: int = field(default=8, metadata={"check": positive, "help": "tokens decoded one at a time, timed"})
    batches: tuple[int, ...] = field(default=(1, 8), metadata={"check": positive, "help": "sequences decoded at once"})
    dtypes: tuple[str, ...] = field(default=DTYPES, metadata={"choices": DTYPES, "help": "one pass per dtype"})
    threads: int | None = field(
        default=None, metadata={"type": thread_count, "help": "torch threads, or 'all' (default: torch's own)"}
    )
    min_rounds: int = field(default=3, metadata={"check": positive, "help": "at least this many rounds"})
    max_rounds: int = field(default=30, metadata={"check": positive, "help": "decoding: at most this many rounds"})
    min_seconds: float = field(
        default=4.0, metadata={"help": "decoding: timed seconds per context, batch and dtype, at least"}
    )
    warmup: int = field(default=1, metadata={"help": "untimed calls of each candidate first"})
    share_repeats: int = field(
        default=1, metadata={"check": positive, "help": "decoding calls per model timed with hooks for the shares"}
    )
    decoding: bool = field(
        default=True,
        metadata={"help": "leave out the decoding runs (the report in --output keeps the decoding records it holds)"},
    )
    gpt3_layer: bool = field(
        default=True,
        metadata={"flag": "--no-gpt3-layer", "help": "leave out the GPT-3 feedforward layer (the report in --output "
                  "keeps the GPT-3 records it holds)"},
    )  # fmt: skip
    gpt3_tokens: tuple[int, ...] = field(
        default=(1, 16), metadata={"check": positive, "help": "GPT-3 layer: tokens per call"}
    )
    gpt3_width: int = field(default=12288, metadata={"check": positive, "help": "GPT-3 layer: features in and out"})
    gpt3_hidden: int = field(default=49152, metadata={"check": positive, "help": "GPT-3 layer: dense neurons"})
    gpt3_depth: int = field(default=15, metadata={"help": "GPT-3 layer: the tree's depth"})
    gpt3_min_seconds: float = field(
        default=4.0, metadata={"help": "GPT-3 layer: timed seconds per layer and dtype, at least"}
    )
    bandwidth_mib: int = field(
        default=128,
        metadata={"check": positive, "help": "memory-read probe: MiB summed (several times the last-level cache)"},
    )
    flush_mib: int = field(
        default=256, metadata={"check": positive, "help": "GPT-3 layer: MiB read to flush the caches before a call"}
    )
    seed: int = field(default=0, metadata={"help": "seeds weights and token ids"})

    def __post_init__(self) -> None:
        if self.preset not in DECODE_PRESETS:
            raise ValueError(f"unknown decode preset {self.preset!r}; choose one of {DECODE_PRESETS}")
        unknown = [model for model in self.models if model not in DECODE_MODELS]
        if unknown or not self.models:
            raise ValueError(f"unknown decode model {unknown or '(none given)'}; choose from {DECODE_MODELS}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"a decode model is named twice in {self.models}")
        if self.preset == "smoke":
            defaults = {f.name: f.default for f in fields(self)}
            for name, value in DECODE_SMOKE.items():
                if getattr(self, name) == defaults[name]:
                    setattr(self, name, value)
        check_fields(self)
        if not (self.decoding or self.gpt3_layer):
            raise ValueError("--no-decoding and --no-gpt3-layer leave nothing to run")
        if not 0 <= self.gpt3_depth <= 20:
            raise ValueError(f"gpt3_depth must lie in [0, 20], got {self.gpt3_depth}")

    @property
    def decoder_size(self) -> str:
        """The decoder preset's size (``UltraFastGPTConfig.from_preset``): ``gpt2-small`` or, smoke, ``tiny-gpt``."""
        return "tiny-gpt" if self.preset == "smoke" else self.preset

    @property
    def rounds(self) -> Rounds:
        return Rounds(None, self.min_rounds, self.max_rounds, self.min_seconds, self.warmup)

    @property
    def gpt3_rounds(self) -> Rounds:
        return Rounds(None, self.min_rounds, 500, self.gpt3_min_seconds, self.warmup)
