"""Retention of a variant's finetuned scores against the dense reference, and whether a gap exceeds seed noise.

Two figures per variant:

- **raw**: ``score / dense score``, averaged over tasks. Two models that learned nothing both score the majority
  class, so raw retention near 100% says little on its own.
- **gain above majority**: ``(score - majority) / (dense - majority)``: the share of what the dense model learned
  beyond always answering the most frequent class that the variant keeps. Averaged only over the tasks where the
  dense model beats the majority class by more than its own seed spread (max - min over seeds); elsewhere the
  denominator is noise.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskScores:
    """One model's main-metric scores on one task, one per finetuning seed, and the task's majority baseline."""

    task: str
    scores: tuple[float, ...]
    majority: float

    def __post_init__(self) -> None:
        if not self.scores:
            raise ValueError(f"task {self.task}: no scores")

    @property
    def median(self) -> float:
        return statistics.median(self.scores)

    @property
    def spread(self) -> float:
        """max - min over seeds (0 for one seed)."""
        return max(self.scores) - min(self.scores)


@dataclass(frozen=True)
class TaskComparison:
    """A variant against the dense reference on one task."""

    task: str
    raw: float | None  # variant median / dense median; None when the dense median is 0
    gain: float | None  # (variant - majority) / (dense - majority); None when the task is not informative
    informative: bool  # the dense model beats the majority by more than its own seed spread
    versus_dense: str  # "above" / "below" when the seed ranges do not overlap, else "within noise"


@dataclass(frozen=True)
class Retention:
    """Averages over tasks; ``gain`` is None when no task is informative (then nothing can be said)."""

    raw: float | None
    gain: float | None
    informative_tasks: tuple[str, ...]
    tasks: tuple[TaskComparison, ...]


def compare_task(variant: TaskScores, dense: TaskScores) -> TaskComparison:
    if variant.task != dense.task:
        raise ValueError(f"comparing task {variant.task} with task {dense.task}")
    dense_gain = dense.median - dense.majority
    informative = dense_gain > dense.spread and dense_gain > 0
    if min(variant.scores) > max(dense.scores):
        versus = "above"
    elif max(variant.scores) < min(dense.scores):
        versus = "below"
    else:
        versus = "within noise"
    return TaskComparison(
        task=variant.task,
        raw=variant.median / dense.median if dense.median else None,
        gain=(variant.median - dense.majority) / dense_gain if informative else None,
        informative=informative,
        versus_dense=versus,
    )


def retention(variant: Sequence[TaskScores], dense: Sequence[TaskScores]) -> Retention:
    """Per-task comparisons and their averages; the two sequences hold the same tasks in the same order."""
    if [t.task for t in variant] != [t.task for t in dense]:
        raise ValueError("variant and dense scores must cover the same tasks in the same order")
    tasks = tuple(compare_task(v, d) for v, d in zip(variant, dense, strict=True))
    raws = [t.raw for t in tasks if t.raw is not None]
    gains = [t.gain for t in tasks if t.gain is not None]
    return Retention(
        raw=statistics.mean(raws) if raws else None,
        gain=statistics.mean(gains) if gains else None,
        informative_tasks=tuple(t.task for t in tasks if t.informative),
        tasks=tasks,
    )
