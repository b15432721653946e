"""The demo pipeline end to end at a toy budget, on small synthetic data in place of the embedded default."""

from __future__ import annotations

import json
import random

import pytest

from ultrafastbert.data import DefaultData, TaskData, corpus_from_paths
from ultrafastbert.data.tasks import Example
from ultrafastbert.demo import DemoConfig, run_demo
from ultrafastbert.train.finetune import FinetuneConfig

WORDS = "the a of to in is was cat dog sat ran on under mat big small red blue quick slow and then".split()


def sentences(rng: random.Random, count: int, keyword: str = "") -> list[str]:
    return [" ".join(rng.choices(WORDS, k=8) + ([keyword] if keyword else [])) for _ in range(count)]


def small_data(tmp_path) -> DefaultData:
    rng = random.Random(0)
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(" ".join(rng.choices(WORDS, k=40)) for _ in range(1500)))
    corpus = corpus_from_paths([text], tmp_path / "cache")

    def split(size: int) -> list[Example]:
        labels = rng.choices([0, 1], k=size)
        return [Example(sentences(rng, 1, ["north", "south"][label])[0], None, label) for label in labels]

    def pairs(size: int) -> list[Example]:
        return [Example(sentences(rng, 1)[0], sentences(rng, 1)[0], rng.randint(0, 1)) for _ in range(size)]

    tasks = {
        "direction": TaskData("direction", split(48), split(16), split(16), 2, False, ("accuracy",), ("n", "s")),
        "pairs": TaskData("pairs", pairs(48), pairs(16), pairs(16), 2, False, ("accuracy", "f1"), ("no", "yes")),
    }
    return DefaultData(corpus, tasks)


@pytest.mark.slow
def test_demo_pipeline_writes_a_report(tmp_path):
    config = DemoConfig(
        budget_minutes=0.3, output_dir=str(tmp_path / "demo"), cache_dir=str(tmp_path / "cache"), vocab_size=80,
        seq_len=32, hidden_size=16, layers=1, heads=2, dense_width=16, fff_depth=3, tasks=("direction", "pairs"),
        micro_batch=8, final_batch=16, bench_tokens=(1, 16), paper_size_bench=False,
        finetune=FinetuneConfig(lr=1e-3, batch_size=16, epochs=1, seeds=(0, 1), max_length=32),
    )
    report = run_demo(config, small_data(tmp_path))
    out = tmp_path / "demo"
    saved = json.loads((out / "report.json").read_text())
    assert saved["retention"] == report["retention"]
    dense = [t["median"]["test"]["accuracy"] for t in saved["finetuning"]["dense"]]
    fff = [t["median"]["test"]["accuracy"] for t in saved["finetuning"]["fff"]]
    assert abs(saved["retention"] - (sum(fff) / len(fff)) / (sum(dense) / len(dense))) < 1e-12
    # gain above majority: averaged over the tasks where dense beats the majority by more than its seed spread
    gains = []
    for d, f in zip(saved["finetuning"]["dense"], saved["finetuning"]["fff"], strict=True):
        seeds = [s["metrics"]["test"]["accuracy"] for s in d["seeds"]]
        majority = saved["majority_baseline"][d["task"]]
        dense_gain = d["median"]["test"]["accuracy"] - majority
        if dense_gain > max(seeds) - min(seeds) and dense_gain > 0:
            gains.append((f["median"]["test"]["accuracy"] - majority) / dense_gain)
    expected = sum(gains) / len(gains) if gains else None
    assert saved["retention_gain_above_majority"] == (pytest.approx(expected) if gains else None)
    assert saved["pretraining"]["fff"]["name"] == "UltraFastBERT-1x3" and saved["pretraining"]["fff"]["steps"] >= 1
    assert saved["neurons_per_token"] == {"dense": 16, "fff": 4} and saved["neurons"]["fff"] == 15
    assert set(saved["layer_speed"]["demo_size"]) == {"1", "16"} and saved["layer_speed"]["paper_size"] is None
    assert len(saved["model_ms_batch8"]) == 3
    markdown = (out / "report.md").read_text()
    assert "Retention (FFF average / dense average)" in markdown and "| direction | accuracy |" in markdown
    assert "Gain above majority" in markdown
    for plot in ("learning_curves.png", "task_scores.png", "speed.png"):
        assert (out / plot).stat().st_size > 0


def test_demo_flags_build_the_demo_config():
    from ultrafastbert.cli import build_parser
    from ultrafastbert.flags import from_flags

    argv = ["demo", "--budget-minutes", "2", "--output", "out", "--batch", "32", "--no-paper-size-bench"]
    config = from_flags(DemoConfig, build_parser(["demo"]).parse_args(argv))
    assert config == DemoConfig(budget_minutes=2.0, output_dir="out", final_batch=32, paper_size_bench=False)
    assert config.finetune.lr == 2e-4  # the demo's own finetuning defaults, not FinetuneConfig's
