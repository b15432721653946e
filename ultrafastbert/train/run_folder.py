"""Folders that a kill cannot leave half-written, and the lock of a folder a run writes in.

A folder is built under a temporary name beside its destination (:func:`staging_folder`) and renamed into place
(:func:`publish_folder`). Every temporary folder this package makes, ``.NAME.tmp-PID``, holds a marker file
(``MARKER``) written before anything else: that marker, not the name, is what makes a temporary this package's
own. :func:`remove_stale_temporaries` removes only marked folders whose process has ended, so a file or folder of
yours that happens to be named like a temporary is never touched. Publishing over an old folder moves it into a
marked holder ``.NAME.old.tmp-PID`` first; a kill before the new one is in place leaves the old one there, and
the next sweep of that parent folder puts it back under its name, whatever the name.

:func:`run_folder_lock` claims a folder while a run writes there; a second run is refused, naming the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCK = ".run.lock"
MARKER = ".ultrafastbert-temporary"  # inside every temporary folder this package makes; holds the maker's pid
TEMPORARY_NAME = re.compile(r"\.(.+)\.tmp-(\d+)")  # .step-00000123.tmp-4242, .model.old.tmp-4242
OLD_SUFFIX = ".old"  # .NAME.old.tmp-PID holds the folder NAME while a new one replaces it


class RunFolderError(RuntimeError):
    """A run folder this run may not write: another run holds it, or it holds a run that is not being resumed."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_temporary_folder(parent: str | Path, name: str) -> Path:
    """A new, empty-but-for-its-marker folder ``parent/.NAME.tmp-PID`` (an old one of this process is replaced).
    The marker is written first: creating it is also the check that ``parent`` can be written."""
    folder = Path(parent) / f".{name}.tmp-{os.getpid()}"
    if folder.is_dir() and is_temporary(folder):
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / MARKER).write_text(f"{os.getpid()}\n")
    return folder


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary folder this package made: named ``.NAME.tmp-PID`` and holding the marker."""
    return TEMPORARY_NAME.fullmatch(path.name) is not None and path.is_dir() and (path / MARKER).is_file()


def unmark(folder: Path) -> None:
    """Take the marker out of a folder once it is renamed into place (a kill in between leaves a harmless marker
    in a folder whose name is no temporary's, so nothing ever sweeps it)."""
    (folder / MARKER).unlink(missing_ok=True)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` by a rename from a marked temporary folder beside it."""
    holder = make_temporary_folder(path.parent, path.name)
    try:
        staged = holder / path.name
        with open(staged, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staged, path)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    fsync_dir(path.parent)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Clear what killed processes of this package left in ``directory``: each marked temporary folder
    (:func:`is_temporary`) whose process no longer runs. A publish holder ``.NAME.old.tmp-PID`` whose folder
    ``NAME`` is absent (a kill between :func:`publish_folder`'s renames) gives it back first. Anything unmarked
    stays, whatever its name; so do a live process's temporaries (its save in progress). Returns what was removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.iterdir()):
        match = TEMPORARY_NAME.fullmatch(path.name)
        if match is None or not is_temporary(path) or _process_alive(int(match.group(2))):
            continue
        _restore_from_holder(path, match.group(1))
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _restore_from_holder(holder: Path, name: str) -> None:
    if not name.endswith(OLD_SUFFIX):
        return
    name = name.removesuffix(OLD_SUFFIX)
    kept, destination = holder / name, holder.parent / name
    if kept.exists() and not destination.exists():
        os.replace(kept, destination)
        logger.warning("put %s back: a process killed while replacing it had moved it aside", destination)


def _check_no_file_above(destination: Path) -> None:
    """``NotADirectoryError`` naming the file when a file stands where a folder above ``destination`` must be."""
    blocking = next((folder for folder in destination.parents if folder.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise NotADirectoryError(f"cannot write {destination}: {blocking} is a file, not a folder")


def staging_folder(destination: str | Path) -> Path:
    """A new marked folder ``.NAME.tmp-PID`` beside ``destination`` to build it in (then :func:`publish_folder`).
    Creating it is the check that the destination can be written: an ``OSError`` naming the destination
    otherwise. What killed processes of this package left beside it is cleared first."""
    destination = Path(destination)
    parent = destination.parent
    _check_no_file_above(destination)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(parent)
        return make_temporary_folder(parent, destination.name)
    except OSError as error:
        raise OSError(f"cannot write {destination}: {error.strerror or error}") from None


def publish_folder(staging: str | Path, destination: str | Path) -> None:
    """Move the complete folder ``staging`` to ``destination`` by renames, so that ``destination`` is never a
    half-written mix: it is the old folder, the new one, or (for the instant between two renames) absent with the
    old one inside the marked holder ``.NAME.old.tmp-PID``, which the next sweep of the parent puts back if a kill
    landed there. The old folder is deleted only once the new one is in place."""
    staging, destination = Path(staging), Path(destination)
    fsync_dir(staging)
    holder = None
    if destination.exists():
        holder = make_temporary_folder(destination.parent, destination.name + OLD_SUFFIX)
        os.replace(destination, holder / destination.name)
    os.replace(staging, destination)
    unmark(destination)
    fsync_dir(destination.parent)
    if holder is not None:
        shutil.rmtree(holder, ignore_errors=True)


@contextlib.contextmanager
def run_folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold the lock of run folder ``folder`` (``flock`` on ``folder/.run.lock``, which records the holder's pid).

    A second process asking for it fails at once with :class:`RunFolderError` naming the holder. The kernel drops
    the lock when its holder exits, however it dies, so a killed run never leaves a stale one. Not re-entrant:
    the same process asking twice is refused too.
    """
    folder = Path(folder)
    _check_no_file_above(folder)
    created = [path for path in (folder, *folder.parents) if not path.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with _held_lock(folder):
            yield
    finally:
        # a run refused (or failed) before writing anything leaves none of the folders it made for the lock
        with contextlib.suppress(OSError):
            if created and [path.name for path in folder.iterdir()] == [LOCK]:
                (folder / LOCK).unlink(missing_ok=True)
                for path in created:
                    path.rmdir()


@contextlib.contextmanager
def _held_lock(folder: Path) -> Iterator[None]:
    with open(folder / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunFolderError(
                f"{folder} is in use by another run (pid {holder}); wait for it to end or choose another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
