"""The decoding benchmark and the GPT-3 layer benchmark: the report's records on the smoke preset, the decode loop
against ``generate``, the bytes each model reads, the memory-lean reference, and one-line errors for bad settings."""

from __future__ import annotations

import json

import pytest
import torch

from ultrafastbert.bench import gpt3
from ultrafastbert.bench.config import DECODE_MODELS, DecodeBenchConfig
from ultrafastbert.bench.decode import (
    _Decoder,
    _target_lines,
    build_models,
    run_decode_benchmark,
    weight_bytes_per_step,
)
from ultrafastbert.cli import main
from ultrafastbert.fff import fff_reference, kernels

MODELS = {*DECODE_MODELS, "gpt3-dense", "gpt3-fff"}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(not kernels.available(), reason="the GPT-3 layer times the compiled kernel")
def test_smoke_report_holds_one_record_per_measurement(tmp_path):
    output = tmp_path / "decode"
    report = run_decode_benchmark(DecodeBenchConfig(preset="smoke", threads=1), output=output)
    saved = json.loads((output / "report.json").read_text())
    assert saved["records"] == report["records"]
    records = saved["records"]
    decoding = [r for r in records if r["model"] in DECODE_MODELS]
    layer = [r for r in records if r["model"] in ("gpt3-dense", "gpt3-fff")]
    bandwidth = [r for r in records if "bandwidth_gb_s" in r]
    assert len(decoding) + len(layer) + len(bandwidth) == len(records)
    # every model at every context, batch and dtype of the smoke preset, once
    settings = {(r["context"], r["batch"], r["dtype"]) for r in decoding}
    assert settings == {(c, b, d) for c in (8, 16) for b in (1, 2) for d in ("float32", "bfloat16")}
    assert len(decoding) == len(settings) * len(DECODE_MODELS)
    for r in decoding:
        assert r["tokens_per_s"] > 0 and r["ms_per_token"] > 0 and r["bytes_per_token"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * 1e3 / r["ms_per_step"])
        assert sum(r["shares"].values()) == pytest.approx(1.0)
    by_model = {(r["model"], r["batch"], r["dtype"]): r["bytes_per_token"] for r in decoding}
    for batch, dtype in {(b, d) for _, b, d in settings}:
        no_ff, fff, dense = (by_model[(m, batch, dtype)] for m in ("no-ff", "fff", "dense"))
        assert no_ff < fff < dense
    assert {(r["model"], r["tokens"], r["dtype"]) for r in layer} == {
        (m, t, d) for m in ("gpt3-dense", "gpt3-fff") for t in (1, 2) for d in ("float32", "bfloat16")
    }
    assert all(r["ms"] > 0 and r["floor_ms"] > 0 for r in layer)
    assert len(bandwidth) == 1 and bandwidth[0]["bandwidth_gb_s"] > 0
    text = (output / "report.md").read_text()
    assert saved["machine"]["cpu"] in text and "ultrafastbert bench decode --preset smoke" in text
    assert all(len(saved["load_average"][when]) == 3 for when in ("before", "after"))


def test_decode_loop_is_greedy_generation_with_the_cache():
    """A timed call decodes what ``generate`` does, again after the cache is cropped back."""
    config = DecodeBenchConfig(preset="smoke", models=("fff", "dense"))
    models = build_models(config)
    prompt = torch.randint(0, 8192, (2, 16), generator=torch.Generator().manual_seed(1))
    for model in models.values():
        decoder = _Decoder(model, prompt)
        decoder.prefill()
        for context in (16, 9):
            decoder.context = context
            with torch.inference_mode():
                decoder.reset()
                first = decoder.decode(3)
                decoder.reset()
                again = decoder.decode(3)
                expected = model.generate(prompt[:, :context], max_new_tokens=3, do_sample=False, min_new_tokens=3)
            assert torch.equal(first, expected[:, context:]) and torch.equal(again, first)
        # a batch decodes from the one prefilled sequence's cache, each row from its own token at the context
        rows = prompt[:1].repeat(3, 1)
        rows[1:, 11] = torch.tensor([5, 6])
        single = _Decoder(model, prompt[:1])
        single.prefill()
        batched = single.batched(3, rows)
        batched.context = 12
        with torch.inference_mode():
            batched.reset()
            got = batched.decode(3)
            expected = model.generate(rows[:, :12], max_new_tokens=3, do_sample=False, min_new_tokens=3)
        assert torch.equal(got, expected[:, 12:])


