"""Pretraining loop: it learns, it resumes exactly after SIGKILL or a full disk, torchrun equals one process, bad
resumes fail, divergence stops it without saving."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from ultrafastbert.model.crammedbert.configuration import CrammedBertConfig
from ultrafastbert.train import checkpointing
from ultrafastbert.train.checkpointing import CheckpointError, latest_checkpoint
from ultrafastbert.train.pretrain import (
    PretrainConfig,
    Pretrainer,
    TrainingDivergedError,
    mask_generators,
    mlm_metrics,
)
from ultrafastbert.train.run_folder import MARKER

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from pretrain_tiny import SEQ_LEN, VOCAB, mask_quarter, synthetic_sequences, tiny_model  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_script(*args: str, torchrun: bool = False) -> subprocess.CompletedProcess:
    if torchrun:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    else:
        command = [sys.executable]
    return subprocess.run(
        [*command, str(SCRIPTS / "pretrain_tiny.py"), *args], env=ENV, capture_output=True, text=True, timeout=240
    )


def final_weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / "final.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def trainer(
    output: Path, steps: int = 6, run_config: dict | None = None, lr: float = 3e-3, **settings: object
) -> Pretrainer:
    defaults = {"micro_batch": 8, "final_batch": 16, "max_steps": steps, "lr": lr, "checkpoint_every_minutes": 60}
    config = PretrainConfig(**(defaults | settings))
    return Pretrainer(
        tiny_model(),
        synthetic_sequences(96, seed=1),
        mask_quarter,
        config,
        output,
        validation_sequences=synthetic_sequences(64, seed=2),
        run_config=run_config or {"model": "tiny"},
    )


@pytest.mark.slow
def test_tiny_pretraining_lowers_validation_loss(tmp_path):
    run = trainer(tmp_path, steps=200, lr=3e-2)
    before = run.evaluate()
    after = run.run()
    assert after["step"] == 200 and not after["interrupted"]
    assert after["val_loss"] < before["val_loss"] - 1.0, (before, after)
    assert after["val_accuracy"] > 5 / 56  # well above guessing among the 56 tokens the data uses
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000200"
    records = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 201


@pytest.mark.parametrize("train_scale", [False, True])
def test_position_scale_is_fixed_unless_asked(tmp_path, train_scale):
    config = PretrainConfig(micro_batch=8, final_batch=8, max_steps=3, lr=3e-2, train_position_scale=train_scale)
    model = tiny_model()
    scale = model.encoder.embedding.pos_embedding.scale_factor
    initial, embedding = scale.detach().clone(), model.encoder.embedding.word_embedding.weight.detach().clone()
    Pretrainer(model, synthetic_sequences(32, seed=1), mask_quarter, config, tmp_path).run()
    assert torch.equal(scale, initial) != train_scale
    assert not torch.equal(model.encoder.embedding.word_embedding.weight, embedding)  # the rest trains either way


class InputCopier(torch.nn.Module):
    """Predicts every labelled token to be its input token: right exactly where the input was left unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):  # a masked LM of another family: full logits (B, S, V)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(input_ids, VOCAB).float())


