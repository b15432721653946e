"""Run folders that cannot lose work: atomic publishing under kills, pruning by publication, the lock, stale
temporaries, a full disk, and the refusal to start a new run over an old one."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest
import torch

from ultrafastbert.train import checkpointing, run_folder
from ultrafastbert.train.checkpointing import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from ultrafastbert.train.jobs import PretrainJob, claim_run_folder, save_model_folder
from ultrafastbert.train.run_folder import (
    MARKER,
    RunFolderError,
    publish_folder,
    remove_stale_temporaries,
    run_folder_lock,
    staging_folder,
)

CONFIG = {"model": "linear"}


class Killed(BaseException):
    """Stands for SIGKILL: not an ``Exception``, so no ordinary handler catches it."""


@pytest.fixture
def model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def save(directory, step, model_and_optimizer, keep=2):
    return save_checkpoint(directory, step, *model_and_optimizer, {"step": step}, CONFIG, keep=keep)


def loaded_step(directory, model_and_optimizer) -> int:
    return load_checkpoint(latest_checkpoint(directory), model_and_optimizer[0], None, CONFIG)["step"]


def step_folders(directory) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if checkpointing.CHECKPOINT_NAME.fullmatch(path.name))


@pytest.mark.parametrize("next_step", [2, 3], ids=["same-step-again", "new-step"])
def test_latest_loads_whatever_instant_a_save_is_killed(tmp_path, monkeypatch, model_and_optimizer, next_step):
    """Kill the save at its first, second, ... file-system operation until one completes: ``latest`` must load
    after each kill, and the next save must leave only the published checkpoints."""
    directory = tmp_path / "checkpoints"
    calls, kill_at = 0, 0

    def killable(original):
        def operation(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == kill_at:
                raise Killed
            return original(*args, **kwargs)

        return operation

    finished = False
    while not finished:
        kill_at += 1
        shutil.rmtree(directory, ignore_errors=True)
        save(directory, 1, model_and_optimizer)
        save(directory, 2, model_and_optimizer)
        calls = 0
        with monkeypatch.context() as patch:
            for name in ("save_file", "fsync_dir", "write_json_atomic"):
                patch.setattr(checkpointing, name, killable(getattr(checkpointing, name)))
            for name in ("rename", "replace"):
                patch.setattr(checkpointing.os, name, killable(getattr(os, name)))
            patch.setattr(checkpointing.shutil, "rmtree", killable(shutil.rmtree))
            try:
                save(directory, next_step, model_and_optimizer)
                finished = True
            except Killed:
                pass
        assert loaded_step(directory, model_and_optimizer) in {2, next_step}, kill_at
        save(directory, 4, model_and_optimizer)
        assert len(step_folders(directory)) == 2 and latest_checkpoint(directory).name == "step-00000004"
    assert kill_at > 6  # the kills really landed between the steps


def test_saving_a_step_again_uses_a_new_folder(tmp_path, model_and_optimizer):
    directory = tmp_path / "checkpoints"
    first = save(directory, 5, model_and_optimizer)
    again = save(directory, 5, model_and_optimizer)
    assert (first.name, again.name) == ("step-00000005", "step-00000005.1")
    assert latest_checkpoint(directory) == again and first.is_dir()
    assert save(directory, 5, model_and_optimizer).name == "step-00000005.2"
    assert step_folders(directory) == ["step-00000005.1", "step-00000005.2"]


def test_pruning_keeps_the_newest_published_whatever_their_steps(tmp_path, model_and_optimizer):
    """A new run in an old run's folder counts steps from 1 again: its checkpoints must not be the ones pruned."""
    directory = tmp_path / "checkpoints"
    for step in (10, 11):
        save(directory, step, model_and_optimizer)
    save(directory, 1, model_and_optimizer)
    assert step_folders(directory) == ["step-00000001", "step-00000011"]
    assert loaded_step(directory, model_and_optimizer) == 1
    save(directory, 2, model_and_optimizer)
    assert step_folders(directory) == ["step-00000001", "step-00000002"]
    save(directory, 3, model_and_optimizer, keep=0)  # the one just published stays, always
    assert step_folders(directory) == ["step-00000003"]


def test_a_pointer_without_publication_list_still_works(tmp_path, model_and_optimizer):
    directory = tmp_path / "checkpoints"
    save(directory, 1, model_and_optimizer)
    save(directory, 2, model_and_optimizer)
    (directory / "latest").write_text('{"checkpoint": "step-00000002"}')  # as older versions wrote it
    assert loaded_step(directory, model_and_optimizer) == 2
    save(directory, 3, model_and_optimizer)
    assert step_folders(directory) == ["step-00000002", "step-00000003"]


