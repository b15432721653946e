"""Budget, triangle learning-rate schedule and batch-size ramp of the crammed recipe."""

from __future__ import annotations

import pytest

from ultrafastbert.train.schedule import BatchRamp, Budget, TriangleSchedule


def test_triangle_shape():
    schedule = TriangleSchedule(start_factor=0.25, peak_at=0.75)
    assert schedule.factor(0.0) == pytest.approx(0.25)
    assert schedule.factor(0.375) == pytest.approx(0.625)
    assert schedule.factor(0.75) == pytest.approx(1.0)
    assert schedule.factor(0.875) == pytest.approx(0.5)
    assert schedule.factor(1.0) == pytest.approx(0.0)
    points = [schedule.factor(i / 100) for i in range(101)]
    rising, falling = points[:76], points[75:]
    assert all(a < b for a, b in zip(rising, rising[1:], strict=False))
    assert all(a > b for a, b in zip(falling, falling[1:], strict=False))


def test_batch_ramp_reaches_final_batch_at_sixty_percent():
    ramp = BatchRamp(micro_batch=128, final_batch=8192, ramp_until=0.6)
    assert ramp.accumulation_steps(0.0) == 1
    assert ramp.accumulation_steps(0.3) == round(1 + 63 * 0.5)
    assert ramp.accumulation_steps(0.6) == 64 and ramp.accumulation_steps(0.9) == 64
    steps = [ramp.accumulation_steps(i / 100) for i in range(101)]
    assert steps == sorted(steps)


def test_budget_uses_whichever_limit_comes_first():
    assert Budget(max_steps=100).progress(25, 1e9) == 0.25
    assert Budget(max_seconds=60).progress(10**9, 30) == 0.5
    assert Budget(max_steps=100, max_seconds=60).progress(10, 45) == 0.75
    assert Budget(max_steps=10).progress(20, 0) == 1.0


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: Budget(), "max_steps or max_seconds"),
        (lambda: Budget(max_steps=0), "max_steps must be >= 1"),
        (lambda: BatchRamp(micro_batch=32, final_batch=48), "not a multiple"),
        (lambda: BatchRamp(micro_batch=32, final_batch=16), "micro_batch <= final_batch"),
        (lambda: TriangleSchedule(peak_at=1.0), "peak_at"),
    ],
)
def test_bad_schedule_settings_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()
