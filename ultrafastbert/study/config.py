"""Settings of the quality study: one dataclass (its defaults are the preset for a 2-core CPU) and presets.

Free of torch and transformers (the models' configs are built in the methods that return them), so that building
the command line imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ..data.task_names import LOCAL_TASKS
from ..train.config import FinetuneConfig
from .variants import VARIANTS, check_variants, variant_fields

if TYPE_CHECKING:
    from ..model.crammedbert.configuration import CrammedBertConfig

STUDY_TASKS = ("wn-pos", "wn-supersense", "wn-sense-match", "fortune-topic")


@dataclass
class StudyConfig:
    """Settings of a study. The defaults are the ``cpu-2core`` preset: a model size that trains about 1,300-2,400
    steps in ``minutes_per_variant`` on two idle CPU cores. A first run at 9 minutes per variant (``docs/study.md``)
    left the dense reference at 21.8% masked-token accuracy against 14.3% for the copy/unigram guess, its loss still
    falling steeply, so the preset gives each variant 12 minutes; three finetuning seeds keep the whole study near
    two hours."""

    output_dir: str = field(default="results/study", metadata={"flag": "--output", "help": "the study's folder"})
    variants: tuple[str, ...] = field(default=VARIANTS, metadata={"help": "variants to compare", "choices": VARIANTS})
    hidden_size: int = field(default=128, metadata={"help": "hidden size of every variant"})
    layers: int = field(default=2, metadata={"help": "transformer layers of every variant"})
    heads: int = field(default=2, metadata={"help": "attention heads"})
    dense_width: int = field(default=512, metadata={"help": "width W of the dense reference; sets the tree depth"})
    vocab_size: int = field(default=8192, metadata={"help": "WordPiece vocabulary trained on the corpus"})
    seq_len: int = field(default=128, metadata={"help": "pretraining sequence length"})
    minutes_per_variant: float | None = field(
        default=12.0, metadata={"help": "wall-clock pretraining budget of each variant"}
    )
    steps_per_variant: int | None = field(
        default=None, metadata={"help": "step budget of each variant (with minutes: whichever comes first)"}
    )
    micro_batch: int = field(default=32, metadata={"help": "sequences per forward pass"})
    final_batch: int = field(default=64, metadata={"help": "sequences per optimizer step at the end of the ramp"})
    lr: float = field(default=3e-3, metadata={"help": "peak pretraining learning rate"})
    seed: int = field(default=0, metadata={"help": "seeds weights, sequence order and masks of every variant"})
    eval_every_steps: int = field(default=200, metadata={"help": "validation MLM loss every N steps"})
    validation_sequences: int = field(default=512, metadata={"help": "validation sequences for MLM metrics"})
    tasks: tuple[str, ...] = field(
        default=STUDY_TASKS, metadata={"help": "local tasks to finetune on", "choices": LOCAL_TASKS}
    )
    glue_dir: str | None = field(default=None, metadata={"help": "folder of GLUE tasks in GLUE's TSV layout"})
    glue_tasks: tuple[str, ...] = field(default=(), metadata={"help": "GLUE tasks to add (needs --glue-dir)"})
    finetune_lr: float = field(default=3e-4, metadata={"help": "finetuning learning rate"})
    finetune_batch: int = field(default=32, metadata={"help": "finetuning batch size"})
    finetune_epochs: float = field(default=2.0, metadata={"help": "finetuning epochs"})
    finetune_seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "finetuning seeds"})
    max_train_examples: int | None = field(default=4000, metadata={"help": "training examples per task (capped)"})
    max_eval_examples: int | None = field(default=2000, metadata={"help": "evaluation examples per split"})
    finetune_max_length: int = field(default=64, metadata={"help": "tokens per finetuning example"})
    timing_tokens: tuple[int, ...] = field(default=(128, 4096), metadata={"help": "token counts of FF timings"})
    timing_seconds: float = field(default=0.5, metadata={"help": "timed seconds per FF layer and token count"})
    cache_dir: str | None = field(default=None, metadata={"help": "data cache (default: the package cache)"})

    # Fields that do not change what a study measures: a rerun may change them.
    NOT_COMPARED = frozenset({"output_dir", "cache_dir"})

    def __post_init__(self) -> None:
        self.variants, self.tasks = tuple(self.variants), tuple(self.tasks)
        self.glue_tasks, self.finetune_seeds = tuple(self.glue_tasks), tuple(self.finetune_seeds)
        self.timing_tokens = tuple(self.timing_tokens)
        check_variants(self.variants, self.dense_width)
        if "dense" not in self.variants:
            raise ValueError("the study compares against the dense reference: variants must include 'dense'")
        if self.minutes_per_variant is None and self.steps_per_variant is None:
            raise ValueError("give a pretraining budget: minutes_per_variant and/or steps_per_variant")
        if self.minutes_per_variant is not None and not self.minutes_per_variant > 0:
            raise ValueError(f"minutes_per_variant must be > 0, got {self.minutes_per_variant}")
        if self.steps_per_variant is not None and self.steps_per_variant < 1:
            raise ValueError(f"steps_per_variant must be >= 1, got {self.steps_per_variant}")
        if self.glue_tasks and not self.glue_dir:
            raise ValueError("glue_tasks need glue_dir, the folder holding GLUE's task folders")
        if not self.tasks and not self.glue_tasks:
            raise ValueError("the study needs at least one finetuning task")
        if not self.finetune_seeds:
            raise ValueError("the study needs at least one finetuning seed")
        if not self.timing_tokens or min(self.timing_tokens) < 1:
            raise ValueError(f"timing_tokens must be token counts >= 1, got {list(self.timing_tokens)}")

    def check_models(self) -> None:
        """``StudyError`` naming the first variant whose model the settings cannot build (``--hidden-size 0``, heads
        that do not divide it, ...), and the finetuning settings' own checks: run before the study writes anything.
        """
        from huggingface_hub.errors import StrictDataclassError  # here: the study's flags are read without it

        for variant in self.variants:
            try:
                self.model_config(variant, self.vocab_size)
            except (ValueError, StrictDataclassError) as error:
                message = " ".join(str(error).split())
                raise StudyError(f"the settings cannot build the {variant} model: {message}") from None
        try:
            self.finetune_config()
        except ValueError as error:
            raise StudyError(f"the finetuning settings: {error}") from None

    def settings(self) -> dict[str, Any]:
        """What identifies the study (everything but ``NOT_COMPARED``), JSON-ready."""
        return {
            f.name: list(value) if isinstance(value := getattr(self, f.name), tuple) else value
            for f in fields(self)
            if f.name not in self.NOT_COMPARED
        }

    def finetune_config(self, seed: int | None = None) -> FinetuneConfig:
        return FinetuneConfig(
            lr=self.finetune_lr,
            batch_size=self.finetune_batch,
            epochs=self.finetune_epochs,
            seeds=self.finetune_seeds if seed is None else (seed,),
            max_train_examples=self.max_train_examples,
            max_eval_examples=self.max_eval_examples,
            max_length=self.finetune_max_length,
            select="last",  # every variant scored as trained: no selection on the validation split
        )

    def model_config(self, variant: str, vocab_size: int, **overrides: Any) -> CrammedBertConfig:
        """The model of ``variant`` at the study's sizes; ``overrides`` replace any of its fields."""
        # here: the study's flags are read without transformers
        from ..model.crammedbert.configuration import CrammedBertConfig

        sizes = {
            **variant_fields(variant, self.dense_width),
            "vocab_size": vocab_size,
            "max_position_embeddings": self.seq_len,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
        }
        return CrammedBertConfig.from_preset("tiny-crammed-bert", **{**sizes, **overrides})