def test_weight_bytes_per_step_count_the_feedforward_each_model_reads():
    config = DecodeBenchConfig(preset="smoke")
    models = build_models(config)
    layers, hidden = models["dense"].config.num_hidden_layers, models["dense"].config.hidden_size
    width, depth = models["dense"].config.intermediate_size, models["fff"].config.fff_depth
    base = {batch: weight_bytes_per_step(models["no-ff"], batch) for batch in (1, 3)}
    norm = 2 * hidden * 4  # the layer's second LayerNorm, which the no-FF model leaves out
    for batch in (1, 3):
        assert weight_bytes_per_step(models["dense"], batch) - base[batch] == layers * (2 * hidden * width * 4 + norm)
        fff_rows = batch * (depth + 1) * (2 * hidden + 1) * 4  # one path per sequence
        assert weight_bytes_per_step(models["fff"], batch) - base[batch] == layers * (fff_rows + norm)
    # the tied head counts once, whole; the embeddings one row per sequence
    head = models["no-ff"].lm_head.weight
    assert base[3] - base[1] == 2 * 2 * hidden * 4 and base[1] > head.numel() * 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_reference_is_the_masking_reference(monkeypatch, dtype):
    monkeypatch.setattr(gpt3, "REFERENCE_CHUNK", 5)  # several chunks of the 31 nodes
    torch.manual_seed(0)
    layer = gpt3.fff_layer(gpt3.Gpt3Shape(width=24, hidden=96, depth=4), dtype)
    assert layer.linear_out.weight.t().is_contiguous()  # stored the way the kernel reads it, once
    x = torch.randn(7, 24, dtype=dtype)
    got, nodes = gpt3.fff_reference_lean(layer, x)
    weights = (layer.linear_in.weight, layer.linear_in.bias, layer.linear_out.weight)
    expected = fff_reference(x, *weights, layer.depth, 1)
    torch.testing.assert_close(got, expected, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-6)
    assert torch.equal(nodes, layer.visited_nodes(x))


@pytest.mark.skipif(not kernels.available(), reason="checks the compiled kernel")
def test_gpt3_check_passes_the_kernel_and_refuses_a_wrong_layer():
    torch.manual_seed(0)
    layer = gpt3.fff_layer(gpt3.Gpt3Shape(width=32, hidden=128, depth=5), torch.float32)
    x = torch.randn(16, 32)
    with torch.inference_mode():
        assert gpt3.check_fff(layer, x) == 0
    real = layer.forward

    def wrong(x, return_path=False):
        out, nodes = real(x, return_path=True)
        return out * 1.01, nodes

    layer.forward = wrong
    with torch.inference_mode(), pytest.raises(AssertionError, match="differs from the reference"):
        gpt3.check_fff(layer, x)


@pytest.mark.skipif(not kernels.available(), reason="the GPT-3 layer times the compiled kernel")
def test_a_fresh_call_never_takes_the_input_of_the_call_before(monkeypatch):
    """Each cache state cycles through inputs of its own: a fresh call on the input the flushed call before it had
    just walked would find its rows in cache."""
    layer = gpt3.fff_layer(gpt3.Gpt3Shape(width=16, hidden=64, depth=3), torch.float32)
    seen = []
    forward = layer.forward

    def recording_forward(x, **kwargs):
        seen.append(x)
        return forward(x, **kwargs)

    monkeypatch.setattr(layer, "forward", recording_forward)
    probe, flush = torch.randn(64), torch.randn(64)
    rounds = gpt3.Rounds(repeats=14, warmup=1)
    _, _, inputs = gpt3.time_layer("fff", layer, (1, 2), torch.float32, probe, flush, rounds, gpt3.CACHE_STATES, 4)
    fresh = {id(x) for count in (1, 2) for x in inputs[(count, "fresh")]}
    assert sum(id(x) in fresh for x in seen) == 2 * (14 + 1)
    assert not any(id(x) in fresh and x is before for before, x in zip(seen, seen[1:], strict=False))


