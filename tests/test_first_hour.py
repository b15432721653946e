"""What a new user sees: the held-out test score first and every split named, per-epoch validation lines, task names
that are not "train", plain progress lines in log files, --quiet and --threads, evaluate saying which corpus it
scores, and a time budget that holds within an optimizer step."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_helpers import tiny_pretrained

from ultrafastbert import progress
from ultrafastbert.cli import build_parser, main
from ultrafastbert.data.userdata import default_task_name
from ultrafastbert.fffify.job import report_lines
from ultrafastbert.study.report import seed_range_of_gain
from ultrafastbert.train.finetune import SeedResult, TaskResult, results_table
from ultrafastbert.train.jobs import PRETRAINING, evaluation_corpus
from ultrafastbert.train.pretrain import PretrainConfig, Pretrainer

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from pretrain_tiny import mask_quarter, synthetic_sequences, tiny_model  # noqa: E402

GROUPS = {"animal": ["cat", "dog", "horse", "bird"], "colour": ["red", "blue", "green", "pink"]}
FILLER = ["the", "a", "was", "near", "over", "and", "it", "seen"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pretrained")
    tiny_pretrained(folder, FILLER + [word for group in GROUPS.values() for word in group])
    return folder


@pytest.fixture(autouse=True)
def not_quiet():
    yield
    progress.set_quiet(False)  # --quiet is process-wide: leave it off for the next test


def write_rows(path: Path, rng: random.Random, size: int, labelled: bool = True) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"] if labelled else ["text"])
        for _ in range(size):
            label = rng.choice(sorted(GROUPS))
            words = rng.choices(FILLER, k=4) + [rng.choice(GROUPS[label])]
            rng.shuffle(words)
            writer.writerow([" ".join(words), label] if labelled else [" ".join(words)])
    return path


def seed_result(seed: int, test: float, validation: float) -> SeedResult:
    metrics = {"validation": {"accuracy": validation}, "test": {"accuracy": test}}
    return SeedResult(seed, metrics, train_examples=100, train_seconds=1.0, final_train_loss=0.1)


def test_results_table_puts_the_held_out_test_first_and_names_what_validation_chose():
    result = TaskResult(
        "reviews",
        "accuracy",
        [seed_result(0, 0.80, 0.95), seed_result(1, 0.90, 0.97), seed_result(2, 0.85, 0.90)],
        eval_examples={"validation": 40, "test": 50},
        kept_seed=1,
    )
    table = results_table([result]).splitlines()
    assert table[0] == (
        "| task | metric | test (held out) | validation (chose the model) | seeds "
        "| examples: train / test / validation |"
    )
    assert table[2] == "| reviews | accuracy | 85.0 | 95.0 | 3 | 100 / 50 / 40 |"  # medians over the seeds
    assert "seed 1's (best validation accuracy): test accuracy 90.0, validation accuracy 97.0" in table[-1]


def test_results_table_of_tasks_with_different_splits_leaves_missing_cells_empty_and_averages_the_rest():
    glue_seed = SeedResult(0, {"validation": {"accuracy": 0.5}}, 10, 1.0, 0.1)
    glue = TaskResult("sst2", "accuracy", [glue_seed], eval_examples={"validation": 20})
    own = TaskResult("reviews", "accuracy", [seed_result(0, 0.8, 0.9)], eval_examples={"validation": 5, "test": 6})
    table = results_table([glue, own]).splitlines()
    assert table[2] == "| sst2 | accuracy |  | 50.0 | 1 | 10 /  / 20 |"
    assert table[4] == "| average | | 80.0 | 70.0 | | |"


@pytest.mark.parametrize(
    ("path", "name"),
    [("data/reviews/train.csv", "reviews"), ("reviews_train.csv", "reviews"), ("sst2.train.tsv", "sst2")],
)
def test_a_task_is_named_after_its_data_not_after_the_word_train(path, name):
    assert default_task_name(path) == name


def test_own_data_finetune_shows_the_test_score_first_and_validation_per_epoch(pretrained, tmp_path, capsys):
    rng = random.Random(0)
    data = tmp_path / "animals"
    data.mkdir()
    files = {split: write_rows(data / f"{split}.csv", rng, size) for split, size in (("train", 48), ("dev", 24))}
    files["test"] = write_rows(data / "test.csv", rng, 30)
    out = tmp_path / "out"
    args = ["finetune", "--model", str(pretrained), "--train-file", str(files["train"])]
    args += ["--validation-file", str(files["dev"]), "--test-file", str(files["test"]), "--output-dir", str(out)]
    assert main([*args, "--seeds", "0", "--epochs", "2", "--max-length", "16", "--lr", "1e-3"]) == 0
    printed = capsys.readouterr()

    task = json.loads((out / "results.json").read_text())["tasks"][0]
    assert task["task"] == "animals"  # the folder's name: the file's stem is "train"
    test, validation = (100 * task["median"][split]["accuracy"] for split in ("test", "validation"))
    table = (out / "results.md").read_text()
    header, _, row = table.splitlines()[:3]
    assert header.index("test (held out)") < header.index("validation")
    assert row.startswith(f"| animals | accuracy | {test:.1f} | {validation:.1f} |")
    assert table.splitlines()[0] in printed.out  # the terminal shows the same table

    epochs = [line for line in printed.err.splitlines() if line.startswith("animals seed 0 epoch")]
    assert [line.split(":")[0] for line in epochs] == ["animals seed 0 epoch 1/2", "animals seed 0 epoch 2/2"]
    assert all("validation accuracy" in line for line in epochs)
    assert "\r" not in printed.err  # not a terminal: plain lines, no redrawn bars
    assert "animals seed 0: 6/6 step, loss=" in printed.err  # 48 examples in batches of 16, twice


def test_quiet_leaves_results_and_drops_progress_lines(pretrained, tmp_path, capsys):
    rng = random.Random(1)
    train, dev = write_rows(tmp_path / "a_train.csv", rng, 16), write_rows(tmp_path / "a_dev.csv", rng, 8)
    args = ["finetune", "--model", str(pretrained), "--train-file", str(train), "--validation-file", str(dev)]
    assert main([*args, "--output-dir", str(tmp_path / "out"), "--seeds", "0", "--epochs", "1", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    assert "| a | accuracy |" in printed.out


def test_plain_progress_writes_one_line_per_interval_and_one_at_the_end(capsys):
    bar = progress.PlainProgress(total=10, description="work", unit="step", interval=3600)
    for _ in range(10):
        bar.update()
    bar.set_postfix(loss="1.500")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("work: 10/10 step, loss=1.500, 0m")


@pytest.mark.parametrize("command", ["pretrain", "finetune", "classify", "fffify", "evaluate", "fill-mask"])
def test_model_commands_take_threads_and_quiet(command):
    parser = build_parser(commands=[command])
    subcommand = next(action for action in parser._subparsers._group_actions).choices[command]
    options = {option for action in subcommand._actions for option in action.option_strings}
    assert {"--threads", "--quiet"} <= options


def test_threads_sets_torch_threads_and_refuses_zero(pretrained, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["fill-mask", "--model", str(pretrained), "--threads", "1", "the <mask>"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        main(["fill-mask", "--model", str(pretrained), "--threads", "0", "the <mask>"])
    assert "--threads" in capsys.readouterr().err


def test_evaluate_refuses_a_recorded_corpus_that_is_gone_naming_it(pretrained, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / PRETRAINING).write_text(json.dumps({"corpus": [str(tmp_path / "gone.txt")], "seq_len": 16}))
    with pytest.raises(ValueError, match="gone.txt is not there now: give the text to score with --corpus"):
        evaluation_corpus(model, [], tmp_path / "cache")


def test_a_dropped_step_updates_nothing_and_consumes_no_sequences(tmp_path):
    """The time budget is asked between micro-batches: when it runs out the step is dropped, and the next step is
    exactly the one a fresh run takes first."""
    config = PretrainConfig(micro_batch=4, final_batch=16, batch_ramp_until=0.0, max_steps=2, lr=3e-3)

    def fresh() -> Pretrainer:
        torch.manual_seed(0)
        return Pretrainer(tiny_model(), synthetic_sequences(64, seed=1), mask_quarter, config, tmp_path)

    trainer = fresh()
    weights = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    asked = []
    assert trainer.train_step(0.0, out_of_time=lambda: asked.append(1) or len(asked) >= 2) is None
    assert trainer.dropped_micro_batches == (2, 4) and trainer.position == 0 and trainer.step == 0
    assert all(torch.equal(value, trainer.model.state_dict()[name]) for name, value in weights.items())
    assert all(parameter.grad is None for parameter in trainer.model.parameters())

    resumed, reference = trainer.train_step(0.0), fresh().train_step(0.0)
    assert resumed.loss == reference.loss and resumed.sequences == reference.sequences == 16


@pytest.mark.slow
def test_logs_of_pretrain_evaluate_and_classify_are_plain_lines(pretrained, tmp_path):
    """Output redirected to files: no carriage returns, no transformers load report; data and budget phases
    are announced; evaluate scores the model's own pretraining text and says so."""
    rng = random.Random(2)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choices(FILLER + GROUPS["animal"], k=30)) for _ in range(400)))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "ultrafastbert.cli"]
    pretrain = [*command, "pretrain", "--output", str(run), "--corpus", str(corpus), "--preset", "tiny-ufb-2x3"]
    pretrain += ["--vocab-size", "60", "--seq-len", "32", "--max-steps", "3", "--micro-batch", "8", "--batch", "16"]
    pretrain += ["--cache-dir", str(tmp_path / "cache"), "--threads", "1"]
    done = subprocess.run(pretrain, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "preparing the data" in done.stderr and "data ready in" in done.stderr
    assert "pretraining: 3/3 step" in done.stderr

    evaluate = [*command, "evaluate", "--model", str(run / "model"), "--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run([*evaluate, "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"corpus: {corpus.resolve()}, the model's pretraining text\n")

    classify = subprocess.run(
        [*command, "classify", "--model", str(pretrained)], input="a cat\n", capture_output=True, text=True, timeout=300
    )
    assert classify.returncode == 1
    assert "LOAD REPORT" not in classify.stderr and "\r" not in classify.stderr
    assert classify.stderr.splitlines()[-1].startswith("ultrafastbert classify: error: ")
    assert "holds no trained classification head" in classify.stderr


def fffify_record(cosine: float, layer_steps: list[int], e2e_steps: int | None) -> dict:
    layers = [{"layer": index, "steps": steps, "r2_heldout": 0.9} for index, steps in enumerate(layer_steps)]
    return {
        "architecture": "FFFBertModel",
        "shape": "2x6",
        "config": {"layer_steps": 300, "e2e_steps": 150 if e2e_steps is not None else 0, "budget_minutes": 2.0},
        "layers": layers,
        "end_to_end": None if e2e_steps is None else {"steps": e2e_steps},
        "embedding": {"cosine_mean": cosine, "nn_top1_agreement": 0.3},
        "seconds": {"total": 100.0},
    }


def test_fffify_says_what_the_budget_cut_short_and_gives_a_verdict():
    lines = report_lines(fffify_record(0.72, [300, 120], 40), "out")
    assert lines[0].startswith("FFFBertModel 2x6 saved to out in 100 s: held-out FF R^2 per layer 0.900 0.900")
    assert "nearest neighbour the same for 30% of held-out texts" in lines[0]
    assert lines[1].startswith(
        "the time budget (--budget-minutes 2) cut short: layer 1 (120/300 steps), end-to-end distillation (40/150 "
        "steps)"
    )
    assert lines[2].startswith("verdict: far from the dense model")

    lines = report_lines(fffify_record(0.97, [300, 300], None), "out")
    assert len(lines) == 2 and lines[1].startswith("verdict: close to the dense model")


def test_the_seed_range_of_gain_retention_takes_every_task_at_its_worst_and_best_seed():
    report = {
        "retention": {"fff": {"informative_tasks": ["a", "b"]}},
        "majority": {"a": 0.5, "b": 0.2},
        "scores": {
            "dense": {"a": {"median": 0.9}, "b": {"median": 0.6}},
            "fff": {"a": {"seeds": [0.7, 0.9, 0.8]}, "b": {"seeds": [0.4, 0.5, 0.6]}},
        },
    }
    low, high = seed_range_of_gain(report, "fff")
    assert low == pytest.approx((0.5 + 0.5) / 2) and high == pytest.approx((1.0 + 1.0) / 2)


def test_pretrain_warns_of_a_gpu_scale_batch_on_a_cpu_and_records_its_corpus(tmp_path, capsys):
    rng = random.Random(3)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choices(FILLER + GROUPS["colour"], k=30)) for _ in range(200)))
    run = tmp_path / "run"
    args = ["pretrain", "--output", str(run), "--corpus", str(corpus), "--preset", "tiny-ufb-2x3", "--device", "cpu"]
    args += ["--vocab-size", "60", "--seq-len", "16", "--max-steps", "1", "--micro-batch", "8", "--batch", "1024"]
    assert main([*args, "--cache-dir", str(tmp_path / "cache"), "--eval-every-steps", "0"]) == 0
    err = capsys.readouterr().err
    assert "warning: --batch 1024 is the recipe's GPU-scale optimizer step: 128 forward and backward passes" in err
    assert "preparing the data" in err
    record = json.loads((run / "model" / PRETRAINING).read_text())
    assert record == {"corpus": [str(corpus.resolve())], "seq_len": 16}


def test_the_kernel_says_it_is_compiling_only_when_it_compiles(tmp_path, monkeypatch, capsys):
    from torch.utils import cpp_extension

    from ultrafastbert.fff import kernels

    monkeypatch.setattr(kernels, "build_directory", lambda: tmp_path / "build")
    loads = []
    monkeypatch.setattr(cpp_extension, "load", lambda **settings: loads.append(settings["build_directory"]))
    kernels._build()
    assert f"compiling the FFF kernel for this CPU (first use only, about 20 s; cached in {tmp_path / 'build'})" in (
        capsys.readouterr().err
    )
    (tmp_path / "build" / f"{kernels.LIBRARY}.so").touch()  # built before: loading it is silent
    kernels._build()
    assert capsys.readouterr().err == "" and loads == [str(tmp_path / "build")] * 2
