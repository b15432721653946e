"""The quality study: every variant end to end at a toy size, resume, bad input, retention arithmetic, tree health."""

from __future__ import annotations

import json
import math
import os
import random

import pytest
import torch

from ultrafastbert.data import DefaultData, TaskData, corpus_from_paths
from ultrafastbert.data.tasks import Example
from ultrafastbert.fff import FFF
from ultrafastbert.model.crammedbert.configuration import CrammedBertConfig
from ultrafastbert.model.crammedbert.modeling import CrammedBertForMaskedLM
from ultrafastbert.model.health import model_tree_health, node_visits, tree_health
from ultrafastbert.study import (
    VARIANTS,
    StudyError,
    TaskScores,
    retention,
    run_study,
    study_config,
    tree_depth_for,
    variant_fields,
)
from ultrafastbert.study import run as study_run

WORDS = "the a of to in is was cat dog sat ran on under mat big small red blue quick slow and then".split()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> DefaultData:
    folder = tmp_path_factory.mktemp("study_data")
    rng = random.Random(0)
    text = folder / "corpus.txt"
    text.write_text("\n\n".join(" ".join(rng.choices(WORDS, k=40)) for _ in range(600)))
    corpus = corpus_from_paths([text], folder / "cache")

    def sentence(keyword: str = "") -> str:
        return " ".join(rng.choices(WORDS, k=6) + ([keyword] if keyword else []))

    def split(size: int) -> list[Example]:
        labels = rng.choices([0, 1], k=size)
        return [Example(sentence(["north", "south"][label]), None, label) for label in labels]

    def pairs(size: int) -> list[Example]:
        return [Example(sentence(), sentence(), rng.randint(0, 1)) for _ in range(size)]

    tasks = {
        "direction": TaskData("direction", split(24), split(12), split(12), 2, False, ("accuracy",), ("n", "s")),
        "pairs": TaskData("pairs", pairs(24), pairs(12), pairs(12), 2, False, ("accuracy", "f1"), ("no", "yes")),
    }
    return DefaultData(corpus, tasks)


def toy(tmp_path, **overrides):
    settings = {
        "output_dir": str(tmp_path / "study"),
        "cache_dir": str(tmp_path / "cache"),
        "tasks": ("direction", "pairs"),
    }
    return study_config("toy", **{**settings, **overrides})


def test_toy_study_over_every_variant_writes_the_report(tmp_path, small_data):
    report = run_study(toy(tmp_path), small_data)
    out = tmp_path / "study"
    assert list(report["pretraining"]) == list(VARIANTS)
    saved = json.loads((out / "report.json").read_text())
    assert saved["retention"] == report["retention"]
    pretraining = saved["pretraining"]
    assert all(summary["steps"] == 3 for summary in pretraining.values())
    # dense width 32 -> trees of depth 4 (31 nodes); the variants follow the rule
    assert pretraining["fff"]["name"] == "UltraFastBERT-1x4" and pretraining["fff"]["ff_neurons_per_token"] == 5
    assert pretraining["narrow"]["ff_neurons_per_token"] == 5 and pretraining["narrow4"]["ff_neurons_per_token"] == 20
    assert pretraining["no-ff"]["ff_neurons_per_token"] == 0 and pretraining["no-ff"]["ff_flops_per_token"] == 0
    assert pretraining["fff-16trees"]["name"] == "UltraFastBERT-16x0"
    assert pretraining["fff"]["ff_flops_per_token"] == 4 * 16 * 5
    assert len(pretraining["fff-4trees"]["tree_health"]) == 1 and pretraining["dense"]["tree_health"] == []
    assert saved["retention"]["dense"]["raw"] == pytest.approx(1.0)
    rates = pretraining["fff"]["tokens_per_second"]
    assert 0 < rates["p10"] <= rates["median"]
    assert saved["timing"]["ms"]["study"]["no-ff"]["8"] == 0.0 and saved["timing"]["ms"]["paper"]["fff"]["8"] > 0
    markdown = (out / "report.md").read_text()
    for heading in ("## Findings", "## Pretraining", "## Retention against the dense reference", "## Tree health"):
        assert heading in markdown
    assert "| copy/unigram guess |" in markdown
    for plot in ("learning_curves.png", "task_scores.png", "quality_vs_flops.png"):
        assert (out / plot).stat().st_size > 0


