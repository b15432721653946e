"""The benchmarks' timing helper: interleaved rounds in rotating order, medians, and the round limits."""

from __future__ import annotations

import pytest
import torch

from ultrafastbert.bench.timing import Rounds, TimedCall, thread_count, time_interleaved


def recording(log: list[str], name: str) -> TimedCall:
    return TimedCall(name, lambda: log.append(name), prepare=lambda: log.append(f"prepare {name}"))


def test_rounds_interleave_in_rotating_order_after_warmup():
    log: list[str] = []
    timings = time_interleaved([recording(log, "a"), recording(log, "b"), recording(log, "c")], Rounds(3, warmup=1))
    calls = [entry for entry in log if not entry.startswith("prepare")]
    assert calls == ["a", "b", "c"] + ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(log[index - 1] == f"prepare {entry}" for index, entry in enumerate(log) if entry in "abc")
    assert list(timings) == ["a", "b", "c"]
    for timing in timings.values():
        assert (timing.repeats, timing.threads, timing.candidates) == (3, torch.get_num_threads(), 3)
        assert 0 <= timing.min_s <= timing.median_s


def test_adaptive_rounds_stop_at_the_limits():
    log: list[str] = []
    quick = Rounds(min_rounds=4, max_rounds=10, min_seconds=0.0, warmup=0)
    assert time_interleaved([recording(log, "a")], quick)["a"].repeats == 4
    endless = Rounds(min_rounds=1, max_rounds=6, min_seconds=1e9, warmup=0)
    assert time_interleaved([recording(log, "a")], endless)["a"].repeats == 6


def test_median_and_min_of_the_timed_calls(monkeypatch):
    durations = iter([0.03, 0.01, 0.9, 0.02, 0.04])  # one outlier
    clock = [0.0]

    def call() -> None:
        clock[0] += next(durations)

    monkeypatch.setattr("ultrafastbert.bench.timing.time.perf_counter", lambda: clock[0])
    timing = time_interleaved([TimedCall("x", call)], Rounds(5, warmup=0))["x"]
    assert (timing.median_s, timing.min_s) == (pytest.approx(0.03), pytest.approx(0.01))


def test_candidate_names_must_differ():
    with pytest.raises(ValueError, match="differ"):
        time_interleaved([TimedCall("a", lambda: None), TimedCall("a", lambda: None)], Rounds(1))


def test_thread_count_takes_positive_integers_or_all():
    assert thread_count("3") == 3 and thread_count("all") >= 1
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match="positive integers or 'all'"):
            thread_count(bad)
