"""Timing and machine facts shared by the benchmarks (methodology: ``../shared/DESIGN.md`` §5)."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    """Wall-clock seconds of one callable: median of ``repeats`` runs after warm-up."""

    median_s: float
    min_s: float
    repeats: int


def time_callable(
    fn: Callable[[], object],
    min_seconds: float = 0.3,
    min_repeats: int = 3,
    max_repeats: int = 1000,
    warmup: int = 2,
) -> Timing:
    """Run ``fn`` ``warmup`` times, then repeat it until ``min_seconds`` have passed (at least ``min_repeats``
    times, at most ``max_repeats``) and return the median; medians resist the noise of a shared machine."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < max_repeats and (len(samples) < min_repeats or time.perf_counter() - started < min_seconds):
        begin = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - begin)
    return Timing(median_s=statistics.median(samples), min_s=min(samples), repeats=len(samples))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    """What a reader needs to interpret the numbers: CPU, cores, threads used, library versions, date."""
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
