"""GLUE from small files written in GLUE's distributed TSV layouts, the metric of every task, task batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ultrafastbert.data.metrics import compute_metrics
from ultrafastbert.data.tasks import (
    GLUE_TASKS,
    Example,
    TaskCollator,
    load_glue_task,
    read_glue_tsv,
    task_name,
)
from ultrafastbert.data.tokenizer import train_tokenizer

MNLI_TRAIN_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
)
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER.replace("label1\t", "label1\tlabel2\tlabel3\tlabel4\tlabel5\t")


def _mnli_row(index: int, premise: str, hypothesis: str, label: str, dev: bool) -> str:
    parses = "\t".join(f"( {text} )" for text in (premise, hypothesis, premise, hypothesis))
    labels = "\t".join([label] * (5 if dev else 1))
    return f"{index}\t{index}1\t{index}1n\tfiction\t{parses}\t{premise}\t{hypothesis}\t{labels}\t{label}\n"


def _mnli(dev: bool, genre_rows: list[tuple[str, str, str]]) -> str:
    header = MNLI_DEV_HEADER if dev else MNLI_TRAIN_HEADER
    return header + "".join(_mnli_row(i, *row, dev=dev) for i, row in enumerate(genre_rows))


MNLI_ROWS = [
    ("The cat sat on the mat.", "A cat was sitting.", "entailment"),
    ("The cat sat on the mat.", "The mat was red.", "neutral"),
    ("The cat sat on the mat.", "No cat was there.", "contradiction"),
]

# each task's files, in GLUE's layout (CoLA without a header, MRPC with a byte-order mark, ...)
GLUE_FILES = {
    "CoLA": {
        "train.tsv": "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
        "gj04\t0\t*\tThe more you eat, the most you want.\n"
        "gj04\t1\t\tBill rolled out of the room.\n",
        "dev.tsv": "cj99\t1\t\tThe book was read by everyone.\ncj99\t0\t*\tRead the book was by everyone.\n",
    },
    "SST-2": {
        "train.tsv": "sentence\tlabel\nit 's a charming and often affecting journey . \t1\n"
        "unflinchingly bleak and desperate \t0\n",
        "dev.tsv": "sentence\tlabel\na gorgeous , witty , seductive movie . \t1\nthe acting is dreadful . \t0\n",
    },
    "MRPC": {
        "train.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t1\t2\tHe said " yes " to the offer .\tHe accepted the offer .\n'
        "0\t3\t4\tShares rose 5 percent .\tThe weather was mild .\n",
        "dev.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t5\t6\tThe meeting ended early .\tThe meeting finished early .\n"
        "0\t7\t8\tPrices fell .\tThe team won .\n",
    },
    "STS-B": {
        "train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn airplane is leaving.\t5.000\n"
        "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man plays a flute.\tA man eats.\t0.500\n",
        "dev.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man is singing.\tA man sings.\t4.750\n"
        "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA dog runs.\tA cat sleeps.\t0.250\n"
        "2\tmain-captions\tMSRvid\t2012test\t0003\tnone\tnone\tA girl rides.\tA woman rides.\t2.400\n",
    },
    "QQP": {
        "train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "1\t1\t2\tHow do I learn to cook?\tWhat is the best way to learn cooking?\t1\n"
        "2\t3\t4\tWhy is the sky blue?\tHow tall is Everest?\t0\n"
        "3\t5\tHow do magnets work?\t1\n",  # malformed, as a few rows of the real file are
        "dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "4\t6\t7\tIs coffee healthy?\tIs drinking coffee good for you?\t1\n"
        "5\t8\t9\tWho wrote Hamlet?\tWhat is a prime number?\t0\n",
    },
    "MNLI": {
        "train.tsv": _mnli(False, MNLI_ROWS),
        "dev_matched.tsv": _mnli(True, MNLI_ROWS[:2]),
        "dev_mismatched.tsv": _mnli(True, MNLI_ROWS[1:]),
    },
    "QNLI": {
        "train.tsv": "index\tquestion\tsentence\tlabel\n0\tWhen did it open?\tIt opened in 1990.\tentailment\n"
        "1\tWho built it?\tIt is tall.\tnot_entailment\n",
        "dev.tsv": "index\tquestion\tsentence\tlabel\n0\tWhere is it?\tIt is in Paris.\tentailment\n",
    },
    "RTE": {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tAll dogs bark.\tSome dogs bark.\tentailment\n"
        "1\tThe sun rose.\tIt was night.\tnot_entailment\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tHe ran home.\tHe moved.\tentailment\n",
    },
}
EXPECTED = {  # name: (train size, validation size, pair, num_labels, regression, metrics)
    "cola": (3, 2, False, 2, False, ("mcc",)),
    "sst2": (2, 2, False, 2, False, ("accuracy",)),
    "mrpc": (2, 2, True, 2, False, ("f1", "accuracy")),
    "stsb": (2, 3, True, 1, True, ("pearson", "spearman")),
    "qqp": (2, 2, True, 2, False, ("f1", "accuracy")),
    "mnli": (3, 2, True, 3, False, ("accuracy",)),
    "qnli": (2, 1, True, 2, False, ("accuracy",)),
    "rte": (2, 1, True, 2, False, ("accuracy",)),
}


@pytest.fixture
def glue_root(tmp_path: Path) -> Path:
    for folder, files in GLUE_FILES.items():
        (tmp_path / folder).mkdir()
        for name, text in files.items():
            (tmp_path / folder / name).write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("name", sorted(GLUE_TASKS))
def test_every_glue_layout_loads_with_its_metrics(name, glue_root):
    if name == "qqp":
        with pytest.warns(UserWarning, match="skipped 1 malformed rows"):
            task = load_glue_task(name, glue_root)
    else:
        task = load_glue_task(name, glue_root)
    train_size, validation_size, pair, num_labels, regression, metrics = EXPECTED[name]
    assert (len(task.train), len(task.validation), task.is_pair) == (train_size, validation_size, pair)
    assert (task.num_labels, task.is_regression, task.metric_names) == (num_labels, regression, metrics)
    assert task.test == []
    labels = np.array([example.label for example in task.validation])
    perfect = labels if regression else np.eye(num_labels)[labels.astype(int)]  # logits of a perfect model
    assert compute_metrics(task.metric_names, perfect, labels) == pytest.approx({metric: 1.0 for metric in metrics})
    assert name in task.summary()


def test_glue_rows_are_read_as_distributed(glue_root):
    cola = load_glue_task("CoLA", glue_root / "CoLA")  # the task folder itself works too
    assert cola.train[1] == Example("The more you eat, the most you want.", None, 0)
    assert cola.label_names == ("unacceptable", "acceptable")
    mrpc = load_glue_task("mrpc", glue_root)
    assert mrpc.train[0] == Example('He said " yes " to the offer .', "He accepted the offer .", 1)  # quotes literal
    stsb = load_glue_task("sts-b", glue_root)
    assert [example.label for example in stsb.validation] == [4.75, 0.25, 2.4]
    assert stsb.class_balance("validation") == {"0-1": 1, "2-3": 1, "4-5": 1}
    mnli = load_glue_task("mnli", glue_root)
    assert set(mnli.evaluation_splits()) == {"validation", "validation_mismatched"}
    assert [example.label for example in mnli.extra_validation["validation_mismatched"]] == [1, 2]
    assert mnli.label_names == ("entailment", "neutral", "contradiction")
    assert mnli.class_balance("train") == {"contradiction": 1, "entailment": 1, "neutral": 1}


def test_metric_values():
    predictions, labels = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    scores = compute_metrics(("mcc", "f1", "accuracy", "macro_f1"), torch.tensor(predictions), torch.tensor(labels))
    assert scores["accuracy"] == pytest.approx(0.6)
    assert scores["f1"] == pytest.approx(2 / 3)  # precision 2/3, recall 2/3
    assert scores["mcc"] == pytest.approx(1 / 6)  # (tp*tn - fp*fn) / sqrt(3*2*3*2) = (2-1)/6
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    logits = torch.tensor([[0.1, 2.0], [0.3, 0.2]], dtype=torch.bfloat16)
    assert compute_metrics(("accuracy",), logits, torch.tensor([1, 1])) == {"accuracy": 0.5}
    scores = compute_metrics(("pearson", "spearman"), np.array([[1.0], [2.0], [4.0]]), np.array([0.1, 0.2, 0.3]))
    assert scores["spearman"] == pytest.approx(1.0) and scores["pearson"] == pytest.approx(0.9820, abs=1e-4)
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        compute_metrics(("accuracy",), np.array([1, 0]), np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_metrics(("bleu",), np.array([1]), np.array([1]))


def test_bad_glue_inputs_give_clear_errors(glue_root, tmp_path):
    with pytest.raises(ValueError, match="unknown GLUE task"):
        load_glue_task("wnli-x", glue_root)
    with pytest.raises(FileNotFoundError, match=r"no train.tsv in .*expected GLUE's layout \(CoLA/train.tsv"):
        load_glue_task("cola", tmp_path / "nowhere")
    (glue_root / "RTE" / "dev.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"RTE/dev.tsv not found"):
        load_glue_task("rte", glue_root)
    spec = GLUE_TASKS["sst2"]
    bad = tmp_path / "bad.tsv"
    cases = {
        "sentence\tlabel\ngood movie\t1\nbad\tmovie\t0\n": r"bad.tsv:3: expected 2 tab-separated fields, got 3",
        "sentence\tlabel\ngood movie\tpositive\n": r"bad.tsv:2: label 'positive' is not one of \('0', '1'\)",
        "text\tlabel\ngood movie\t1\n": r"header \['text', 'label'\] lacks the columns \['sentence'\]",
        "": "is empty; expected a header line",
        "sentence\tlabel\n": "has no examples",
    }
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_glue_tsv(bad, spec)
    bad.write_text("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                   "0\tg\tf\t2012\t1\tn\tn\tA.\tB.\tfive\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"bad.tsv:2: score 'five' is not a number"):
        read_glue_tsv(bad, GLUE_TASKS["stsb"])
    for score in ("nan", "inf", "-Infinity"):
        bad.write_text("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                       f"0\tg\tf\t2012\t1\tn\tn\tA.\tB.\t1.5\n1\tg\tf\t2012\t1\tn\tn\tA.\tB.\t{score}\n")  # fmt: skip
        with pytest.raises(ValueError, match=rf"bad.tsv:3: score '{score}' is not a finite number"):
            read_glue_tsv(bad, GLUE_TASKS["stsb"])
    bad.write_text("gj04\t1\tonly three fields\n")
    with pytest.raises(ValueError, match=r"bad.tsv:1: expected 4 tab-separated fields, got 3"):
        read_glue_tsv(bad, GLUE_TASKS["cola"])
    bad.write_bytes("sentence\tlabel\ngood movie\t1\ncaf\u00e9 cr\u00e8me\t0\n".encode("latin-1"))  # not UTF-8
    with pytest.raises(ValueError, match=r"bad.tsv: line 3 is not UTF-8"):
        read_glue_tsv(bad, spec)


def test_task_names_are_canonical_or_refused_with_the_known_ones():
    assert [task_name(name) for name in ("wn-pos", "SST-2", "sts-b", "mnli")] == ["wn-pos", "sst2", "stsb", "mnli"]
    with pytest.raises(ValueError, match=r"unknown task 'nosuchtask'; known tasks: wn-pos, .*, cola, sst2"):
        task_name("nosuchtask")


def test_task_collator(glue_root):
    texts = [text for files in GLUE_FILES.values() for content in files.values() for text in content.split("\t")]
    with pytest.warns(UserWarning, match="yields only"):
        tokenizer = train_tokenizer(texts, vocab_size=2000)
    rte = load_glue_task("rte", glue_root)
    batch = TaskCollator(tokenizer, max_length=8)(rte.train)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape[1] <= 8 and batch["labels"].tolist() == [0, 1]
    first = tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert first[0] == "<cls>" and first.count("<sep>") == 2  # the pair template, truncated to 8 tokens
    sst2 = TaskCollator(tokenizer)(load_glue_task("sst2", glue_root).train)
    assert sst2["input_ids"][1, -1] == tokenizer.pad_token_id == 0 and sst2["attention_mask"][1, -1] == 0
    stsb = TaskCollator(tokenizer, is_regression=True)(load_glue_task("stsb", glue_root).train)
    assert stsb["labels"].dtype == torch.float32
    with pytest.raises(ValueError, match="mixes single texts and text pairs"):
        TaskCollator(tokenizer)([Example("a", None, 0), Example("a", "b", 1)])


def test_the_light_task_name_list_matches_the_glue_specs():
    from ultrafastbert.data.task_names import GLUE_NAMES
    from ultrafastbert.data.tasks import GLUE_TASKS

    assert GLUE_NAMES == tuple(GLUE_TASKS)  # the command line checks --tasks against the light copy