# The demo (``ultrafastbert demo``) is this study with the ``demo`` preset: the dense reference against the paper's
# tree, each pretrained for a share of a budget of minutes for the whole job (the rest goes to data preparation,
# finetuning and timing).
DEMO_VARIANTS = ("dense", "fff")
DEMO_PRETRAIN_SHARE = 0.55  # of the demo's budget, split between its variants
DEMO_BUDGET_MINUTES = 10.0  # what ``make demo`` gives it


def demo_minutes_per_variant(budget_minutes: float) -> float:
    """Pretraining minutes of each demo variant within a demo budget of ``budget_minutes``, rounded to a
    millionth of a minute so that the recorded settings read plainly."""
    if not budget_minutes > 0:
        raise ValueError(f"the demo's budget must be > 0 minutes, got {budget_minutes}")
    return round(budget_minutes * DEMO_PRETRAIN_SHARE / len(DEMO_VARIANTS), 6)


# Presets by name: the defaults for this 2-core machine (equal wall-clock: the user's budget), the same at equal
# steps (the model's capacity: every variant sees the same sequences; 2,000 steps is what the FFF got in 12 minutes
# of the study of record), the demo, and a toy size for tests (seconds, learns nothing).
STUDY_PRESETS: dict[str, dict[str, Any]] = {
    "cpu-2core": {},
    "cpu-2core-steps": {"minutes_per_variant": None, "steps_per_variant": 2000},
    # The demo's models see a few hundred steps, so validation every 100 steps draws their curves; its finetuning
    # of briefly pretrained models uses a lower lr and half the training examples (chosen before any test score).
    "demo": {
        "output_dir": "results/demo",
        "variants": DEMO_VARIANTS,
        "minutes_per_variant": demo_minutes_per_variant(DEMO_BUDGET_MINUTES),
        "eval_every_steps": 100,
        "finetune_lr": 2e-4,
        "max_train_examples": 2000,
        "timing_tokens": (1, 128, 4096),
    },
    "toy": {
        "hidden_size": 16,
        "layers": 1,
        "heads": 2,
        "dense_width": 32,
        "vocab_size": 200,
        "seq_len": 32,
        "minutes_per_variant": None,
        "steps_per_variant": 3,
        "micro_batch": 4,
        "final_batch": 4,
        "eval_every_steps": 2,
        "validation_sequences": 8,
        "finetune_epochs": 1.0,
        "finetune_seeds": (0, 1),
        "max_train_examples": 16,
        "max_eval_examples": 16,
        "finetune_max_length": 16,
        "timing_tokens": (8,),
        "timing_seconds": 0.01,
    },
}


def study_config(preset: str = "cpu-2core", **overrides: Any) -> StudyConfig:
    """The ``StudyConfig`` of ``preset`` (``STUDY_PRESETS``) with ``overrides`` applied."""
    if preset not in STUDY_PRESETS:
        raise ValueError(f"unknown study preset {preset!r}; known: {', '.join(STUDY_PRESETS)}")
    return StudyConfig(**{**STUDY_PRESETS[preset], **overrides})


class StudyError(ValueError):
    """A study that cannot start: bad settings, missing data, or a folder holding another study."""