def test_a_stopped_study_continues_without_redoing_anything(tmp_path, small_data, monkeypatch):
    config = toy(tmp_path, variants=("dense", "fff"))
    original = study_run.pretrain_variant

    def stop_at_fff(config, variant, data, out):
        if variant == "fff":
            raise KeyboardInterrupt("stopped")
        return original(config, variant, data, out)

    monkeypatch.setattr(study_run, "pretrain_variant", stop_at_fff)
    with pytest.raises(KeyboardInterrupt):
        run_study(config, small_data)
    dense_summary = tmp_path / "study" / "dense" / "pretrain.json"
    written = dense_summary.stat().st_mtime_ns
    monkeypatch.setattr(study_run, "pretrain_variant", original)
    first = run_study(config, small_data)
    assert dense_summary.stat().st_mtime_ns == written  # dense was not pretrained again

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(study_run, "finetune_seed", must_not_run)
    monkeypatch.setattr(study_run.Pretrainer, "run", must_not_run)
    monkeypatch.setattr(study_run, "time_feedforwards", must_not_run)
    second = run_study(config, small_data)
    assert second["scores"] == first["scores"] and second["pretraining"] == first["pretraining"]


def test_a_folder_holding_another_study_is_refused(tmp_path, small_data):
    run_study(toy(tmp_path, variants=("dense", "no-ff")), small_data)
    with pytest.raises(StudyError, match=r"other settings \(lr: folder 0.003, now 0.01\)"):
        run_study(toy(tmp_path, variants=("dense", "no-ff"), lr=0.01), small_data)


def test_a_study_folder_in_use_is_refused_naming_the_holder(tmp_path, small_data):
    from ultrafastbert.train.run_folder import RunFolderError, run_folder_lock

    config = toy(tmp_path, variants=("dense", "no-ff"))
    with run_folder_lock(config.output_dir), pytest.raises(RunFolderError, match=f"pid {os.getpid()}"):
        run_study(config, small_data)
    assert not (tmp_path / "study" / "study.json").exists()


def test_bad_settings_are_refused_before_any_pretraining(tmp_path, small_data):
    with pytest.raises(ValueError, match="unknown study variant.*bogus"):
        toy(tmp_path, variants=("dense", "bogus"))
    with pytest.raises(ValueError, match="must include 'dense'"):
        toy(tmp_path, variants=("fff",))
    with pytest.raises(ValueError, match="fff-16trees needs tree depth >= 4"):
        toy(tmp_path, dense_width=8)
    with pytest.raises(StudyError, match="too short: one optimiser step"):
        run_study(toy(tmp_path, minutes_per_variant=1e-7, steps_per_variant=None), small_data)
    assert not (tmp_path / "study" / "dense").exists()
    with pytest.raises(StudyError, match="GLUE task 'rte'"):
        run_study(toy(tmp_path / "glue", glue_dir=str(tmp_path / "no_glue"), glue_tasks=("rte",)), small_data)
    with pytest.raises(StudyError, match="no task.*wn-pos"):
        run_study(toy(tmp_path / "local", tasks=("wn-pos",)), small_data)
    with pytest.raises(ValueError, match="unknown study preset"):
        study_config("huge")


def test_a_refused_setting_leaves_the_folder_free_for_the_corrected_command(tmp_path, small_data):
    """Refusals that need the data or the models come before the folder records the settings."""
    for refused, message in (
        ({"hidden_size": 0}, "cannot build the dense model"),
        ({"minutes_per_variant": 1e-7, "steps_per_variant": None}, "too short"),
    ):
        with pytest.raises(StudyError, match=message):
            run_study(toy(tmp_path, variants=("dense", "no-ff"), **refused), small_data)
        assert not (tmp_path / "study" / "study.json").exists()
    with pytest.raises(ValueError, match="timing_tokens must be token counts >= 1"):
        toy(tmp_path, timing_tokens=(0,))
    report = run_study(toy(tmp_path, variants=("dense", "no-ff")), small_data)  # the corrected command
    assert list(report["pretraining"]) == ["dense", "no-ff"]


