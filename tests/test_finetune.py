"""Finetuning: a pretrained folder becomes a classifier / regressor that learns a task, over several seeds."""

from __future__ import annotations

import json
import random

import pytest
from model_helpers import tiny_pretrained

from ultrafastbert.data.tasks import Example, TaskData
from ultrafastbert.model.crammedbert.configuration import CrammedBertConfig
from ultrafastbert.train.finetune import FinetuneConfig, SeedResult, TaskResult, finetune_task, write_results

ANIMALS, COLOURS, TOOLS = ["cat", "dog", "horse", "bird"], ["red", "blue", "green", "pink"], ["saw", "drill", "axe"]
FILLER = ["the", "a", "was", "near", "over", "under", "and", "it", "seen", "today"]


def sentence(rng: random.Random, keyword: str) -> str:
    words = rng.choices(FILLER, k=6)
    words.insert(rng.randrange(len(words) + 1), keyword)
    return " ".join(words)


def topic_task(rng: random.Random, size: int) -> list[Example]:
    groups = [ANIMALS, COLOURS, TOOLS]
    return [Example(sentence(rng, rng.choice(groups[label])), None, label) for label in rng.choices(range(3), k=size)]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrained")
    tokenizer = tiny_pretrained(folder, FILLER + ANIMALS + COLOURS + TOOLS)
    return folder, tokenizer


@pytest.mark.slow
def test_classifier_learns_a_three_label_task(pretrained, tmp_path):
    folder, tokenizer = pretrained
    rng = random.Random(0)
    task = TaskData(
        "topics",
        topic_task(rng, 192),
        topic_task(rng, 96),
        [],
        3,
        False,
        ("accuracy", "macro_f1"),
        ("animal", "colour", "tool"),
    )
    config = FinetuneConfig(lr=5e-3, epochs=8, batch_size=16, seeds=(0, 1, 2), max_length=32)
    result = finetune_task(folder, task, tokenizer, config, show_progress=False)
    assert [s.seed for s in result.seeds] == [0, 1, 2]
    accuracies = sorted(s.metrics["validation"]["accuracy"] for s in result.seeds)
    assert result.median["validation"]["accuracy"] == accuracies[1]
    assert result.median["validation"]["accuracy"] > 0.8  # chance is 1/3
    write_results([result], tmp_path / "results", extra={"model": "tiny"})
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["model"] == "tiny" and saved["tasks"][0]["median"]["validation"]["accuracy"] > 0.8
    assert "| topics | accuracy |" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_regression_with_one_label_learns_a_score(pretrained):
    folder, tokenizer = pretrained
    rng = random.Random(1)

    def examples(size: int) -> list[Example]:
        made = []
        for _ in range(size):
            count = rng.randrange(4)
            words = rng.choices(FILLER, k=5) + ["red"] * count
            rng.shuffle(words)
            made.append(Example(" ".join(words), None, float(count)))
        return made

    task = TaskData("count-red", examples(192), examples(96), [], 1, True, ("pearson", "spearman"), ())
    config = FinetuneConfig(lr=5e-3, epochs=8, batch_size=16, seeds=(0,), max_length=32)
    result = finetune_task(folder, task, tokenizer, config, show_progress=False)
    # 0.78-0.85 across six initialisations of the "pretrained" model; no correlation at all would be about 0
    assert result.median["validation"]["pearson"] > 0.7


