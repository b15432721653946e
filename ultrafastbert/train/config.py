"""The settings of training runs, as dataclasses whose fields are also the command's flags (``flags.py``).

Kept apart from the loops that use them, and free of torch, so that building the command line imports nothing
heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..flags import check_fields, fraction, positive
from .schedule import Budget

if TYPE_CHECKING:
    from transformers import PretrainedConfig


@dataclass
class PretrainConfig:
    """Optimisation settings of one pretraining run; defaults are the crammed ``bert-o4`` recipe."""

    micro_batch: int = field(default=128, metadata={"help": "sequences per forward pass per process"})
    final_batch: int = field(
        default=8192, metadata={"flag": "--batch", "help": "final sequences per optimizer step (all processes)"}
    )
    batch_ramp_until: float = field(
        default=0.6, metadata={"help": "share of the budget over which the batch grows from one micro-batch to final"}
    )
    max_steps: int | None = field(default=None, metadata={"help": "step budget"})
    max_minutes: float | None = field(
        default=None, metadata={"help": "wall-clock budget of the training loop", "resume_may_change": True}
    )
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    betas: tuple[float, float] = field(default=(0.9, 0.98), metadata={"help": "AdamW betas"})
    eps: float = field(default=1e-12, metadata={"help": "AdamW epsilon"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    clip_norm: float = field(default=0.5, metadata={"help": "gradient norm clipping (0: off)"})
    lr_start_factor: float = field(default=0.25, metadata={"help": "learning rate at the start, as a share of peak"})
    lr_peak_at: float = field(default=0.75, metadata={"help": "share of the budget at which the learning rate peaks"})
    seed: int = field(default=0, metadata={"help": "seeds the sequence order, the masks and the weights"})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast"})
    checkpoint_every_minutes: float = field(
        default=10.0, metadata={"help": "minutes between checkpoints", "resume_may_change": True}
    )
    eval_every_steps: int = field(
        default=0, metadata={"help": "validation every N steps (0: only at the end)", "resume_may_change": True}
    )
    log_every_steps: int = field(
        default=1, metadata={"help": "metrics.jsonl record every N steps", "resume_may_change": True}
    )
    tree_health_every_steps: int = field(
        default=100,
        metadata={
            "help": "FFF tree health (unvisited leaves, leaf entropy, root split per layer) over the training tokens "
            "of the last N steps, in metrics.jsonl and the progress bar, every N steps (0: off)",
            "resume_may_change": True,
        },
    )
    balance_positions: str = field(
        default="unmasked",
        metadata={
            "help": "the positions whose routing visits balance FFF trees (and feed tree health) in masked-LM "
            "pretraining: 'unmasked' (left as they were by the masking: balanced on text as inference reads it) "
            "or 'all' (the [MASK] positions too)",
            "choices": ("unmasked", "all"),
        },
    )
    keep_checkpoints: int = field(
        default=2, metadata={"help": "newest checkpoints kept on disk (at least 1)", "resume_may_change": True}
    )
    max_nonfinite_steps: int = field(
        default=0,
        metadata={
            "help": "steps in a row with a non-finite loss or gradient norm that are skipped (no update); "
            "one more stops the run",
            "resume_may_change": True,
        },
    )
    # The learned scalar of the scaled sinusoidal positions. Adam moves a lone scalar by about lr per step whatever
    # its gradient, and early MLM gradients say "positions are noise": in CPU-scale runs it reached 0 within a few
    # hundred steps, leaving a bag-of-words model stuck at unigram accuracy on [MASK] tokens. Kept fixed at its
    # initial value unless this is set.
    train_position_scale: bool = field(
        default=False,
        metadata={
            "help": "also train the position embeddings' scalar (fixed by default: it collapses to 0 in short runs)"
        },
    )

    @property
    def budget(self) -> Budget:
        seconds = None if self.max_minutes is None else self.max_minutes * 60.0
        return Budget(max_steps=self.max_steps, max_seconds=seconds)


@dataclass
class PretrainJob:
    """Everything ``ultrafastbert pretrain`` needs; ``corpus`` empty means the embedded default corpus."""

    output_dir: str = field(metadata={"flag": "--output", "help": "run folder: checkpoints/, metrics.jsonl, model/"})
    preset: str = field(
        default="tiny-ufb-1x8",
        metadata={
            "help": "encoders, pretrained as masked LMs: crammed-bert, ufb-KxD, tiny-crammed-bert[-W], tiny-ufb-KxD; "
            "causal decoders, pretrained on next-token prediction: tiny-gpt[-FF], gpt2-small[-FF] with FF one of "
            "dense, dense-W, fff, fff-KxD, narrow, no-ff"
        },
    )
    corpus: list[str] = field(
        default_factory=list, metadata={"nargs": "*", "help": "text files, folders or .jsonl (default: embedded)"}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "folder with tokenizer.json (default: train one on the corpus)"}
    )
    vocab_size: int = field(default=32768, metadata={"help": "vocabulary of a tokenizer trained on the corpus"})
    seq_len: int = field(default=128, metadata={"help": "tokens per sequence"})
    fff_balance_rate: float = field(
        default=0.0,
        metadata={"help": "step of the FFF trees' routing offsets per optimizer step (0: off, the published trees)"},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "data cache (default: $ULTRAFASTBERT_CACHE or ~/.cache/ultrafastbert)"}
    )
    resume: bool = field(default=False, metadata={"help": "continue from the latest checkpoint in --output"})
    overwrite: bool = field(
        default=False, metadata={"help": "delete the run already in --output (checkpoints, metrics, model) first"}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    train: PretrainConfig = field(default_factory=PretrainConfig)


def probability_mass(value: float) -> None:
    """Field check: a share of probability that keeps something, in (0, 1]."""
    if not 0 < value <= 1:
        raise ValueError(f"must lie in (0, 1], got {value}")


@dataclass
class GenerateConfig:
    """Settings of ``ultrafastbert generate``: how many tokens, and greedy decoding or sampling. The sampling
    settings left unset take the model folder's generation config, else transformers' defaults (temperature 1,
    top-k 50, top-p 1)."""

    max_new_tokens: int = field(
        default=50, metadata={"help": "tokens to generate (fewer when the model ends the text)", "check": positive}
    )
    do_sample: bool = field(default=False, metadata={"help": "sample each token (default: the most likely, greedy)"})
    temperature: float | None = field(
        default=None, metadata={"help": "with --do-sample: logits divided by this (default 1)", "check": positive}
    )
    top_k: int | None = field(
        default=None,
        metadata={"help": "with --do-sample: sample among the k likeliest tokens (default 50)", "check": positive},
    )
    top_p: float | None = field(
        default=None,
        metadata={
            "help": "with --do-sample: sample among the likeliest tokens holding this probability (default 1: all)",
            "check": probability_mass,
        },
    )
    seed: int = field(default=0, metadata={"help": "seeds the sampling"})

    def __post_init__(self) -> None:
        check_fields(self)
        given = [flag for flag, value in self.sampling_settings().items() if value is not None]
        if given and not self.do_sample:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(
                f"{flags} only {verb} to sampling: add --do-sample (without it the likeliest token is taken)"
            )

    def sampling_settings(self) -> dict[str, float | int | None]:
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


@dataclass
class FinetuneConfig:
    """Settings of finetuning; ``max_length`` ``None`` means the model's own ``max_position_embeddings``."""

    lr: float = field(default=4e-5, metadata={"help": "peak learning rate", "check": positive})
    batch_size: int = field(default=16, metadata={"help": "examples per optimizer step", "check": positive})
    epochs: float = field(
        default=5.0, metadata={"help": "passes over the training set (fractions allowed)", "check": positive}
    )
    warmup_fraction: float = field(
        default=0.1, metadata={"help": "share of the steps with a rising learning rate", "check": fraction}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    dropout: float = field(
        default=0.1, metadata={"help": "dropout of embeddings, layers and classifier", "check": fraction}
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "tokens per example, longer ones truncated (default: the model's max_position_embeddings, "
            "the most it accepts)",
            "check": positive,
        },
    )
    seeds: tuple[int, ...] = field(default=(0, 1, 2, 3, 4), metadata={"help": "one run per seed; medians reported"})
    max_train_examples: int | None = field(
        default=None, metadata={"help": "cap on training examples per task", "check": positive}
    )
    max_eval_examples: int | None = field(
        default=None, metadata={"help": "cap on evaluation examples per split", "check": positive}
    )
    eval_batch_size: int = field(
        default=64, metadata={"help": "examples per evaluation forward pass", "check": positive}
    )
    select: Literal["best", "last"] = field(
        default="best",
        metadata={
            "help": "the weights a run keeps: 'best' by the validation main metric, evaluated after every epoch, "
            "or 'last'"
        },
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "with select=best: stop after this many epochs without a better validation score",
            "check": positive,
        },
    )

    def __post_init__(self) -> None:
        self.seeds = tuple(self.seeds)
        if not self.seeds:
            raise ValueError("FinetuneConfig.seeds must hold at least one seed")
        if self.select not in ("best", "last"):
            raise ValueError(f"FinetuneConfig.select must be 'best' or 'last', got {self.select!r}")
        if self.early_stopping_patience is not None and self.select != "best":
            raise ValueError("early_stopping_patience needs select='best' (it watches the validation score)")
        check_fields(self)

    def max_length_for(self, model_config: PretrainedConfig) -> int:
        """The tokens per example for a model of ``model_config``: ``max_length``, or the model's
        ``max_position_embeddings`` when unset; a ``ValueError`` when it is longer than the model accepts."""
        limit = model_config.max_position_embeddings
        if self.max_length is None:
            return limit
        if self.max_length > limit:
            raise ValueError(
                f"max_length {self.max_length} exceeds the model's max_position_embeddings={limit} (the longest "
                "sequence it was built for)"
            )
        return self.max_length
