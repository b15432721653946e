"""The training commands end to end on small local files: pretrain -> evaluate -> finetune (GLUE TSV layout), and
the one-line refusals of mistakes before any work (a folder holding a run, a folder in use, a diverging run, flags
that make no sense, finetuning tasks or outputs that would fail later)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from ultrafastbert.cli import main
from ultrafastbert.train import jobs
from ultrafastbert.train.run_folder import run_folder_lock

FIXTURES = Path(__file__).parent / "fixtures"
SHORT_MODEL = FIXTURES / "mlm_fff_1x3"  # max_position_embeddings 16

WORDS = "the a cat dog sat ran on under mat rug big small red blue quick slow and then it was".split()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choices(WORDS, k=rng.randint(20, 60))) for _ in range(1500)))
    run = root / "run"
    assert main(pretrain_args(root, run)) == 0
    return root, run


def pretrain_args(root: Path, output: Path, *extra: str) -> list[str]:
    """A 4-step pretraining of a tiny model on the fixture's corpus."""
    args = ["pretrain", "--output", str(output), "--corpus", str(root / "corpus.txt"), "--preset", "tiny-ufb-2x3"]
    args += ["--vocab-size", "80", "--seq-len", "32", "--max-steps", "4", "--micro-batch", "8", "--batch", "16"]
    return [*args, "--cache-dir", str(root / "cache"), *extra]


def test_pretrain_writes_a_loadable_model_checkpoints_and_metrics(pretrained):
    root, run = pretrained
    final = json.loads((run / "final.json").read_text())
    assert final["step"] == 4 and final["name"] == "UltraFastBERT-2x3"
    assert (run / "model" / "config.json").is_file() and (run / "model" / "tokenizer.json").is_file()
    assert (run / "checkpoints" / "latest").is_file()
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in steps[:4]] == [1, 2, 3, 4]


def test_evaluate_reports_mlm_metrics(pretrained, capsys):
    root, run = pretrained
    corpus = root / "corpus.txt"
    args = ["evaluate", "--model", str(run / "model"), "--corpus", str(corpus), "--seq-len", "32"]
    assert main([*args, "--cache-dir", str(root / "cache")]) == 0
    assert "validation MLM loss" in capsys.readouterr().out


def test_finetune_reads_glue_tsv_and_writes_results(pretrained, tmp_path, capsys):
    _, run = pretrained
    rng = random.Random(1)
    task_dir = tmp_path / "glue" / "SST-2"
    task_dir.mkdir(parents=True)
    for split, size in (("train", 32), ("dev", 16)):
        rows = [f"{' '.join(rng.choices(WORDS, k=6))}\t{rng.randint(0, 1)}" for _ in range(size)]
        (task_dir / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    output = tmp_path / "results"
    args = ["finetune", "--model", str(run / "model"), "--tasks", "sst2", "--glue-dir", str(tmp_path / "glue")]
    assert main([*args, "--output-dir", str(output), "--epochs", "1", "--seeds", "0", "1"]) == 0
    saved = json.loads((output / "results.json").read_text())
    assert [seed["seed"] for seed in saved["tasks"][0]["seeds"]] == [0, 1]
    assert saved["tasks"][0]["kept_seed"] in (0, 1)
    assert (output / "sst2" / "config.json").is_file() and (output / "sst2" / "tokenizer.json").is_file()
    assert 0.0 <= saved["tasks"][0]["median"]["validation"]["accuracy"] <= 1.0
    assert "| sst2 | accuracy |" in capsys.readouterr().out


def test_pretrain_without_a_budget_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="budget"):
        main(["pretrain", "--output", str(tmp_path)])


def test_pretrain_on_a_missing_corpus_file_fails_clearly(tmp_path):
    args = ["pretrain", "--output", str(tmp_path / "run"), "--corpus", str(tmp_path / "nope.txt"), "--max-steps", "1"]
    with pytest.raises(SystemExit, match=r"^ultrafastbert pretrain: error: .*nope\.txt"):
        main([*args, "--cache-dir", str(tmp_path / "cache")])