def test_capped_subsets_are_uniform_not_the_head_of_a_sorted_file():
    from ultrafastbert.train.finetune import capped

    examples = [Example(f"text {i}", None, i // 100) for i in range(400)]  # sorted by label, like the task files
    subset = capped(examples, 40)
    assert len(subset) == 40 and subset == capped(examples, 40)
    assert {example.label for example in subset} == {0, 1, 2, 3}
    assert capped(examples, None) is examples and capped(examples, 1000) is examples


def test_config_refuses_nonsense_and_truncates_to_the_model_by_default():
    for settings, field_name in (
        ({"epochs": 0}, "epochs"),
        ({"epochs": -1.0}, "epochs"),
        ({"max_train_examples": 0}, "max_train_examples"),
        ({"batch_size": -1}, "batch_size"),
        ({"warmup_fraction": 1.5}, "warmup_fraction"),
    ):
        with pytest.raises(ValueError, match=rf"FinetuneConfig\.{field_name} must"):
            FinetuneConfig(**settings)
    with pytest.raises(ValueError, match="at least one seed"):
        FinetuneConfig(seeds=())
    model_config = CrammedBertConfig.from_preset("tiny-ufb-1x2", max_position_embeddings=32)
    assert FinetuneConfig().max_length_for(model_config) == 32
    assert FinetuneConfig(max_length=16).max_length_for(model_config) == 16
    with pytest.raises(ValueError, match="max_length 64 exceeds the model's max_position_embeddings=32"):
        FinetuneConfig(max_length=64).max_length_for(model_config)


def test_results_are_written_whole(tmp_path):
    seed = SeedResult(0, {"validation": {"accuracy": 0.5}}, 10, 1.0, 0.7)
    write_results([TaskResult("t", "accuracy", [seed])], tmp_path / "out")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.json", "out.md"]  # no temporaries left
    assert json.loads((tmp_path / "out.json").read_text())["tasks"][0]["median"]["validation"]["accuracy"] == 0.5


def own_data_command(folder, tmp_path) -> list[str]:
    """``finetune`` on a tiny CSV of the topic task (one seed, one epoch: seconds)."""
    rng = random.Random(5)
    rows = ["text,label", *(f"{sentence(rng, rng.choice(ANIMALS + TOOLS))},{label}" for label in ("x", "y") * 6)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    train = str(tmp_path / "train.csv")
    return ["finetune", "--model", str(folder), "--train-file", train, "--validation-file", train, "--seeds", "0"]


def test_a_second_finetune_into_a_folder_in_use_is_refused_naming_the_holder(pretrained, tmp_path):
    import os

    from ultrafastbert.cli import main
    from ultrafastbert.train.run_folder import run_folder_lock

    command = own_data_command(pretrained[0], tmp_path)
    with run_folder_lock(tmp_path / "out"):
        with pytest.raises(SystemExit, match=rf"in use by another run \(pid {os.getpid()}\)"):
            main([*command, "--epochs", "1", "--output-dir", str(tmp_path / "out")])
        assert [path.name for path in (tmp_path / "out").iterdir()] == [".run.lock"]  # nothing written


def test_the_output_folder_may_not_be_hold_or_lie_inside_the_input_model(pretrained, tmp_path):
    import shutil

    from ultrafastbert.cli import main

    model = tmp_path / "parent" / "model"
    shutil.copytree(pretrained[0], model)
    before = sorted(path.name for path in model.iterdir())
    command = [*own_data_command(model, tmp_path), "--epochs", "1", "--overwrite", "--output-dir"]
    for output, message in (
        (model, "is the input model's folder"),
        (tmp_path / "parent" / "model" / ".", "is the input model's folder"),
        (model / "finetuned", "lies inside the input model's folder"),
        (tmp_path / "parent", "holds the input model"),
    ):
        with pytest.raises(SystemExit, match=f"--output-dir .* {message}"):
            main([*command, str(output)])
    assert sorted(path.name for path in model.iterdir()) == before  # the model is as it was


@pytest.mark.parametrize("task_type", ["auto", "regression"])
def test_a_nan_among_numeric_labels_is_named_as_such_not_as_a_type_mix(tmp_path, task_type):
    from ultrafastbert.data.userdata import UserColumns, UserDataError, load_user_task

    rows = ["text,score", "a cat,0.5", "a dog,1.25", "a saw,nan", "a bird,2.0"]
    (tmp_path / "scores.csv").write_text("\n".join(rows) + "\n")
    path = tmp_path / "scores.csv"
    with pytest.raises(UserDataError, match=r"scores\.csv:4: label 'nan' in column 'score' is not a finite number"):
        load_user_task(path, path, UserColumns("text", "score"), task_type=task_type)


def test_labels_that_are_not_an_object_in_a_model_config_are_one_line(tmp_path, capsys):
    from ultrafastbert.cli import main

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "crammedBERT", "id2label": ["neg", "pos"]}))
    with pytest.raises(SystemExit) as refused:
        main(["classify", "--model", str(tmp_path)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert refused.value.code == 2 and "id2label must be an object such as" in error and "not a list" in error