def test_a_full_disk_leaves_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch, model_and_optimizer):
    directory = tmp_path / "checkpoints"
    save(directory, 1, model_and_optimizer)
    before = sorted(p.relative_to(directory) for p in directory.rglob("*"))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointing, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save(directory, 2, model_and_optimizer)
    assert sorted(p.relative_to(directory) for p in directory.rglob("*")) == before
    assert loaded_step(directory, model_and_optimizer) == 1


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def temporary_of(folder, name, pid):
    """A temporary folder as this package makes one, for process ``pid``."""
    path = folder / f".{name}.tmp-{pid}"
    path.mkdir()
    (path / MARKER).write_text(f"{pid}\n")
    return path


def test_only_the_marked_temporaries_of_dead_processes_are_removed(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    stale_folder = temporary_of(tmp_path, "step-00000007", dead)
    (stale_folder / "model.safetensors").write_bytes(b"half")
    stale_pointer = temporary_of(tmp_path, "latest", dead)
    in_progress = temporary_of(tmp_path, "step-00000008", alive)
    (tmp_path / "step-00000006").mkdir()
    assert remove_stale_temporaries(tmp_path) == sorted([stale_folder, stale_pointer])
    assert sorted(path.name for path in tmp_path.iterdir()) == [in_progress.name, "step-00000006"]
    assert remove_stale_temporaries(tmp_path / "absent") == []


def test_files_and_folders_of_yours_named_like_temporaries_are_never_removed(tmp_path):
    """A file ``.notes.tmp-999999`` and a folder ``.mydata.tmp-999998/`` beside an output folder (pids of no
    process) are the user's: saving a model there must leave them as they are."""
    dead = dead_pid()
    notes = tmp_path / f".notes.tmp-{dead}"
    notes.write_text("mine")
    data = tmp_path / f".mydata.tmp-{dead}"
    data.mkdir()
    (data / "rows.csv").write_text("a,b\n")
    lookalike = tmp_path / f".model.old.tmp-{dead}"  # named like a publish holder, but made by the user
    lookalike.mkdir()
    (lookalike / "keep.txt").write_text("mine too")
    Saver = type("Saver", (), {"save_pretrained": lambda self, folder: (folder / "config.json").write_text("{}")})
    save_model_folder(Saver(), Saver(), tmp_path / "model")
    assert notes.read_text() == "mine" and (data / "rows.csv").read_text() == "a,b\n"
    assert (lookalike / "keep.txt").read_text() == "mine too"
    assert (tmp_path / "model" / "config.json").is_file() and not (tmp_path / "model" / MARKER).exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([notes.name, data.name, lookalike.name, "model"])


def test_a_publish_killed_between_its_renames_is_put_back_by_a_save_into_a_sibling_folder(tmp_path, monkeypatch):
    """Killed after the old ``X`` was moved aside and before the new one took its name: a later save into another
    folder of the same parent must give ``X`` back (old content), not delete it."""
    destination = tmp_path / "X"
    destination.mkdir()
    (destination / "config.json").write_text("old")
    staging = staging_folder(destination)
    (staging / "config.json").write_text("new")
    replaced, real_replace = [], os.replace

    def replace_once(source, target):
        if replaced:
            raise Killed
        replaced.append(target)
        real_replace(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(run_folder.os, "replace", replace_once)
        with pytest.raises(Killed):
            publish_folder(staging, destination)
    assert not destination.exists()
    monkeypatch.setattr(run_folder, "_process_alive", lambda pid: False)  # the killed process is gone
    sibling = staging_folder(tmp_path / "Y")
    assert (destination / "config.json").read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["X", sibling.name])


def test_a_held_run_folder_is_refused_naming_the_holder(tmp_path):
    with run_folder_lock(tmp_path):
        assert (tmp_path / ".run.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunFolderError, match=rf"in use by another run \(pid {os.getpid()}\)"):
            with run_folder_lock(tmp_path):
                pass
    with run_folder_lock(tmp_path):  # released on exit
        pass


def test_the_lock_of_a_killed_holder_is_free(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(60)", str(tmp_path / ".run.lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunFolderError, match="in use by another run"), run_folder_lock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with run_folder_lock(tmp_path):
        pass


def make_run(folder, checkpoints=True, metrics=True):
    if checkpoints:
        (folder / "checkpoints" / "step-00000003").mkdir(parents=True)
        (folder / "checkpoints" / "latest").write_text('{"checkpoint": "step-00000003"}')
    if metrics:
        (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    (folder / "model").mkdir(exist_ok=True)
    (folder / "final.json").write_text("{}")
    (folder / "notes.txt").write_text("mine")


@pytest.mark.parametrize("held", ["checkpoints", "metrics"])
def test_a_new_run_over_an_old_one_is_refused(tmp_path, held):
    make_run(tmp_path, checkpoints=held == "checkpoints", metrics=held == "metrics")
    with pytest.raises(RunFolderError, match="already holds a run.*--resume.*--output.*--overwrite"):
        claim_run_folder(PretrainJob(output_dir=str(tmp_path)))
    claim_run_folder(PretrainJob(output_dir=str(tmp_path), resume=True))
    assert (tmp_path / "final.json").exists()


def test_overwrite_deletes_only_the_old_run(tmp_path):
    make_run(tmp_path)
    claim_run_folder(PretrainJob(output_dir=str(tmp_path), overwrite=True))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
    claim_run_folder(PretrainJob(output_dir=str(tmp_path)))  # now free
    with pytest.raises(RunFolderError, match="pass one of them"):
        claim_run_folder(PretrainJob(output_dir=str(tmp_path), resume=True, overwrite=True))


def test_a_pointer_at_a_missing_folder_is_an_error(tmp_path):
    (tmp_path / "latest").write_text('{"checkpoint": "step-00000009"}')
    with pytest.raises(CheckpointError, match="does not exist"):
        latest_checkpoint(tmp_path)


def test_a_run_that_ends_before_writing_anything_leaves_no_folder_behind(tmp_path):
    fresh, existing, nested = tmp_path / "fresh", tmp_path / "existing", tmp_path / "new" / "deeper" / "run"
    existing.mkdir()
    for folder in (fresh, existing, nested):
        with pytest.raises(RuntimeError, match="refused"), run_folder_lock(folder):
            raise RuntimeError("refused")
    assert not fresh.exists() and not (tmp_path / "new").exists()  # created for the lock and removed with it
    assert existing.is_dir()  # a folder the user made stays
    with run_folder_lock(fresh):
        (fresh / "metrics.jsonl").write_text("{}\n")
    assert sorted(path.name for path in fresh.iterdir()) == [".run.lock", "metrics.jsonl"]


class Interrupted(Exception):
    pass


def test_a_published_folder_is_old_or_new_whatever_instant_the_save_is_killed(tmp_path, monkeypatch):
    """``save_model_folder`` killed at each file-system step in turn: the folder must always be the complete old
    one or the complete new one (once the next save has put an interrupted swap back), never a mix."""
    class Saver:
        def __init__(self, name: str, text: str) -> None:
            self.name, self.text = name, text

        def save_pretrained(self, folder) -> None:
            step()
            (folder / self.name).write_text(self.text)

    destination = tmp_path / "model"
    destination.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (destination / name).write_text("old")
    calls, kill_at, outcomes = 0, 0, set()

    def step() -> None:
        nonlocal calls
        calls += 1
        if calls == kill_at:
            raise Interrupted

    def killable(original):
        def wrapper(*args, **kwargs):
            step()
            return original(*args, **kwargs)

        return wrapper

    while True:
        calls, kill_at = 0, kill_at + 1
        with monkeypatch.context() as patch:
            patch.setattr(run_folder.os, "replace", killable(os.replace))
            patch.setattr(run_folder, "fsync_dir", killable(run_folder.fsync_dir))
            try:
                save_model_folder(Saver("config.json", "new"), Saver("tokenizer.json", "new"), destination)
                finished = True
            except Interrupted:
                finished = False
        monkeypatch.setattr(run_folder, "_process_alive", lambda pid: False)  # the "killed" saver is gone
        shutil.rmtree(staging_folder(destination))  # what the next save does first
        monkeypatch.undo()
        contents = {path.name: path.read_text() for path in destination.iterdir()}
        old, new = ({"config.json": text, "tokenizer.json": text} for text in ("old", "new"))
        assert contents in (old, new)
        outcomes.add(contents["config.json"])
        assert [path.name for path in tmp_path.iterdir()] == ["model"]  # no temporaries left
        if finished:
            break
        for name in ("config.json", "tokenizer.json"):
            (destination / name).write_text("old")
    assert outcomes == {"old", "new"} and kill_at > 4
