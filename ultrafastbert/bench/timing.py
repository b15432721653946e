"""The one timing method of every benchmark, and the machine facts reported beside its numbers.

Candidates are timed in interleaved rounds: each round calls every candidate once, in an order rotated by one per
round, so that load changing on a shared machine slows all of them alike; each candidate's median resists the
outliers, and its minimum is reported too. On a GPU each call is timed with CUDA events after a synchronisation
(so no earlier work is counted) and waited for (so all of its own is). Method and analysis:
``benchmarks/README.md``.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Written into every benchmark's JSON beside the round limits it used.
TIMING_METHOD = "interleaved rounds (each calls every candidate once, order rotated per round); median and min"
CUDA_TIMING = "CUDA events around each call, after torch.cuda.synchronize(), waited for"
DEVICES = ("cpu", "cuda")


@dataclass
class TimedCall:
    """One candidate: ``call`` is timed; ``prepare`` runs untimed before every call (e.g. to select the FFF path
    of a module that candidates share)."""

    name: str
    call: Callable[[], object]
    prepare: Callable[[], object] | None = None


@dataclass
class Rounds:
    """How many rounds to time: ``repeats`` exactly if set; otherwise at least ``min_rounds`` and ``min_seconds``
    of timed rounds, at most ``max_rounds``. Each candidate is first called ``warmup`` times, untimed."""

    repeats: int | None = None
    min_rounds: int = 5
    max_rounds: int = 100
    min_seconds: float = 1.0
    warmup: int = 2


@dataclass
class Timing:
    """Wall-clock seconds of one candidate's calls, and the conditions they ran under."""

    median_s: float
    min_s: float
    repeats: int  # timed calls: one per round
    threads: int  # torch threads during the rounds
    candidates: int  # how many candidates shared the rounds


def time_interleaved(calls: Sequence[TimedCall], rounds: Rounds, device: str = "cpu") -> dict[str, Timing]:
    """Time ``calls`` in interleaved rounds (see the module docstring); ``{name: Timing}`` in the order given.
    ``device="cuda"``: GPU time of each call, from CUDA events."""
    import torch  # in the functions, not at the top: the benchmarks' flags (``config.py``) load without torch

    names = [call.name for call in calls]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must differ: {names}")
    require_device(device)
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed(candidate: TimedCall) -> float:
        if candidate.prepare is not None:
            candidate.prepare()
        if device == "cuda":
            torch.cuda.synchronize()
            start.record()
            candidate.call()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        started = time.perf_counter()
        candidate.call()
        return time.perf_counter() - started

    for candidate in calls:
        for _ in range(rounds.warmup):
            timed(candidate)
    fixed = rounds.repeats is not None
    min_rounds = rounds.repeats if fixed else rounds.min_rounds
    max_rounds = rounds.repeats if fixed else rounds.max_rounds
    min_seconds = 0.0 if fixed else rounds.min_seconds
    samples: dict[str, list[float]] = {name: [] for name in names}
    order = list(calls)
    done = 0
    started = time.perf_counter()
    while done < max_rounds and (done < min_rounds or time.perf_counter() - started < min_seconds):
        for candidate in order:
            samples[candidate.name].append(timed(candidate))
        order = order[1:] + order[:1]
        done += 1
    threads = torch.get_num_threads()
    return {
        name: Timing(statistics.median(values), min(values), len(values), threads, len(calls))
        for name, values in samples.items()
    }


def require_device(device: str) -> None:
    """Raise ``ValueError`` (shown as a one-line error by the command line) unless ``device`` can run here."""
    import torch

    if device not in DEVICES:
        raise ValueError(f"--device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        build = f"torch {torch.__version__} " + ("has CUDA but sees no GPU" if torch.backends.cuda.is_built() else
                                                  "is built without CUDA")  # fmt: skip
        raise ValueError(f"--device cuda: CUDA is not available on this machine ({build})")


def all_threads() -> int:
    """The logical cores this process may run on ("all threads")."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_count(value: str) -> int:
    """A thread count from the command line: a positive integer, or ``all`` for ``all_threads()``."""
    if value == "all":
        return all_threads()
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"positive integers or 'all', not {value!r}")
    return int(value)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_info() -> dict[str, object]:
    """The GPU the numbers were taken on, and the versions of what drives it."""
    import importlib.metadata

    import torch

    properties = torch.cuda.get_device_properties(torch.cuda.current_device())
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    return {
        "gpu": properties.name,
        "gpu_capability": f"{properties.major}.{properties.minor}",
        "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
        "gpu_multiprocessors": properties.multi_processor_count,
        "cuda": torch.version.cuda,
        "triton": triton,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }


def machine_info(device: str = "cpu") -> dict[str, object]:
    """What a reader needs to interpret the numbers: CPU and its vector instruction set as torch sees it (the
    kernel's speed depends on it: AVX-512 or AVX2), cores, threads used, library versions, date; on ``"cuda"``
    the GPU's facts too (``gpu_info``)."""
    import torch

    return ({"device": device, **gpu_info()} if device == "cuda" else {}) | {
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