def test_the_report_says_whether_one_token_meets_the_target_and_how_far_the_tree_is_from_its_floor():
    def record(model, dtype, caches, ms, floor_ms):
        return {"model": model, "tokens": 1, "dtype": dtype, "caches": caches, "ms": ms, "floor_ms": floor_ms,
                "time_over_floor": ms / floor_ms, "weight_bytes": 1_570_000}  # fmt: skip

    layer = [
        record("gpt3-dense", "float32", "fresh", 150.0, 120.0),
        record("gpt3-fff", "float32", "fresh", 0.1, 0.04),
        record("gpt3-fff", "float32", "warm", 0.05, 0.04),
        record("gpt3-dense", "bfloat16", "fresh", 100.0, 60.0),
        record("gpt3-fff", "bfloat16", "fresh", 0.08, 0.02),
    ]
    lines = "\n".join(_target_lines(layer, depth=15))
    assert "- float32: 1,200x meets the 1,000x target, which needs 120.0 us per token" in lines
    assert "2.5x its own floor" in lines and "with its rows in cache it takes 50.0 us" in lines
    assert "- bfloat16: 750x misses the 1,000x target, which needs 60.0 us per token" in lines
    assert "its 16 levels" in lines


def _run(report: dict) -> dict:
    """The conditions of the run that wrote ``report``, as its JSON holds them."""
    return json.loads(json.dumps({key: report[key] for key in ("machine", "load_average", "seconds", "config")}))


@pytest.mark.skipif(not kernels.available(), reason="the GPT-3 layer times the compiled kernel")
def test_a_part_left_out_keeps_its_records_from_the_report_there(tmp_path):
    output = tmp_path / "decode"
    decoding = run_decode_benchmark(DecodeBenchConfig(preset="smoke", threads=1, gpt3_layer=False), output=output)
    assert decoding["records"] and all("context" in r for r in decoding["records"])
    both = run_decode_benchmark(DecodeBenchConfig(preset="smoke", threads=1, decoding=False), output=output)
    saved = json.loads((output / "report.json").read_text())
    assert saved["records"] == both["records"]
    assert [r for r in saved["records"] if "context" in r] == decoding["records"]
    layer = [r for r in saved["records"] if "context" not in r]
    assert {r["model"] for r in layer} == {"gpt3-dense", "gpt3-fff", "memory-read"}
    assert saved["runs"] == {"decoding": _run(decoding), "gpt3": _run(both)}
    assert saved["fff_default_vs_reference_relative_error"] == decoding["fff_default_vs_reference_relative_error"]
    text = (output / "report.md").read_text()
    assert "The decoding tables are kept from an earlier run" in text
    assert "--no-gpt3-layer" in text and "--no-decoding" in text
    # the decoding alone again: its records replaced, the GPT-3 layer's kept
    again = run_decode_benchmark(
        DecodeBenchConfig(preset="smoke", threads=1, gpt3_layer=False, contexts=(8,)), output=output
    )
    assert [r for r in again["records"] if "context" not in r] == layer
    assert {r["context"] for r in again["records"] if "context" in r} == {8}
    assert json.loads(json.dumps(again["runs"])) == {"decoding": _run(again), "gpt3": _run(both)}
    assert "The GPT-3 layer's figures are kept from an earlier run" in (output / "report.md").read_text()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--models", "dense", "moe"], "invalid choice: 'moe'"),
        (["--contexts", "0"], "--contexts: must be > 0"),
        (["--contexts", "300"], "context 300 is longer than the tiny-gpt decoder's 256 tokens"),
        (["--new-tokens", "0"], "--new-tokens: must be > 0"),
        (["--batches", "-1"], "--batches: must be > 0"),
        (["--models", "fff", "fff"], "named twice"),
        (["--preset", "gpt9"], "invalid choice: 'gpt9'"),
        (["--no-decoding", "--no-gpt3-layer"], "leave nothing to run"),
    ],
)
def test_bad_settings_are_one_line_errors_before_any_work(tmp_path, capsys, flags, message):
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        main(["bench", "decode", "--preset", "smoke", "--output", str(output), *flags])
    assert stopped.value.code not in (0, None)
    error = capsys.readouterr().err if stopped.value.code == 2 else str(stopped.value.code)
    assert message in error and "Traceback" not in error
    assert not output.exists()


def test_config_checks_values_given_in_python():
    with pytest.raises(ValueError, match="unknown decode model"):
        DecodeBenchConfig(models=("dense", "moe"))
    with pytest.raises(ValueError, match="contexts must be > 0"):
        DecodeBenchConfig(contexts=(0,))
    assert DecodeBenchConfig(preset="smoke", new_tokens=5).new_tokens == 5  # a flag given beats the preset
    assert DecodeBenchConfig(preset="smoke").contexts == (8, 16)
