"""The layer benchmark runs end to end at toy sizes, writes JSON + PNG, and refuses a wrong implementation."""

from __future__ import annotations

import json

import pytest
import torch

from ultrafastbert.bench.layer import (
    Candidate,
    CompiledGather,
    LayerBenchConfig,
    build_candidates,
    check_against_reference,
    format_table,
    run_layer_benchmark,
    thread_passes,
)


def test_layer_benchmark_writes_json_and_plot(tmp_path):
    config = LayerBenchConfig(
        tokens=(1, 5), train_tokens=(3,), width=16, depth=3, dense_width=32, repeats=2, compiled_gather=False
    )
    report = run_layer_benchmark(config, output=tmp_path / "layer")
    saved = json.loads((tmp_path / "layer.json").read_text())
    assert saved["results"] == report["results"]
    assert (tmp_path / "layer.png").stat().st_size > 0
    forward = {(r["name"], r["tokens"]) for r in saved["results"] if r["mode"] == "forward"}
    assert ("FFF gather/BMM (PyTorch)", 5) in forward and ("dense FF-32", 1) in forward
    assert ("dense FF-4 (equal FLOPs)", 5) in forward  # depth 3: 4 neurons per token
    assert not any("torch.compile" in name for name, _ in forward)
    assert all(r["median_ms"] > 0 and r["repeats"] == 2 for r in saved["results"])
    assert saved["machine"]["torch_threads"] >= 1
    assert [p["threads"] for p in saved["passes"]] == [torch.get_num_threads()]


def test_one_pass_per_thread_count_and_threads_restored(tmp_path):
    before = torch.get_num_threads()
    config = LayerBenchConfig(
        tokens=(4,),
        train_tokens=(),
        width=16,
        depth=2,
        dense_width=32,
        repeats=1,
        threads=(1, 2, 1),
        compiled_gather=False,
    )
    report = run_layer_benchmark(config, output=tmp_path / "layer")
    assert torch.get_num_threads() == before
    assert [p["threads"] for p in report["passes"]] == [1, 2]  # repeats dropped
    by_threads = {t: {r["name"] for r in report["results"] if r["threads"] == t} for t in (1, 2)}
    assert by_threads[1] == by_threads[2] and "FFF reference (masking)" in by_threads[1]
    assert all(p["gemm_gflops"] > 0 and p["fff_floor_ms"]["4"] > 0 for p in report["passes"])
    table = format_table(report, baseline="dense FF-32")
    assert "forward, float32, 1 threads" in table and "forward, float32, 2 threads" in table


def test_one_pass_per_dtype_on_cpu_each_checked_against_the_reference(tmp_path):
    """The CPU loop is the GPU loop: a bfloat16 pass beside the float32 one, every FFF path checked on its own
    input (tokens a rounding near-tie routes otherwise are counted, not compared)."""
    config = LayerBenchConfig(
        tokens=(6,),
        train_tokens=(3,),
        dtypes=("float32", "bfloat16"),
        width=16,
        depth=3,
        dense_width=32,
        repeats=1,
        compiled_gather=False,
    )
    report = run_layer_benchmark(config, output=tmp_path / "layer")
    assert [p["dtype"] for p in report["passes"]] == ["float32", "bfloat16"]
    timed = {(r["name"], r["mode"], r["dtype"]) for r in report["results"]}
    for dtype in ("float32", "bfloat16"):
        assert ("FFF reference (masking)", "train", dtype) in timed
        assert ("dense FF-4 (equal FLOPs)", "forward", dtype) in timed
    routed = next(v for k, v in report["routed_otherwise_than_reference"].items() if k.startswith("bfloat16"))
    assert "FFF gather/BMM (PyTorch)" in routed
    assert "forward, bfloat16" in format_table(report, baseline="dense FF-32")


def test_thread_passes_validates_counts():
    assert thread_passes((2, 2)) == [2]
    assert thread_passes(()) == [torch.get_num_threads()]
    with pytest.raises(ValueError, match=">= 1"):
        thread_passes((0,))


