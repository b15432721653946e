"""The capacity benchmark: its facts, its refusals of nonsense settings, and a smoke run end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ultrafastbert.capacity.config import ARMS, CapacityConfig, capacity_config
from ultrafastbert.capacity.facts import IGNORE, split_wordnet, synthetic_facts, wordnet_lexname_facts
from ultrafastbert.capacity.run import build_model, feedforward_cost
from ultrafastbert.cli import main
from ultrafastbert.data.debian import Synset


def test_synthetic_facts_are_distinct_people_with_one_value_per_attribute():
    facts = synthetic_facts(people=50, attributes=3, values=7, name_pool=8, seed=1)
    assert facts.input_ids.shape == (50, 5) and facts.facts == 150
    names = {tuple(row) for row in facts.input_ids[:, :2].tolist()}
    assert len(names) == 50  # no two people share a name
    asked = facts.labels[:, 2:]
    assert (facts.labels[:, :2] == IGNORE).all()
    value_ids = asked - (1 + 2 * 8 + 3)
    assert value_ids.min() >= 0 and value_ids.max() < 7 and len(value_ids.unique()) > 1
    assert int(facts.input_ids.max()) < facts.vocab_size and int(asked.max()) < facts.vocab_size
    again = synthetic_facts(people=50, attributes=3, values=7, name_pool=8, seed=1)
    assert torch.equal(again.labels, facts.labels)  # seeded
    assert not torch.equal(synthetic_facts(50, 3, 7, 8, seed=2).labels, facts.labels)


def test_wordnet_facts_keep_unambiguous_short_lemmas():
    def synset(lexname, *words):
        return Synset("0", lexname.split(".")[0], lexname, words, "", ())

    synsets = [
        synset("noun.animal", "cat", "Felis catus"),
        synset("noun.artifact", "cat", "lathe"),  # "cat" has two files: ambiguous, dropped
        synset("noun.animal", "dog", "x"),  # one letter: too short
        synset("verb.motion", "run", "sprint-it", "racecourse"),  # not letters a-z / too long
    ]
    assert wordnet_lexname_facts(synsets, max_letters=6) == [
        ("lathe", "noun.artifact"),
        ("dog", "noun.animal"),
        ("run", "verb.motion"),
    ]
    pairs = [(f"w{i}", "noun.animal") for i in range(10)]
    small, heldout = split_wordnet(pairs, 3, 2, seed=0)
    large, heldout_large = split_wordnet(pairs, 6, 2, seed=0)
    assert large[:3] == small and heldout == heldout_large and not set(heldout) & set(large)
    with pytest.raises(ValueError, match="usable lemmas"):
        split_wordnet(pairs, 9, 2, seed=0)


def test_arms_cost_what_they_claim():
    """narrow and both trees evaluate D+1 neurons a token, wide as many as the tree holds, no-ff none."""
    config = CapacityConfig(depth=4, hidden_size=16, heads=2, wordnet_lemmas=())
    facts = synthetic_facts(8, 2, 4, 4, seed=0)
    cost = {arm: feedforward_cost(build_model(arm, config, facts), config) for arm in ARMS}
    assert cost["no-ff"] == (0, 0, 0)
    trees = (cost["fff"], cost["fff-balanced"], cost["fff-balance-loss"])
    assert cost["narrow"][1] == 5 and all(tree[1] == 5 for tree in trees)
    assert all(tree[0] == 31 * 16 * 2 + 31 for tree in trees)  # in, out, node biases
    assert cost["wide"] == (31 * 16 * 2, 31, 4 * 16 * 31)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--people", "0"], "--people: must be > 0"),
        (["--values", "1"], "--values: must be >= 2"),
        (["--balance-rate", "-0.5"], "--balance-rate: must be >= 0"),
        (["--arms", "fff", "moe"], "unknown arm 'moe'"),
        (["--people", "70000"], "cannot have distinct names"),
    ],
)
def test_nonsense_settings_are_one_line_errors_before_any_work(tmp_path, capsys, flags, message):
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        main(["capacity", "--preset", "smoke", "--output", str(output), *flags])
    assert stopped.value.code not in (0, None)
    error = capsys.readouterr().err if stopped.value.code == 2 else str(stopped.value.code)
    assert message in error and "Traceback" not in error
    assert not output.exists()


def test_config_checks_values_given_in_python():
    with pytest.raises(ValueError, match="people"):
        CapacityConfig(people=(0,))
    with pytest.raises(ValueError, match="repeat"):
        CapacityConfig(arms=("fff", "fff"))
    with pytest.raises(ValueError, match="unknown capacity preset"):
        capacity_config("huge")


@pytest.mark.slow
def test_smoke_run_recalls_far_above_chance_and_resumes(tmp_path, capsys):
    output = tmp_path / "capacity"
    assert main(["capacity", "--preset", "smoke", "--output", str(output)]) == 0
    report = json.loads((output / "report.json").read_text())
    rows = {row["arm"]: row for row in report["results"]}
    assert set(rows) == set(ARMS)
    config = capacity_config("smoke")
    chance = 1 / config.values
    assert rows["wide"]["recall"] > 8 * chance  # measured: about 0.9 against chance 1/16
    for row in rows.values():
        assert 0 <= row["recall"] <= 1
        assert math.isclose(row["bits_stored"], row["recall"] * row["facts"] * math.log2(config.values))
    assert rows["fff-balanced"]["tree_health"][0]["unvisited_leaf_fraction"] < 0.5
    assert (output / "report.md").read_text().count("| 128 |") == len(ARMS)
    assert (output / "recall_vs_facts.png").is_file() and (output / "bits_vs_flops.png").is_file()

    # A rerun of the same settings trains nothing: every arm's result is read back.
    first = (output / "arms" / "synthetic-128-wide.json").read_text()
    capsys.readouterr()
    assert main(["capacity", "--preset", "smoke", "--output", str(output)]) == 0
    assert "recall" not in capsys.readouterr().err  # no arm trained again
    assert (output / "arms" / "synthetic-128-wide.json").read_text() == first

    # Other settings into the same folder are refused, naming the setting.
    with pytest.raises(SystemExit) as stopped:
        main(["capacity", "--preset", "smoke", "--output", str(output), "--values", "8"])
    assert "other settings (values)" in str(stopped.value.code)


def test_acceptance_counts_what_each_feedforward_adds_above_no_ff():
    """The verdict compares total bits (the bar) and, beside it, each feedforward's own bits above the
    attention-only arm: 10k over a 6k floor against the narrow arm's 1k and the wide arm's 40k."""
    from ultrafastbert.capacity.report import ArmResult, acceptance

    def arm(name: str, bits: float, size: int = 64) -> ArmResult:
        return ArmResult(
            task="synthetic", arm=name, size=size, facts=4 * size, values=64, recall=0.5, bits_stored=bits,
            recall_curve=[], final_loss=0.0, steps=1, batch_rows=1, ff_parameters=1, ff_neurons_per_token=1,
            ff_flops_per_token=1, bits_per_ff_parameter=None, ms_per_step=1.0, train_seconds=1.0, tree_health=None,
        )  # fmt: skip

    results = [arm("no-ff", 6000), arm("narrow", 7000), arm("fff-balanced", 16000), arm("wide", 46000)]
    results += [arm("wide", 1.0, size=8)]  # a smaller N does not count
    verdict = acceptance(results)
    assert verdict["times_narrow"] == pytest.approx(16000 / 7000) and not verdict["met"]
    own = verdict["above_no_ff"]
    assert own["balanced_bits_above_no_ff"] == 10000
    assert own["times_narrow"] == pytest.approx(10.0) and own["share_of_wide"] == pytest.approx(0.25)
    assert acceptance([r for r in results if r.arm != "no-ff"])["above_no_ff"] is None
