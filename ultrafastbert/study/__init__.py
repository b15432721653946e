"""The quality study: dense crammedBERT against UltraFastBERT and the baselines that decide whether the tree helps
(``ultrafastbert study``); see ``docs/study.md``."""

from .config import STUDY_PRESETS, StudyConfig, StudyError, study_config
from .retention import Retention, TaskComparison, TaskScores, retention
from .run import run_study
from .variants import VARIANTS, tree_depth_for, variant_fields

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
