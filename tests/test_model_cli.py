"""Command line (fill-mask, classify, convert) on the original-format fixtures, and the whole-model benchmark on
a tiny configuration."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch

from ultrafastbert.bench.model import ModelBenchConfig, run_model_benchmark
from ultrafastbert.cli import main
from ultrafastbert.model import CrammedBertForMaskedLM, CrammedBertForSequenceClassification, load_tokenizer
from ultrafastbert.model.crammedbert.convert import checkpoint_format
from ultrafastbert.model.inference import classify, fill_mask

FIXTURES = Path(__file__).parent / "fixtures"


def test_fill_mask_returns_top_k_per_mask(capsys: pytest.CaptureFixture[str]) -> None:
    folder = FIXTURES / "mlm_fff_1x3"
    assert main(["fill-mask", "--model", str(folder), "--top-k", "3", "the quick <mask> fox <mask>"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [row[:2] for row in rows] == [[f"mask {m}", str(rank)] for m in (0, 1) for rank in (1, 2, 3)]
    probabilities = [float(row[3]) for row in rows[:3]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    model = CrammedBertForMaskedLM.from_pretrained(folder).eval()
    tokenizer = load_tokenizer(folder)
    predictions = fill_mask(model, tokenizer, "the quick <mask> fox", top_k=2)
    encoded = tokenizer("the quick <mask> fox", return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits[0]
    position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero())
    assert [p.token_id for p in predictions[0]] == logits[position].topk(2).indices.tolist()
    with pytest.raises(ValueError, match="mask token"):
        fill_mask(model, tokenizer, "no mask here")
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        fill_mask(model, tokenizer, "the quick <mask> fox", top_k=0)


def test_classify_reads_lines_from_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    folder = FIXTURES / "cls_fff_1x3_avg_3labels"
    lines = ["the fox is quick", "a dog\tthe fox", "", "language models"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    assert main(["classify", "--model", str(folder), "--batch-size", "2"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(row[0].startswith("LABEL_") and 0 < float(row[1]) <= 1 for row in rows)
    model = CrammedBertForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = load_tokenizer(folder)
    alone = classify(model, tokenizer, ["a dog\tthe fox"])[0]
    assert (alone.label, f"{alone.score:.4f}") == (rows[1][0], rows[1][1])
    regression = FIXTURES / "cls_dense_zero_index_1label"
    model = CrammedBertForSequenceClassification.from_pretrained(regression).eval()
    assert classify(model, load_tokenizer(regression), ["the fox"])[0].label is None
    with pytest.raises(ValueError, match="batch_size must be >= 1, got -1"):
        classify(model, load_tokenizer(regression), ["the fox"], batch_size=-1)


def test_convert_command_writes_both_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean, original = tmp_path / "clean", tmp_path / "original"
    assert main(["convert", str(FIXTURES / "mlm_dense_gluglu"), str(clean)]) == 0
    assert main(["convert", str(clean), str(original), "--to", "original"]) == 0
    assert (checkpoint_format(clean), checkpoint_format(original)) == ("clean", "original")
    assert capsys.readouterr().out.split() == [str(clean), str(original)]


def test_convert_leaves_nothing_on_a_full_disk_and_a_used_destination_needs_overwrite(tmp_path, monkeypatch) -> None:
    import errno
    import shutil

    from ultrafastbert.model.crammedbert import convert

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(convert.shutil, "copyfile", disk_full)  # the tokenizer files, copied after the weights
        with pytest.raises(SystemExit, match="No space left on device"):
            main(["convert", str(FIXTURES / "mlm_dense_gluglu"), str(tmp_path / "clean")])
    assert list(tmp_path.iterdir()) == []  # no lone config.json, no temporary
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="destination .* is not empty.*--overwrite"):
        main(["convert", str(FIXTURES / "mlm_dense_gluglu"), str(tmp_path / "clean")])
    assert main(["convert", str(FIXTURES / "mlm_dense_gluglu"), str(tmp_path / "clean"), "--overwrite"]) == 0
    assert checkpoint_format(tmp_path / "clean") == "clean" and not (tmp_path / "clean" / "notes.txt").exists()
    shutil.copytree(tmp_path / "clean", tmp_path / "source")
    with pytest.raises(SystemExit, match="lies inside the input model's folder"):
        main(["convert", str(tmp_path / "source"), str(tmp_path / "source" / "inner")])


def test_model_benchmark_writes_json_and_plot(tmp_path: Path) -> None:
    config = ModelBenchConfig(
        batches=(1, 2),
        seq_len=8,
        layers=1,
        hidden=16,
        heads=2,
        vocab=40,
        dense_intermediate=32,
        fff_depth=2,
        repeats=1,
        component_repeats=1,
    )
    report = run_model_benchmark(config, output=tmp_path / "model")
    written = json.loads((tmp_path / "model.json").read_text())
    assert (tmp_path / "model.png").stat().st_size > 0
    assert written["machine"]["torch_threads"] >= 1 and written["config"]["layers"] == 1
    names = {r["name"] for r in report["results"]}
    assert len(names) == 4 and len(report["results"]) == 8
    assert all(
        set(r["components_ms"]) == {"embeddings", "attention", "feedforward", "head", "other"}
        for r in report["results"]
    )
    assert set(report["ratios"]) == {"1", "2"} and all(len(table) == 3 for table in report["ratios"].values())


def test_model_benchmark_command_line(tmp_path: Path) -> None:
    args = ["bench", "model", "--batches", "1", "--seq-len", "8", "--layers", "1", "--hidden", "16", "--heads", "2"]
    args += ["--vocab", "40", "--dense-intermediate", "32", "--fff-depth", "2", "--head", "mlm", "--repeats", "1"]
    threads = torch.get_num_threads()
    assert main([*args, "--component-repeats", "1", "--threads", "1", "--output", str(tmp_path / "model")]) == 0
    assert torch.get_num_threads() == threads  # restored after the run
    written = json.loads((tmp_path / "model.json").read_text())
    assert written["config"]["head"] == "mlm" and written["config"]["batches"] == [1]
    assert written["machine"]["torch_threads"] == 1
    names = {r["name"] for r in written["results"]}
    assert {"UltraFastBERT-1x2 default (fast)", "crammedBERT dense (GELUglu 32)"} <= names


def copy_of(folder: Path, destination: Path, leave_out: tuple[str, ...] = ()) -> Path:
    destination.mkdir()
    for path in folder.iterdir():
        if path.name not in leave_out:
            (destination / path.name).write_bytes(path.read_bytes())
    return destination


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["classify", "--batch-size", "-1"], "argument --batch-size: must be > 0, got -1"),
        (["classify", "--batch-size", "0"], "argument --batch-size: must be > 0, got 0"),
        (["fill-mask", "--top-k", "0", "a <mask>"], "argument --top-k: must be > 0, got 0"),
    ],
)
def test_counts_that_are_not_positive_are_refused(argv, reason, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main([*argv, "--model", str(FIXTURES / "cls_fff_1x3_avg_3labels")])
    assert refused.value.code == 2 and reason in capsys.readouterr().err


@pytest.mark.parametrize("model", ["no/such/model", "/no/such/model"])
def test_a_model_folder_that_does_not_exist_is_a_local_error(model, monkeypatch, capsys) -> None:
    def no_downloads(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_downloads)
    monkeypatch.setattr("huggingface_hub.file_download.hf_hub_download", no_downloads)
    with pytest.raises(SystemExit) as refused:
        main(["fill-mask", "--model", model, "a <mask>"])
    error = capsys.readouterr().err
    assert refused.value.code == 2 and f"argument --model: no folder {model}" in error and "Repo id" not in error


def test_a_folder_that_is_not_a_model_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["classify", "--model", str(tmp_path)])
    assert f"{tmp_path} holds no config.json" in capsys.readouterr().err


def test_the_command_line_is_offline_unless_told_otherwise(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(SystemExit):
        main(["fill-mask", "--help"])
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(SystemExit):
        main(["fill-mask", "--help"])
    assert os.environ["HF_HUB_OFFLINE"] == "0" and constants.HF_HUB_OFFLINE is False


def test_a_folder_without_tokenizer_says_so_in_one_line(tmp_path: Path, capsys) -> None:
    folder = copy_of(FIXTURES / "mlm_fff_1x3", tmp_path / "model", leave_out=("tokenizer.json",))
    with pytest.raises(SystemExit) as refused:
        main(["fill-mask", "--model", str(folder), "a <mask>"])
    message = str(refused.value.code)
    assert message.startswith("ultrafastbert fill-mask: error: ") and "\n" not in message
    assert f"{folder} has no tokenizer.json" in message
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):  # --debug: the traceback
        main(["--debug", "fill-mask", "--model", str(folder), "a <mask>"])


def test_non_finite_weights_are_refused_at_load_naming_the_tensor(tmp_path: Path) -> None:
    from test_model import corrupt_tensor_bytes

    folder = copy_of(FIXTURES / "mlm_fff_1x3", tmp_path / "model")
    corrupt_tensor_bytes(folder / "model.safetensors", "encoder.layers.0.ffn.linear_in.weight")
    with pytest.raises(SystemExit) as refused:
        main(["fill-mask", "--model", str(folder), "a <mask>"])
    message = str(refused.value.code)
    assert "non-finite weights" in message and "encoder.layers.0.ffn.linear_in.weight" in message
    assert "\n" not in message


def test_classify_skips_lines_that_are_not_utf8_and_names_them(monkeypatch, capsys) -> None:
    folder = FIXTURES / "cls_fff_1x3_avg_3labels"
    raw = b"the fox is quick\n\xff\xfe not text\na dog\tthe fox\n\nlanguage \xc3 models\nthe end\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert main(["classify", "--model", str(folder), "--batch-size", "2"]) == 1
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3
    assert [line for line in captured.err.splitlines() if "UTF-8" in line] == [
        "ultrafastbert classify: line 2 of stdin is not UTF-8 text; skipped",
        "ultrafastbert classify: line 5 of stdin is not UTF-8 text; skipped",
    ]
    model = CrammedBertForSequenceClassification.from_pretrained(folder).eval()
    texts = ["the fox is quick", "a dog\tthe fox", "the end"]
    expected = classify(model, load_tokenizer(folder), texts, batch_size=2)  # avg pooling counts the padding
    assert captured.out.splitlines() == [f"{p.label}\t{p.score:.4f}" for p in expected]
