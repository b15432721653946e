"""The layer benchmark runs end to end at toy sizes, writes JSON + PNG, and refuses a wrong implementation."""

from __future__ import annotations

import json

import pytest
import torch

from ultrafastbert.bench.layer import (
    Candidate,
    LayerBenchConfig,
    build_candidates,
    check_against_reference,
    run_layer_benchmark,
)


def test_layer_benchmark_writes_json_and_plot(tmp_path):
    config = LayerBenchConfig(tokens=(1, 5), train_tokens=(3,), width=16, depth=3, dense_width=32, repeats=2)
    report = run_layer_benchmark(config, output=tmp_path / "layer")
    saved = json.loads((tmp_path / "layer.json").read_text())
    assert saved["results"] == report["results"]
    assert (tmp_path / "layer.png").stat().st_size > 0
    forward = {(r["name"], r["tokens"]) for r in saved["results"] if r["mode"] == "forward"}
    assert ("FFF walk (PyTorch)", 5) in forward and ("dense FF-32", 1) in forward
    assert all(r["median_ms"] > 0 and r["repeats"] == 2 for r in saved["results"])
    assert saved["machine"]["torch_threads"] >= 1


def test_benchmark_refuses_an_implementation_that_disagrees_with_the_reference():
    config = LayerBenchConfig(width=8, depth=2)
    candidates = build_candidates(config)
    wrong = torch.nn.Linear(8, 8)
    wrong.impl = "wrong"  # a module pretending to be an FFF path
    candidates.append(Candidate("broken", wrong, "wrong"))
    with pytest.raises(AssertionError, match="broken differs from the reference"):
        check_against_reference(candidates, torch.randn(4, 8))


def test_shape_benchmark_times_every_trees_by_depth_shape(tmp_path):
    from ultrafastbert.bench.layer import run_shape_benchmark

    report = run_shape_benchmark(((1, 3), (2, 2), (4, 1)), width=16, tokens=64, output=tmp_path / "shapes")
    saved = json.loads((tmp_path / "shapes.json").read_text())
    assert [(r["trees"], r["depth"], r["neurons_per_token"]) for r in saved["results"]] == [
        (1, 3, 4),
        (2, 2, 6),
        (4, 1, 8),
    ]
    assert all(r["us_per_token"] > 0 for r in report["results"])