def test_pretrain_flags_default_to_the_dataclasses():
    from ultrafastbert.cli import build_parser
    from ultrafastbert.flags import from_flags
    from ultrafastbert.train.jobs import PretrainJob
    from ultrafastbert.train.pretrain import PretrainConfig

    args = build_parser(["pretrain"]).parse_args(["pretrain", "--output", "run", "--max-minutes", "5", "--bf16"])
    job = from_flags(PretrainJob, args, train=from_flags(PretrainConfig, args))
    assert job == PretrainJob(output_dir="run", train=PretrainConfig(max_minutes=5.0, bf16=True))


def test_pretrain_over_a_finished_run_is_refused_until_told_what_to_do(pretrained):
    root, run = pretrained
    metrics = (run / "metrics.jsonl").read_text()
    with pytest.raises(SystemExit) as refused:
        main(pretrain_args(root, run))
    message = str(refused.value.code)
    assert "already holds a run (checkpoints/, metrics.jsonl)" in message and "\n" not in message
    assert "--resume" in message and "--overwrite" in message
    assert (run / "metrics.jsonl").read_text() == metrics


def test_a_finished_pretraining_continues_with_resume_and_a_larger_step_budget(pretrained, tmp_path):
    import shutil

    root, run = pretrained
    shutil.copytree(run, tmp_path / "run")
    assert main(pretrain_args(root, tmp_path / "run", "--resume", "--max-steps", "6")) == 0
    assert json.loads((tmp_path / "run" / "final.json").read_text())["step"] == 6
    with pytest.raises(SystemExit, match="has trained 6 steps, so --max-steps 5 adds none: give more than 6"):
        main(pretrain_args(root, tmp_path / "run", "--resume", "--max-steps", "5"))


def test_a_stopped_pretraining_exits_non_zero_saying_how_to_continue(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(jobs, "pretrain_job", lambda job: {"interrupted": True, "signal": 15, "step": 3})
    assert main(["pretrain", "--output", str(tmp_path), "--max-steps", "4"]) == 128 + 15
    assert "stopped by SIGTERM at step 3, checkpoint saved: rerun the same command with --resume" in (
        capsys.readouterr().err
    )


def test_pretrain_in_a_folder_in_use_names_the_holder(pretrained, tmp_path):
    root, _ = pretrained
    with run_folder_lock(tmp_path), pytest.raises(SystemExit, match=rf"in use by another run \(pid {os.getpid()}\)"):
        main(pretrain_args(root, tmp_path))


def test_a_diverging_pretraining_stops_with_one_line_and_no_model(pretrained, tmp_path):
    root, _ = pretrained
    with pytest.raises(SystemExit) as stopped:
        main(pretrain_args(root, tmp_path, "--lr", "1e6", "--max-steps", "8"))
    message = str(stopped.value.code)
    assert message.startswith("ultrafastbert pretrain: error: training diverged at step ") and "\n" not in message
    assert not (tmp_path / "model").exists() and not (tmp_path / "final.json").exists()


def write_sst2(root: Path, words: int = 6, train: int = 32, dev: int = 16) -> Path:
    """A GLUE folder holding SST-2 only, with sentences of ``words`` words; returns the GLUE folder."""
    rng = random.Random(1)
    task_dir = root / "glue" / "SST-2"
    task_dir.mkdir(parents=True)
    for split, size in (("train", train), ("dev", dev)):
        rows = [f"{' '.join(rng.choices(WORDS, k=words))}\t{rng.randint(0, 1)}" for _ in range(size)]
        (task_dir / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return root / "glue"


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["finetune", "--model", str(SHORT_MODEL), "--tasks", "sst2", "nosuchtask"], "unknown task 'nosuchtask'"),
        (["finetune", "--model", str(SHORT_MODEL), "--tasks", "sst2", "--epochs", "0"], "argument --epochs: must be"),
        (["finetune", "--model", str(SHORT_MODEL), "--tasks", "sst2", "--epochs=-1"], "argument --epochs: must be"),
        (["finetune", "--model", str(SHORT_MODEL), "--tasks", "sst2", "--max-train-examples", "0"], "must be > 0"),
        (["finetune", "--model", str(SHORT_MODEL), "--tasks", "sst2", "--max-length", "0"], "must be > 0"),
        (["pretrain", "--output", "run", "--max-minutes", "nan"], "argument --max-minutes: must be a finite number"),
        (["evaluate", "--model", str(SHORT_MODEL), "--max-sequences", "0"], "argument --max-sequences: must be > 0"),
    ],
)
def test_flags_that_make_no_sense_are_refused_by_argparse(argv, reason, capsys):
    with pytest.raises(SystemExit) as refused:
        main(argv)
    error = capsys.readouterr().err
    assert refused.value.code == 2 and reason in error
    if "nosuchtask" in argv:
        assert "known tasks: wn-pos, " in error and "sst2" in error


