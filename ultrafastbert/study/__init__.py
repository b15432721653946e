"""The quality study: dense crammedBERT against UltraFastBERT and the baselines that decide whether the tree helps
(``ultrafastbert study``); see ``docs/study.md``."""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports
from .config import STUDY_PRESETS, StudyConfig, StudyError, study_config
from .retention import Retention, TaskComparison, TaskScores, retention
from .variants import VARIANTS, tree_depth_for, variant_fields

if TYPE_CHECKING:
    from .run import run_study

# The modules above are light; running a study needs torch, imported on first use of ``run_study``, so that the
# command line reads the study's settings without it.
__getattr__, __dir__ = lazy_exports(__name__, {".run": ("run_study",)})

__all__ = [
    "STUDY_PRESETS",
    "VARIANTS",
    "Retention",
    "StudyConfig",
    "StudyError",
    "TaskComparison",
    "TaskScores",
    "retention",
    "run_study",
    "study_config",
    "tree_depth_for",
    "variant_fields",
]