def test_a_variant_whose_loss_explodes_stops_the_study_as_diverged(tmp_path, small_data):
    with pytest.raises(StudyError, match="pretraining of dense diverged.*lower --lr"):
        run_study(toy(tmp_path, variants=("dense", "no-ff"), lr=1e6), small_data)
    assert not (tmp_path / "study" / "dense" / "finetune").exists()  # nothing finetuned on a diverged model


def test_variant_pretrainer_is_the_study_s_run_with_overrides(tmp_path, small_data):
    """The pretraining run the study sets up for a variant, as ``benchmarks/tree_balance.py`` reuses it: the study's
    recipe and budget, the variant's model, and any model or training field replaced."""
    config = toy(tmp_path)
    data = study_run.load_study_data(config, small_data)
    plain = study_run.variant_pretrainer(config, "fff", data, tmp_path / "plain")
    assert plain.run_config == {"study_variant": "fff", "model": plain.model.config.to_diff_dict()}
    assert (plain.config.max_steps, plain.config.lr, plain.config.log_every_steps) == (3, config.lr, 1)
    assert plain.model.config.fff_depth == 4 and plain.model.config.fff_balance_rate == 0.0
    tuned = study_run.variant_pretrainer(
        config, "fff", data, tmp_path / "tuned", {"fff_balance_rate": 0.01}, log_every_steps=50
    )
    assert tuned.model.config.fff_balance_rate == 0.01 and tuned.config.log_every_steps == 50
    assert tuned.config.max_steps == 3 and tuned.run_config["model"]["fff_balance_rate"] == 0.01
    # the same seed gives the same weights: the override changes the routing rule, not the initialisation
    pairs = zip(plain.model.parameters(), tuned.model.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_variant_rule():
    assert [tree_depth_for(width) for width in (1, 3, 512, 1024, 3072)] == [0, 1, 8, 9, 11]
    assert variant_fields("fff", 3072) == {"ffn_type": "fff", "fff_trees": 1, "fff_depth": 11}
    assert variant_fields("narrow", 3072)["intermediate_size"] == 12
    assert variant_fields("narrow4", 3072)["intermediate_size"] == 48
    assert variant_fields("fff-16trees", 3072) == {"ffn_type": "fff", "fff_trees": 16, "fff_depth": 7}


# ---------------------------------------------------------------------------------------------------- retention


def test_retention_arithmetic_on_hand_made_numbers():
    dense = [TaskScores("a", (0.80, 0.82, 0.84), 0.50), TaskScores("b", (0.60, 0.70), 0.55)]
    variant = [TaskScores("a", (0.64, 0.65, 0.66), 0.50), TaskScores("b", (0.66, 0.66), 0.55)]
    result = retention(variant, dense)
    # task a: dense gain 0.32 > spread 0.04 -> informative; gain (0.65 - 0.5) / 0.32; ranges apart -> below
    # task b: dense gain 0.10 = spread 0.10 -> not informative (must exceed the spread); ranges overlap
    assert result.informative_tasks == ("a",)
    assert result.gain == pytest.approx(0.15 / 0.32)
    assert result.raw == pytest.approx((0.65 / 0.82 + 0.66 / 0.65) / 2)
    assert [t.versus_dense for t in result.tasks] == ["below", "within noise"]


def test_retention_guards():
    at_majority = [TaskScores("a", (0.5, 0.5), 0.5)]
    below_majority = [TaskScores("a", (0.4,), 0.5)]
    variant = [TaskScores("a", (0.6, 0.7), 0.5)]
    for dense in (at_majority, below_majority):
        result = retention(variant, dense)
        assert result.gain is None and result.informative_tasks == ()
    # zero spread (one seed): beating the majority at all is enough
    one_seed = retention([TaskScores("a", (0.7,), 0.5)], [TaskScores("a", (0.9,), 0.5)])
    assert one_seed.informative_tasks == ("a",) and one_seed.gain == pytest.approx(0.5)
    zero = retention([TaskScores("a", (0.5,), 0.0)], [TaskScores("a", (0.0,), 0.0)])
    assert zero.raw is None and zero.gain is None
    with pytest.raises(ValueError, match="same tasks"):
        retention([TaskScores("b", (0.5,), 0.0)], [TaskScores("a", (0.5,), 0.0)])


# ---------------------------------------------------------------------------------------------------- tree health


def test_tree_health_of_a_hand_built_tree():
    """Depth 2, one tree: a bias of +1 at the root sends every token right (node 2); node 2's bias sends tokens
    with x[0] > 0 right (node 6) and the others left (node 5). Leaves 3 and 4 are never reached."""
    layer = FFF(width=2, depth=2, trees=1)
    with torch.no_grad():
        layer.linear_in.weight.zero_()
        layer.linear_in.bias.zero_()
        layer.linear_in.bias[0] = 1.0
        layer.linear_in.weight[2, 0] = 1.0
    x = torch.tensor([[1.0, 0.0], [2.0, 1.0], [-1.0, 0.0], [3.0, -2.0]])
    visits = node_visits(layer.visited_nodes(x), depth=2, trees=1)
    assert visits.tolist() == [[4, 0, 4, 0, 0, 1, 3]]
    health = tree_health(visits, depth=2)
    assert health.tokens == 4 and health.root_left_share == 0.0
    assert health.unvisited_node_fraction_per_level == [0.0, 0.5, 0.5]
    assert health.unvisited_leaf_fraction == 0.5
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert health.leaf_entropy_ratio == pytest.approx(entropy / math.log(4))


def test_tree_health_over_several_trees_and_depth_zero():
    visits = torch.tensor([[8, 4, 4], [8, 8, 0]])  # two depth-1 trees: one balanced, one all left
    health = tree_health(visits, depth=1)
    assert health.root_left_share == pytest.approx(0.75)
    assert health.leaf_entropy_ratio == pytest.approx(0.5)  # 1 for the balanced tree, 0 for the other
    assert health.unvisited_leaf_fraction == pytest.approx(0.25)
    flat = tree_health(torch.tensor([[5], [5]]), depth=0)
    assert flat.root_left_share is None and flat.leaf_entropy_ratio == 1.0 and flat.unvisited_leaf_fraction == 0.0


def test_model_tree_health_counts_only_real_tokens():
    config = CrammedBertConfig.from_preset(
        "tiny-ufb-2x3", vocab_size=50, max_position_embeddings=16, hidden_size=16, num_attention_heads=2,
        num_hidden_layers=2,
    )  # fmt: skip
    model = CrammedBertForMaskedLM(config)
    ids = torch.randint(7, 50, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    health = model_tree_health(model, [(ids, mask)])
    assert len(health) == 2 and all(layer.tokens == 26 and layer.trees == 2 for layer in health)
    assert model_tree_health(CrammedBertForMaskedLM(CrammedBertConfig.from_preset(
        "tiny-crammed-bert", vocab_size=50, max_position_embeddings=16, hidden_size=16, num_attention_heads=2,
    )), [(ids, None)]) == []  # fmt: skip


def test_inspect_command_prints_tree_health_per_layer(tmp_path, capsys):
    from ultrafastbert.cli import main
    from ultrafastbert.data.tokenizer import train_tokenizer

    rng = random.Random(1)
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(" ".join(rng.choices(WORDS, k=60)) for _ in range(400)))
    folder = tmp_path / "model"
    tokenizer = train_tokenizer([text.read_text()], vocab_size=60, output_dir=folder)
    config = CrammedBertConfig.from_preset(
        "tiny-ufb-1x3", vocab_size=len(tokenizer), max_position_embeddings=32, hidden_size=16, num_attention_heads=2,
        num_hidden_layers=2,
    )  # fmt: skip
    CrammedBertForMaskedLM(config).save_pretrained(folder)
    args = ["inspect", "--model", str(folder), "--corpus", str(text), "--seq-len", "32", "--max-sequences", "4"]
    assert main(args + ["--cache-dir", str(tmp_path / "cache")]) == 0
    corpus, *lines = capsys.readouterr().out.splitlines()
    assert corpus == f"corpus: {text} (--corpus)"  # which text the health was measured on
    assert lines[0].startswith("UltraFastBERT-1x3: tree health over 128 tokens of 4 validation sequences")
    assert len(lines) == 4 and lines[2].split()[0] == "0" and lines[3].split()[0] == "1"