def test_replaced_accuracy_leaves_out_the_copyable_tokens():
    def mask_but_keep_even_positions(ids, generators):
        inputs, labels = mask_quarter(ids, generators)
        keep = (labels != -100) & (torch.arange(SEQ_LEN) % 2 == 0)
        inputs[keep] = labels[keep]
        return inputs, labels

    sequences = synthetic_sequences(24, seed=3)
    metrics = mlm_metrics(InputCopier(), sequences, mask_but_keep_even_positions, 8)
    inputs, labels = mask_but_keep_even_positions(torch.stack(sequences), mask_generators(7919, range(24)))
    labelled = labels != -100
    unchanged = int((inputs[labelled] == labels[labelled]).sum()) / int(labelled.sum())
    assert 0.2 < unchanged < 0.8
    assert metrics["val_accuracy"] == pytest.approx(unchanged)
    assert metrics["val_accuracy_replaced"] == 0.0


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    steps = ["--steps", "12"]
    uninterrupted = run_script(str(tmp_path / "a"), *steps)
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    killed_dir = tmp_path / "b"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "pretrain_tiny.py"), str(killed_dir), *steps, "--step-delay", "0.25"],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (killed_dir / "checkpoints" / "step-00000005").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "final.safetensors").exists()
    resumed = run_script(str(killed_dir), *steps, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert max_difference(final_weights(killed_dir), final_weights(tmp_path / "a")) == 0.0


@pytest.mark.slow
def test_two_processes_equal_one_with_twice_the_micro_batch(tmp_path):
    one = run_script(str(tmp_path / "one"), "--steps", "4", "--micro-batch", "4", "--final-batch", "8")
    assert one.returncode == 0, one.stderr
    two = run_script(str(tmp_path / "two"), "--steps", "4", "--micro-batch", "2", "--final-batch", "8", torchrun=True)
    assert two.returncode == 0, two.stderr
    difference = max_difference(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"))
    assert difference <= 1e-5, difference
    # and the runs really trained: the weights moved away from the initialisation
    initial = {k: v for k, v in tiny_model().state_dict().items() if k != "decoder.weight"}
    assert max_difference(final_weights(tmp_path / "one"), initial) > 1e-3


def _checkpoint_digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_resume_with_a_different_configuration_fails_and_keeps_the_checkpoint(tmp_path):
    trainer(tmp_path, steps=2).run()
    before = _checkpoint_digest(tmp_path / "checkpoints")
    with pytest.raises(CheckpointError, match="different configuration"):
        trainer(tmp_path, steps=4, run_config={"model": "other"}).resume()
    assert _checkpoint_digest(tmp_path / "checkpoints") == before


@pytest.mark.parametrize("damage", ["truncate", "delete", "pointer"])
def test_damaged_checkpoint_gives_a_clear_error(tmp_path, damage):
    trainer(tmp_path, steps=2).run()
    checkpoint = latest_checkpoint(tmp_path / "checkpoints")
    weights = checkpoint / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
        message = "corrupt"
    elif damage == "delete":
        weights.unlink()
        message = "missing model.safetensors"
    else:
        (tmp_path / "checkpoints" / "latest").write_text("{not json")
        message = "latest is corrupt"
    with pytest.raises(CheckpointError, match=message):
        trainer(tmp_path, steps=4).resume()


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    assert trainer(tmp_path).resume() is False


def test_resume_names_only_the_differing_keys_and_ignores_the_library_version(tmp_path):
    """A transformers upgrade or a new checkpoint cadence resumes; another learning rate is refused, naming it."""
    model = CrammedBertConfig.from_preset("tiny-ufb-1x2", vocab_size=64).to_diff_dict()
    run_config = {"model": model, "train": {"lr": 3e-3, "checkpoint_every_minutes": 60, "max_minutes": None}}
    trainer(tmp_path, steps=2, run_config=run_config).run()
    upgraded = {
        "model": model | {"transformers_version": "99.0.0", "auto_map": {}},
        "train": {"lr": 3e-3, "checkpoint_every_minutes": 5, "max_minutes": 30},
    }
    assert trainer(tmp_path, steps=4, run_config=upgraded).resume()
    changed = upgraded | {"train": upgraded["train"] | {"lr": 1e-2}}
    with pytest.raises(CheckpointError) as error:
        trainer(tmp_path, steps=4, run_config=changed).resume()
    assert str(error.value).endswith("different configuration: run.train.lr (checkpoint 0.003, now 0.01)")


def test_a_step_is_checkpointed_once_however_the_run_ends(tmp_path):
    """A save at every step, then the end of the run, then a resume of the finished run: one folder per step."""
    trainer(tmp_path, steps=2, checkpoint_every_minutes=0).run()
    again = trainer(tmp_path, steps=2)
    assert again.resume()
    assert again.run()["step"] == 2
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == [
        "latest",
        "step-00000001",
        "step-00000002",
    ]
    assert trainer(tmp_path, steps=2).resume()


def lr_of_steps(output: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["lr"] for record in records if "lr" in record}


class Killed(BaseException):
    """Stands for SIGKILL: no handler catches it, nothing is saved on the way out."""


def kill_after(run: Pretrainer, step: int) -> None:
    """Run ``run`` and kill it while it prepares the step after ``step`` (saved at every step: ``step`` is kept)."""
    masker = run.masker

    def killing(ids, generators):
        if run.step == step:
            raise Killed
        return masker(ids, generators)

    run.masker = killing
    with pytest.raises(Killed):
        run.run()
    assert latest_checkpoint(run.checkpoint_dir).name == f"step-{step:08d}"


def test_a_finished_run_continues_with_a_larger_step_budget_as_a_new_segment(tmp_path):
    """4 steps, then --max-steps 10: steps 5-10 follow their own triangle (a warm restart) at the final batch; a
    kill inside the continuation resumes exactly; changing the budget of an unfinished run is refused, saying
    what to run."""
    first = trainer(tmp_path / "a", steps=4, final_batch=32, checkpoint_every_minutes=0)
    first.run()
    continued = trainer(tmp_path / "a", steps=10, final_batch=32, checkpoint_every_minutes=0)
    assert continued.resume() and continued.step == 4
    assert continued.run()["step"] == 10
    lr = lr_of_steps(tmp_path / "a")
    assert lr[4] == pytest.approx(3e-3) and lr[5] == pytest.approx(3e-3 * 0.25)  # a warm restart at step 5
    assert lr[6] > lr[5] and lr[10] < lr[9]  # its own triangle over the 6 added steps
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert {record["batch_sequences"] for record in records if record.get("step", 0) > 4 and "lr" in record} == {32}

    # the same continuation, killed after step 7 and resumed: bit-identical
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints")
    trainer(tmp_path / "b", steps=4, final_batch=32, checkpoint_every_minutes=0).run()
    killed = trainer(tmp_path / "b", steps=10, final_batch=32, checkpoint_every_minutes=0)
    assert killed.resume()
    kill_after(killed, 7)
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-00000007"
    resumed = trainer(tmp_path / "b", steps=10, final_batch=32, checkpoint_every_minutes=0)
    assert resumed.resume() and resumed.step == 7 and resumed.run()["step"] == 10
    weights = {name: value.detach() for name, value in resumed.model.state_dict().items()}
    reference = {name: value.detach() for name, value in continued.model.state_dict().items()}
    assert max_difference(weights, reference) == 0.0

    kill_after(trainer(tmp_path / "c", steps=4, checkpoint_every_minutes=0), 2)
    with pytest.raises(CheckpointError, match="stopped at step 2 before its budget of --max-steps 4 was spent: resume "
                       "it with --max-steps 4 to finish it, then continue it with a larger --max-steps"):  # fmt: skip
        trainer(tmp_path / "c", steps=8).resume()
    with pytest.raises(CheckpointError, match="has trained 10 steps, so --max-steps 6 adds none"):
        trainer(tmp_path / "a", steps=6).resume()


def test_a_signal_stops_the_run_with_a_checkpoint_and_says_which(tmp_path):
    run = trainer(tmp_path, steps=6)
    masker = run.masker

    def terminate_at_step_three(ids, generators):
        if run.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return masker(ids, generators)

    run.masker = terminate_at_step_three
    final = run.run()
    assert final["interrupted"] and final["signal"] == signal.SIGTERM and final["step"] == 3
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000003"


def test_a_full_disk_stops_the_run_and_a_later_resume_is_exact(tmp_path, monkeypatch):
    """The disk fills while step 3 is saved: the run stops with the error, latest still loads step 2 and nothing
    half-written is left; once there is space again the resumed run (which first clears a killed process's
    temporary) ends with the weights of an uninterrupted run."""
    uninterrupted = trainer(tmp_path / "a", steps=4, checkpoint_every_minutes=0)
    uninterrupted.run()
    run_dir, writes = tmp_path / "b", 0

    def fills_up(*args, **kwargs):
        nonlocal writes
        writes += 1
        if writes > 4:  # two files per checkpoint: steps 1 and 2 fit
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_file(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(checkpointing, "save_file", fills_up)
        with pytest.raises(OSError, match="No space left"):
            trainer(run_dir, steps=4, checkpoint_every_minutes=0).run()
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == [
        "latest",
        "step-00000001",
        "step-00000002",
    ]
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = run_dir / "checkpoints" / f".step-00000003.tmp-{dead.pid}"
    stale.mkdir()
    (stale / MARKER).write_text(f"{dead.pid}\n")  # as the package marks its temporaries
    resumed = trainer(run_dir, steps=4, checkpoint_every_minutes=0)
    assert resumed.resume() and resumed.step == 2
    assert resumed.run()["step"] == 4
    assert not stale.exists()
    weights = {name: value.detach() for name, value in resumed.model.state_dict().items()}
    reference = {name: value.detach() for name, value in uninterrupted.model.state_dict().items()}
    assert max_difference(weights, reference) == 0.0


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    run = trainer(tmp_path, steps=8, lr=1e6, checkpoint_every_minutes=0)
    with pytest.raises(TrainingDivergedError, match=r"at step \d+"):
        run.run()
    weights = load_file(str(latest_checkpoint(tmp_path / "checkpoints") / "model.safetensors"))
    assert all(torch.isfinite(value).all() for value in weights.values())


class NaNLossAt(torch.nn.Module):
    """``run``'s model, with a NaN loss at the given (1-based) steps."""

    def __init__(self, run: Pretrainer, steps: set[int]) -> None:
        super().__init__()
        self.model, self.trainer, self.steps = run.model, run, steps

    def forward(self, **inputs):
        output = self.model(**inputs)
        if self.trainer.step + 1 in self.steps:
            output.loss = output.loss * float("nan")
        return output


def test_non_finite_steps_are_skipped_up_to_the_allowed_count(tmp_path):
    run = trainer(tmp_path / "skip", steps=6, max_nonfinite_steps=1)
    run.ddp_model = NaNLossAt(run, {3, 5})
    assert run.run()["step"] == 6
    records = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()[:6]]
    assert [record.get("skipped", False) for record in records] == [False, False, True, False, True, False]
    assert records[2]["loss"] is None and math.isfinite(records[3]["loss"])
    assert all(int(state["step"]) == 4 for state in run.optimizer.state.values())  # 6 steps, 4 updates

    run = trainer(tmp_path / "stop", steps=6, max_nonfinite_steps=1)
    run.ddp_model = NaNLossAt(run, {3, 4})
    with pytest.raises(TrainingDivergedError, match=r"at step 4: .*2 non-finite or exploded step\(s\) in a row, 1 all"):
        run.run()
    assert latest_checkpoint(tmp_path / "stop" / "checkpoints") is None  # nothing saved after the divergence


class LossTimes(NaNLossAt):
    """``run``'s model, with the loss multiplied by ``factor`` at the given steps: finite, but exploded."""

    def __init__(self, run: Pretrainer, steps: set[int], factor: float) -> None:
        super().__init__(run, steps)
        self.factor = factor

    def forward(self, **inputs):
        output = self.model(**inputs)
        if self.trainer.step + 1 in self.steps:
            output.loss = output.loss * self.factor
        return output


def test_an_exploding_loss_counts_as_divergence_though_finite(tmp_path):
    run = trainer(tmp_path / "explode", steps=6)
    run.ddp_model = LossTimes(run, {3}, 1e9)
    with pytest.raises(TrainingDivergedError, match=r"at step 3: loss \d{10}.*1 non-finite or exploded step"):
        run.run()
    run = trainer(tmp_path / "spike", steps=6)
    run.ddp_model = LossTimes(run, {3}, 5.0)  # a loss spike a run survives is no divergence
    assert run.run()["step"] == 6


def test_resume_from_a_checkpoint_holding_nan_names_the_tensor(tmp_path):
    run = trainer(tmp_path, steps=2)
    run.run()
    weights_file = latest_checkpoint(tmp_path / "checkpoints") / checkpointing.WEIGHTS
    weights = load_file(str(weights_file))
    name = sorted(weights)[-1]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(weights_file))
    with pytest.raises(CheckpointError, match=f"NaN or infinite values in {name}"):
        trainer(tmp_path, steps=4).resume()
