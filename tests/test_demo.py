"""The demo: the quality study's ``demo`` preset, end to end at a toy size on small synthetic data in place of the
embedded default; its summary, its resume, and its flags."""

from __future__ import annotations

import json
import random

import pytest

from ultrafastbert.data import DefaultData, TaskData, corpus_from_paths
from ultrafastbert.data.tasks import Example
from ultrafastbert.demo import run_demo
from ultrafastbert.demo_config import DemoConfig
from ultrafastbert.study import run as study_run
from ultrafastbert.study.config import STUDY_PRESETS, STUDY_TASKS, study_config
from ultrafastbert.train.pretrain import Pretrainer

WORDS = "the a of to in is was cat dog sat ran on under mat big small red blue quick slow and then".split()

# the toy study's sizes on the synthetic tasks, at most 3 steps each within the minutes that the budget gives
TOY_SIZES = {**STUDY_PRESETS["toy"], "tasks": ("direction", "pairs"), "vocab_size": 80}
del TOY_SIZES["minutes_per_variant"]


def sentences(rng: random.Random, count: int, keyword: str = "") -> list[str]:
    return [" ".join(rng.choices(WORDS, k=8) + ([keyword] if keyword else [])) for _ in range(count)]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> DefaultData:
    folder = tmp_path_factory.mktemp("demo_data")
    rng = random.Random(0)
    text = folder / "corpus.txt"
    text.write_text("\n\n".join(" ".join(rng.choices(WORDS, k=40)) for _ in range(800)))
    corpus = corpus_from_paths([text], folder / "cache")

    def split(size: int) -> list[Example]:
        labels = rng.choices([0, 1], k=size)
        return [Example(sentences(rng, 1, ["north", "south"][label])[0], None, label) for label in labels]

    def pairs(size: int) -> list[Example]:
        return [Example(sentences(rng, 1)[0], sentences(rng, 1)[0], rng.randint(0, 1)) for _ in range(size)]

    tasks = {
        "direction": TaskData("direction", split(32), split(12), split(12), 2, False, ("accuracy",), ("n", "s")),
        "pairs": TaskData("pairs", pairs(32), pairs(12), pairs(12), 2, False, ("accuracy", "f1"), ("no", "yes")),
    }
    return DefaultData(corpus, tasks)


def demo_config(tmp_path, budget_minutes: float = 60.0) -> DemoConfig:
    return DemoConfig(budget_minutes=budget_minutes, output_dir=str(tmp_path / "demo"), cache_dir=str(tmp_path / "c"))


@pytest.mark.slow
def test_demo_runs_the_study_prints_a_summary_and_resumes(tmp_path, small_data, capsys, monkeypatch):
    config = demo_config(tmp_path)
    report = run_demo(config, small_data, command="ultrafastbert demo", **TOY_SIZES)
    out = tmp_path / "demo"
    assert json.loads((out / "report.json").read_text()) == report
    assert json.loads((out / "study.json").read_text()) == config.study_config(**TOY_SIZES).settings()
    assert list(report["pretraining"]) == ["dense", "fff"]
    assert report["settings"]["minutes_per_variant"] == 16.5  # 60 minutes: 55% pretraining, half for each model
    assert all(summary["steps"] == 3 for summary in report["pretraining"].values())
    assert report["pretraining"]["fff"]["name"] == "UltraFastBERT-1x4"
    for plot in ("learning_curves.png", "task_scores.png", "quality_vs_flops.png"):
        assert (out / plot).stat().st_size > 0
    printed = capsys.readouterr().out
    dense, fff = report["pretraining"]["dense"], report["pretraining"]["fff"]
    assert f"| variant: model | dense: {dense['name']} | fff: {fff['name']} |" in printed
    assert f"| {dense['steps']} in {dense['minutes']:.1f} min" in printed
    gain = report["retention"]["fff"]["gain"]
    assert f"{100 * report['retention']['fff']['raw']:.1f}%; {'n/a' if gain is None else f'{100 * gain:.1f}%'} |" in (
        printed
    )
    assert f"report: {out / 'report.md'}" in printed

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(study_run, "finetune_seed", must_not_run)
    monkeypatch.setattr(study_run.Pretrainer, "run", must_not_run)
    again = run_demo(config, small_data, command="ultrafastbert demo", **TOY_SIZES)  # the same command continues
    assert again["scores"] == report["scores"] and again["pretraining"] == report["pretraining"]
    assert f"| {dense['steps']} in {dense['minutes']:.1f} min" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"other settings \(minutes_per_variant: folder 16.5, now 8.25\)"):
        run_demo(demo_config(tmp_path, budget_minutes=30), small_data, **TOY_SIZES)


@pytest.mark.slow
def test_a_demo_resumed_after_a_kill_counts_each_step_once(tmp_path, small_data, monkeypatch):
    """Killed after step 4 with a checkpoint at step 2, the FFF run logs steps 3 and 4 again when it resumes: its
    sequences are those of 6 steps, as for the dense run that was not killed."""
    original = Pretrainer.train_step

    def killed_after_step_4(self, *args, **kwargs):
        fff = self.run_config["study_variant"] == "fff"
        if fff and self.step == 4:
            raise RuntimeError("killed")
        stats = original(self, *args, **kwargs)
        if fff and self.step == 2:
            self.save()
        return stats

    monkeypatch.setattr(Pretrainer, "train_step", killed_after_step_4)
    sizes = {**TOY_SIZES, "steps_per_variant": 6}
    with pytest.raises(RuntimeError, match="killed"):
        run_demo(demo_config(tmp_path), small_data, **sizes)
    monkeypatch.setattr(Pretrainer, "train_step", original)
    report = run_demo(demo_config(tmp_path), small_data, **sizes)
    metrics = (tmp_path / "demo" / "fff" / "pretrain" / "metrics.jsonl").read_text().splitlines()
    logged = [record["step"] for line in metrics if "batch_sequences" in (record := json.loads(line))]
    assert logged == [1, 2, 3, 4, 3, 4, 5, 6]  # steps 3 and 4 logged twice
    per_step = 4  # the toy batch: 4 sequences per step from the first
    assert report["pretraining"]["fff"]["steps"] == 6 and report["pretraining"]["fff"]["sequences"] == 6 * per_step
    assert report["pretraining"]["dense"]["sequences"] == 6 * per_step


def test_the_demo_is_the_study_demo_preset_with_its_budget():
    from ultrafastbert.cli import build_parser
    from ultrafastbert.flags import from_flags

    argv = ["demo", "--budget-minutes", "4", "--output", "out"]
    config = from_flags(DemoConfig, build_parser(["demo"]).parse_args(argv))
    assert config == DemoConfig(budget_minutes=4.0, output_dir="out")
    study = config.study_config()
    assert study == study_config("demo", output_dir="out", minutes_per_variant=4.0 * 0.55 / 2)
    assert study.variants == ("dense", "fff") and study.tasks == STUDY_TASKS
    assert study.finetune_lr == 2e-4 and study.max_train_examples == 2000  # the demo's own finetuning settings
    assert study.model_config("fff", 8192).name == "UltraFastBERT-1x8" and study.dense_width == 512
    # make demo's 10 minutes are the preset as it stands: `ultrafastbert study --preset demo` runs the same study
    assert DemoConfig().study_config() == study_config("demo")
    for bad in ("0", "-1"):
        with pytest.raises(SystemExit):
            build_parser(["demo"]).parse_args(["demo", "--budget-minutes", bad])
    with pytest.raises(ValueError, match="budget_minutes"):
        DemoConfig(budget_minutes=0)