@pytest.mark.slow
def test_compiled_gather_is_checked_and_timed(tmp_path):
    config = LayerBenchConfig(tokens=(7,), train_tokens=(3,), width=16, depth=3, dense_width=32, repeats=2)
    report = run_layer_benchmark(config, output=tmp_path / "layer")
    assert report["skipped"] == {}
    timed = {(r["name"], r["mode"]) for r in report["results"]}
    assert ("FFF gather/BMM (torch.compile)", "forward") in timed
    assert ("FFF gather/BMM (torch.compile)", "train") not in timed  # inference only
    candidate = next(c for c in build_candidates(config) if isinstance(c.module, CompiledGather))
    x = torch.randn(5, 16)
    reference = candidate.module.fff
    reference.impl = "reference"
    with torch.no_grad():
        torch.testing.assert_close(candidate.run(x), reference(x), rtol=1e-5, atol=1e-6)


def test_an_optional_candidate_that_cannot_run_is_skipped_and_a_required_one_is_fatal():
    class Failing(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no compiler here")

    candidates = build_candidates(LayerBenchConfig(width=8, depth=2, compiled_gather=False))
    candidates.append(Candidate("optional path", Failing(), checked=True, optional=True))
    _, skipped = check_against_reference(candidates, torch.randn(4, 8))
    assert skipped == {"optional path": "RuntimeError: no compiler here"}
    assert "optional path" not in [c.name for c in candidates]
    candidates.append(Candidate("required path", Failing(), checked=True))
    with pytest.raises(RuntimeError, match="no compiler here"):
        check_against_reference(candidates, torch.randn(4, 8))


def test_benchmark_refuses_an_implementation_that_disagrees_with_the_reference():
    config = LayerBenchConfig(width=8, depth=2, compiled_gather=False)
    candidates = build_candidates(config)
    wrong = torch.nn.Linear(8, 8)
    wrong.impl = "wrong"  # a module pretending to be an FFF path
    candidates.append(Candidate("broken", wrong, "wrong"))
    with pytest.raises(AssertionError, match="broken differs from the reference"):
        check_against_reference(candidates, torch.randn(4, 8))


def test_shape_benchmark_times_every_trees_by_depth_shape(tmp_path):
    from ultrafastbert.bench.layer import run_shape_benchmark

    before = torch.get_num_threads()
    report = run_shape_benchmark(
        ((1, 3), (2, 2), (4, 1)), width=16, tokens=64, threads=before + 1, output=tmp_path / "shapes"
    )
    assert torch.get_num_threads() == before and report["machine"]["torch_threads"] == before + 1
    saved = json.loads((tmp_path / "shapes.json").read_text())
    assert [(r["trees"], r["depth"], r["neurons_per_token"]) for r in saved["results"]] == [
        (1, 3, 4),
        (2, 2, 6),
        (4, 1, 8),
    ]
    assert all(r["us_per_token"] > 0 for r in report["results"])
    assert all(r["equal_flops_dense_ms"] > 0 for r in report["results"])  # the floor beside every shape


def test_cli_runs_a_pass_per_thread_count_with_all(tmp_path, capsys):
    from ultrafastbert.bench.timing import all_threads
    from ultrafastbert.cli import main

    args = ["bench", "layer", "--tokens", "3", "--train-tokens", "--width", "16", "--depth", "2", "--repeats", "1"]
    out = tmp_path / "layer"
    assert main([*args, "--threads", "1", "all", "--no-compile", "--output", str(out)]) == 0
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [p["threads"] for p in saved["passes"]] == list(dict.fromkeys([1, all_threads()]))
    assert saved["config"]["compiled_gather"] is False and saved["config"]["repeats"] == 1
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*args, "--threads", "two", "--output", str(out)])
    assert "--threads: positive integers or 'all', not 'two'" in capsys.readouterr().err
