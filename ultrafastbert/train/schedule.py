"""The crammed recipe's budget-driven schedules: one-cycle triangle learning rate and a batch-size ramp.

Both are functions of *progress* in ``[0, 1]``: the larger of elapsed-time / time budget and step / step budget.
A step budget alone makes a run deterministic (needed for exact resume); a time budget is the crammed setting.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """Stop at whichever comes first; ``None`` disables a limit (at least one must be set)."""

    max_steps: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("a training budget needs max_steps or max_seconds (or both)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")

    def progress(self, step: int, elapsed_seconds: float) -> float:
        """Fraction of the budget used, clipped to ``[0, 1]``."""
        fractions = []
        if self.max_steps is not None:
            fractions.append(step / self.max_steps)
        if self.max_seconds is not None:
            fractions.append(elapsed_seconds / self.max_seconds)
        return min(1.0, max(fractions))


@dataclass(frozen=True)
class TriangleSchedule:
    """Learning-rate factor: ``start_factor`` at progress 0, linear up to 1 at ``peak_at``, linear down to 0 at 1."""

    start_factor: float = 0.25
    peak_at: float = 0.75

    def __post_init__(self) -> None:
        if not 0.0 < self.peak_at < 1.0:
            raise ValueError(f"peak_at must be in (0, 1), got {self.peak_at}")
        if not 0.0 <= self.start_factor <= 1.0:
            raise ValueError(f"start_factor must be in [0, 1], got {self.start_factor}")

    def factor(self, progress: float) -> float:
        progress = min(1.0, max(0.0, progress))
        if progress <= self.peak_at:
            return self.start_factor + (1.0 - self.start_factor) * progress / self.peak_at
        return (1.0 - progress) / (1.0 - self.peak_at)


@dataclass(frozen=True)
class BatchRamp:
    """Sequences per optimizer step: grows linearly from ``micro_batch`` to ``final_batch`` by ``ramp_until``,
    always a whole number of micro-batches (the rest is gradient accumulation)."""

    micro_batch: int
    final_batch: int
    ramp_until: float = 0.6

    def __post_init__(self) -> None:
        if self.micro_batch < 1 or self.final_batch < self.micro_batch:
            raise ValueError(f"need 1 <= micro_batch <= final_batch, got {self.micro_batch}, {self.final_batch}")
        if self.final_batch % self.micro_batch:
            raise ValueError(f"final_batch {self.final_batch} is not a multiple of micro_batch {self.micro_batch}")

    def accumulation_steps(self, progress: float) -> int:
        """Micro-batches to accumulate for the optimizer step taken at ``progress``."""
        final_steps = self.final_batch // self.micro_batch
        if self.ramp_until <= 0.0:
            return final_steps
        fraction = min(1.0, max(0.0, progress) / self.ramp_until)
        return max(1, round(1 + (final_steps - 1) * fraction))
