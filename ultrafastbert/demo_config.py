"""The flags of the demo (``ultrafastbert demo``): a budget and a folder, mapped onto the quality study's ``demo``
preset (``study/config.py``), which holds every other setting.

Kept apart from the demo itself, and free of torch, so that building the command line imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .flags import check_fields, positive
from .study.config import (
    DEMO_BUDGET_MINUTES,
    DEMO_PRETRAIN_SHARE,
    STUDY_PRESETS,
    StudyConfig,
    demo_minutes_per_variant,
    study_config,
)


@dataclass
class DemoConfig:
    """What ``make demo`` chooses; ``ultrafastbert study --preset demo`` runs the same study with any other
    setting changed."""

    budget_minutes: float = field(
        default=DEMO_BUDGET_MINUTES,
        metadata={
            "help": f"budget of the whole job: {100 * DEMO_PRETRAIN_SHARE:.0f}% of it pretrains the two models (half "
            "each), the rest finetunes and times them; data preparation on a fresh machine comes on top",
            "check": positive,
        },
    )
    output_dir: str = field(
        default=STUDY_PRESETS["demo"]["output_dir"],
        metadata={"flag": "--output", "help": "the demo's folder: a rerun of the same command continues in it"},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "data cache (default: $ULTRAFASTBERT_CACHE or ~/.cache/ultrafastbert)"}
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def study_config(self, **overrides: Any) -> StudyConfig:
        """The study the demo runs: the ``demo`` preset with this budget and folder; ``overrides`` replace any
        other setting (tests run it at a toy size)."""
        settings = {
            "output_dir": self.output_dir,
            "cache_dir": self.cache_dir,
            "minutes_per_variant": demo_minutes_per_variant(self.budget_minutes),
        }
        return study_config("demo", **{**settings, **overrides})