def test_finetune_checks_model_tasks_and_output_before_any_training(tmp_path, monkeypatch):
    def must_not_train(*args, **kwargs):
        raise AssertionError("a task trained before the job was checked")

    monkeypatch.setattr(jobs, "finetune_task", must_not_train)
    glue = write_sst2(tmp_path)
    (tmp_path / "a-file").write_text("")
    base = ["finetune", "--model", str(SHORT_MODEL), "--output-dir", str(tmp_path / "results" / "out")]
    for extra, reason in (
        (["--tasks", "sst2", "cola", "--glue-dir", str(glue)], "GLUE task 'cola': no train.tsv"),
        (["--tasks", "sst2"], "'sst2' is a GLUE task: give the folder holding GLUE's tasks with --glue-dir"),
        (["--tasks", "sst2", "--glue-dir", str(glue), "--max-length", "64"], "max_length 64 exceeds the model's"),
    ):
        with pytest.raises(SystemExit) as refused:
            main([*base, *extra])
        assert str(refused.value.code).startswith("ultrafastbert finetune: error: ") and reason in refused.value.code
    unwritable = ["--output-dir", str(tmp_path / "a-file" / "out"), "--tasks", "sst2", "--glue-dir", str(glue)]
    with pytest.raises(SystemExit, match=r"cannot write .*a-file/out"):
        main([*base, *unwritable])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "glue"]  # nothing written


def test_finetune_truncates_to_the_models_own_sequence_length(tmp_path):
    glue = write_sst2(tmp_path, words=40, train=8, dev=8)  # 40 words: longer than the model's 16 positions
    output = tmp_path / "results"
    args = ["finetune", "--model", str(SHORT_MODEL), "--tasks", "SST-2", "--glue-dir", str(glue), "--seeds", "0"]
    assert main([*args, "--output-dir", str(output), "--epochs", "1", "--batch-size", "4"]) == 0
    saved = json.loads((output / "results.json").read_text())
    assert saved["config"]["max_length"] == 16 and saved["tasks"][0]["task"] == "sst2"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--device", "tpu"], "unknown device 'tpu'; choose one of auto, cpu, cuda"),
        (["--preset", "tiny-ufb-1x99"], "fff_depth <= 20, got 1, 99"),
        (["--preset", "tiny-bert"], "unknown model preset 'tiny-bert'"),
    ]
    + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "device 'cuda' asked for, but")]),
)
def test_pretrain_mistakes_end_in_one_line_before_any_work(tmp_path, extra, reason):
    with pytest.raises(SystemExit) as refused:
        main(["pretrain", "--output", str(tmp_path / "run"), "--max-steps", "1", *extra])
    message = str(refused.value.code)
    assert message.startswith("ultrafastbert pretrain: error: ") and reason in message and "\n" not in message
    assert not (tmp_path / "run").exists()


def test_resume_with_another_vocabulary_is_refused(pretrained, tmp_path, monkeypatch):
    """Tokenizer training is not bit-reproducible: a resume whose cache holds another tokenizer for the same
    corpus (another --cache-dir, a rebuilt cache) would train old weights on new token ids."""
    root, _ = pretrained
    run = tmp_path / "run"
    assert main(pretrain_args(root, run)) == 0
    from ultrafastbert.train import jobs

    monkeypatch.setattr(jobs, "tokenizer_fingerprint", lambda tokenizer: "another-vocabulary")
    with pytest.raises(SystemExit, match=r"run\.tokenizer \(checkpoint '[0-9a-f]+', now 'another-vocabulary'\)"):
        main(pretrain_args(root, run, "--resume"))
