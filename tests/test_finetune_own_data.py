"""Finetuning on your own files: CSV / TSV / JSON Lines in, a saved classifier or regressor out that the Auto
classes, the pipeline and ``ultrafastbert classify`` load; every bad input refused before training."""

from __future__ import annotations

import csv
import io
import json
import random
import sys
from pathlib import Path

import pytest
from model_helpers import tiny_pretrained
from scipy import stats
from transformers import AutoModelForSequenceClassification, pipeline

import ultrafastbert  # noqa: F401  (registers the Auto classes)
from ultrafastbert.cli import main
from ultrafastbert.data.userdata import UserColumns, UserDataError, load_user_task
from ultrafastbert.train import jobs

GROUPS = {"animal": ["cat", "dog", "horse", "bird"], "colour": ["red", "blue", "green", "pink"], "tool": ["saw", "axe"]}
FILLER = ["the", "a", "was", "near", "over", "under", "and", "it", "seen", "today"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny masked-LM folder with its tokenizer (random weights: finetuning has to do all the work)."""
    folder = tmp_path_factory.mktemp("pretrained")
    tiny_pretrained(folder, FILLER + [word for group in GROUPS.values() for word in group])
    return folder


def topic_rows(rng: random.Random, size: int) -> list[dict[str, str]]:
    rows = []
    for _ in range(size):
        label = rng.choice(sorted(GROUPS))
        words = rng.choices(FILLER, k=5)
        words.insert(rng.randrange(6), rng.choice(GROUPS[label]))
        rows.append({"id": str(len(rows)), "review": ", ".join(words[:2]) + " " + " ".join(words[2:]), "topic": label})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def count_rows(rng: random.Random, size: int) -> list[dict]:
    """Regression: the score is how often 'red' occurs, plus a fraction, so labels are non-integer numbers."""
    rows = []
    for _ in range(size):
        count = rng.randrange(4)
        words = rng.choices(FILLER, k=5) + ["red"] * count
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "score": count + 0.5})
    return rows


FAST = ["--epochs", "8", "--lr", "5e-3", "--batch-size", "16", "--max-length", "32"]


@pytest.mark.slow
def test_three_class_csv_to_a_saved_classifier_that_the_auto_class_pipeline_and_classify_load(
    pretrained, tmp_path, capsys, monkeypatch
):
    rng = random.Random(0)
    train = write_csv(tmp_path / "train.csv", topic_rows(rng, 192), ["id", "review", "topic"])
    validation = write_csv(tmp_path / "validation.csv", topic_rows(rng, 64), ["id", "review", "topic"])
    test_rows = topic_rows(rng, 20)
    test = write_csv(tmp_path / "test.csv", test_rows, ["id", "review"])  # no labels: predicted only
    out = tmp_path / "out"
    args = ["finetune", "--model", str(pretrained), "--train-file", str(train), "--validation-file", str(validation)]
    args += ["--test-file", str(test), "--text-column", "review", "--label-column", "topic"]
    assert main([*args, "--output-dir", str(out), "--seeds", "0", "1", *FAST]) == 0
    name = tmp_path.name  # train.csv is named after its folder
    assert f"| {name} | accuracy |" in capsys.readouterr().out

    results = json.loads((out / "results.json").read_text())
    task = results["tasks"][0]
    assert task["task"] == name and task["kept_seed"] in (0, 1) and len(task["seeds"]) == 2
    kept = next(seed for seed in task["seeds"] if seed["seed"] == task["kept_seed"])
    assert kept["metrics"]["validation"]["accuracy"] > 0.6  # chance is about 1/3
    assert results["labels"][name]["labels"] == ["animal", "colour", "tool"]

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.id2label == {0: "animal", 1: "colour", 2: "tool"} and model.config.label2id["tool"] == 2
    predictions = (out / "predictions.tsv").read_text().splitlines()
    assert predictions[0] == "index\tprediction" and len(predictions) == 21
    assert {line.split("\t")[1] for line in predictions[1:]} <= {"animal", "colour", "tool"}
    agree = sum(line.split("\t")[1] == row["topic"] for line, row in zip(predictions[1:], test_rows, strict=True))
    assert agree >= 11  # the saved model is the trained one, not a fresh head (chance: about 7 of 20)

    classifier = pipeline("text-classification", model=str(out))
    answers = classifier([row["review"] for row in test_rows])
    assert [answer["label"] for answer in answers] == [line.split("\t")[1] for line in predictions[1:]]

    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(row["review"] for row in test_rows) + "\n"))
    assert main(["classify", "--model", str(out)]) == 0
    printed = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == [answer["label"] for answer in answers]


@pytest.mark.slow
def test_regression_jsonl_pairs_learn_a_score_and_predict_numbers(pretrained, tmp_path, capsys):
    rng = random.Random(1)
    records = count_rows(rng, 192)
    pairs = [{"first": record["text"], "second": "the and", "score": record["score"]} for record in records]
    train = write_jsonl(tmp_path / "train.jsonl", pairs[:160])
    validation = write_jsonl(tmp_path / "dev.jsonl", pairs[160:])
    out = tmp_path / "out"
    args = ["finetune", "--model", str(pretrained), "--train-file", str(train), "--validation-file", str(validation)]
    args += ["--test-file", str(validation), "--text-column", "first", "--text-pair-column", "second"]
    args += ["--label-column", "score", "--task-name", "count-red", "--output-dir", str(out), "--seeds", "0"]
    assert main([*args, *FAST]) == 0
    capsys.readouterr()
    task = json.loads((out / "results.json").read_text())["tasks"][0]
    assert task["task"] == "count-red" and task["main_metric"] == "pearson"
    assert set(task["median"]["validation"]) == {"pearson", "spearman", "mse"}
    assert task["median"]["validation"]["pearson"] > 0.6  # no learning would be about 0
    assert task["median"]["test"] == task["median"]["validation"]  # the same labelled file, scored twice
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    scores = [float(line.split("\t")[1]) for line in (out / "predictions.tsv").read_text().splitlines()[1:]]
    labels = [record["score"] for record in pairs[160:]]
    assert len(scores) == 32 and stats.pearsonr(scores, labels)[0] > 0.6  # the kept model wrote them


def test_tsv_integer_labels_sort_numerically_and_json_floats_mean_regression(tmp_path):
    rows = "text\tlabel\n" + "".join(f"word {i} \"quoted\tclass\n".replace("class", str(i % 11)) for i in range(22))
    (tmp_path / "t.tsv").write_text(rows)
    task = load_user_task(tmp_path / "t.tsv", tmp_path / "t.tsv", UserColumns("text", "label"))
    assert task.label_names == tuple(str(i) for i in range(11)) and not task.is_regression
    assert task.train[0].text_a == 'word 0 "quoted' and task.unlabelled_test == []
    write_jsonl(tmp_path / "r.jsonl", [{"text": "a", "y": 1}, {"text": "b", "y": 2.5}])
    regression = load_user_task(tmp_path / "r.jsonl", tmp_path / "r.jsonl", UserColumns("text", "y"))
    assert regression.is_regression and regression.num_labels == 1 and regression.metric_names[0] == "pearson"
    forced = load_user_task(
        tmp_path / "t.tsv", tmp_path / "t.tsv", UserColumns("text", "label"), task_type="regression"
    )
    assert forced.is_regression and forced.train[3].label == 3.0


BAD_INPUTS = [
    ("missing-file", "no such file"),
    ("missing-column", "validation.csv:2: missing column 'topic' (found: 'id', 'review')"),
    ("empty-file", "the file is empty"),
    ("header-only", "has a header but no records"),
    ("unseen-label", "label 'plant' does not occur in the training file"),
    ("regression-words", "is not a number (a regression task needs numeric labels)"),
    ("mixed-types", "mixed label types in column 'topic'"),
    ("one-label", "holds a single label 'animal'"),
    ("ragged-row", "3 fields where the header has 2"),
    ("unknown-extension", "unknown file type '.txt'"),
]


@pytest.mark.parametrize(("case", "reason"), BAD_INPUTS)
def test_bad_own_data_is_one_line_naming_file_and_line_before_any_training(
    case, reason, pretrained, tmp_path, monkeypatch
):
    def must_not_train(*args, **kwargs):
        raise AssertionError("training started before the data was checked")

    monkeypatch.setattr(jobs, "finetune_task", must_not_train)
    rng = random.Random(2)
    good = topic_rows(rng, 12)
    train = write_csv(tmp_path / "train.csv", good, ["review", "topic"])
    validation = write_csv(tmp_path / "validation.csv", good[:4], ["review", "topic"])
    extra: list[str] = []
    if case == "missing-file":
        validation = tmp_path / "nope.csv"
    elif case == "missing-column":
        validation = write_csv(tmp_path / "validation.csv", good, ["id", "review"])
    elif case == "empty-file":
        train.write_text("")
    elif case == "header-only":
        train.write_text("review,topic\n")
    elif case == "unseen-label":
        unseen = [*good[:3], {"review": "x", "topic": "plant"}]
        validation = write_csv(tmp_path / "validation.csv", unseen, ["review", "topic"])
    elif case == "regression-words":
        extra = ["--task-type", "regression"]
    elif case == "mixed-types":
        train = write_csv(tmp_path / "train.csv", [*good, {"review": "x", "topic": "7"}], ["review", "topic"])
    elif case == "one-label":
        rows = [{**row, "topic": "animal"} for row in good]
        train = write_csv(tmp_path / "train.csv", rows, ["review", "topic"])
    elif case == "ragged-row":
        train.write_text("review,topic\na cat,animal\na saw,tool,extra\n")
    elif case == "unknown-extension":
        train = tmp_path / "train.txt"
        train.write_text("review,topic\n")
    out = tmp_path / "out"
    args = ["finetune", "--model", str(pretrained), "--train-file", str(train), "--validation-file", str(validation)]
    with pytest.raises(SystemExit) as refused:
        main([*args, "--text-column", "review", "--label-column", "topic", "--output-dir", str(out), *extra])
    message = str(refused.value.code)
    assert message.startswith("ultrafastbert finetune: error: ") and reason in message
    assert "\n" not in message and "Traceback" not in message
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # nothing written


def test_line_numbers_point_at_the_bad_record(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    with path.open("a") as handle:
        handle.write('{"text": "c"}\n')
    with pytest.raises(UserDataError, match=r"t\.jsonl:3: missing column 'label' \(found: 'text'\)"):
        load_user_task(path, path, UserColumns("text", "label"))
    path.write_text('{"text": "a", "label": "x"}\n[1, 2]\n')
    with pytest.raises(UserDataError, match=r"t\.jsonl:2: expected a JSON object, got list"):
        load_user_task(path, path, UserColumns("text", "label"))


def test_output_folder_and_task_choice_mistakes_are_refused(pretrained, tmp_path, capsys):
    rng = random.Random(3)
    train = write_csv(tmp_path / "train.csv", topic_rows(rng, 12), ["review", "topic"])
    base = ["finetune", "--model", str(pretrained), "--train-file", str(train), "--validation-file", str(train)]
    base += ["--text-column", "review", "--label-column", "topic"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="is not empty: choose another folder or pass --overwrite"):
        main([*base, "--output-dir", str(tmp_path / "full")])
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit, match="is the input model's folder"):
        main([*base, "--output-dir", str(pretrained), "--overwrite"])
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit, match=r"cannot write .*a-file/out"):
        main([*base, "--output-dir", str(tmp_path / "a-file" / "out")])
    with pytest.raises(SystemExit) as refused:  # argparse: usage and exit code 2, no traceback
        main([*base, "--output-dir", str(tmp_path / "o"), "--tasks", "sst2"])
    assert refused.value.code == 2 and "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["finetune", "--model", str(pretrained), "--output-dir", str(tmp_path / "o"), "--tasks", "no-such"])
    assert refused.value.code == 2 and "unknown task 'no-such'" in capsys.readouterr().err


def test_classify_refuses_a_folder_without_a_trained_head(pretrained, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a cat was seen\n"))
    with pytest.raises(SystemExit) as refused:
        main(["classify", "--model", str(pretrained)])
    message = str(refused.value.code)
    assert "holds no trained classification head (CrammedBertForMaskedLM" in message and "finetune it first" in message
