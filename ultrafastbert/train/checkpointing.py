"""Checkpoints that survive a kill: safetensors weights + optimizer state + RNG states + data position.

A checkpoint is a folder ``step-00000123`` written under a temporary name (``.step-00000123.tmp-PID``) and renamed
into place only when complete, then published by atomically replacing the ``latest`` pointer file. A folder is
never replaced: saving a step that already has a folder (a resumed finished run, SIGTERM just after a periodic
save) writes ``step-00000123.1``, and older checkpoints are removed only after the pointer has moved on. So
``latest`` names a complete folder whatever instant a kill (or a full disk) lands, and a failed save leaves the
previous checkpoint as it was. ``latest`` also lists the checkpoints in the order they were published; the newest
``keep`` of them stay, whatever their step numbers.

Temporaries are marked as this package's own (``run_folder``), so the sweep of what killed processes left
half-written (``run_folder.remove_stale_temporaries``) never touches anything else. Nothing is unpickled:
tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..model.loading import CheckpointError
from .run_folder import fsync_dir, make_temporary_folder, unmark, write_json_atomic

WEIGHTS = "model.safetensors"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
LATEST = "latest"

CHECKPOINT_NAME = re.compile(r"step-\d{8}(\.\d+)?")  # step-00000123, or step-00000123.2 for a re-save


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every random number generator the training loop draws from, as tensors and JSON."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    json_part = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return tensors, json_part


def restore_rng_state(tensors: dict[str, torch.Tensor], json_part: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = json_part["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = json_part["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], json_part: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, values in json_part["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": json_part["param_groups"]})
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"optimizer state does not match this model's parameters: {error}") from error


def _model_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied (shared-storage) entries kept once, as safetensors requires."""
    seen: dict[tuple[int, int], str] = {}
    weights = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen[key] = name
        weights[name] = tensor.detach().contiguous().cpu()
    return weights


def _read_pointer(directory: Path) -> dict[str, Any] | None:
    """``latest``'s content, ``{"checkpoint": name, "published": [oldest, ..., name]}``; None before the first
    save. Pointers written before the publication list existed hold only ``checkpoint``."""
    pointer = directory / LATEST
    if not pointer.exists():
        return None
    try:
        content = json.loads(pointer.read_text())
        name = content["checkpoint"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{pointer} is corrupt: {error}") from error
    return {"checkpoint": name, "published": content.get("published", [name])}


def _unused_name(directory: Path, step: int) -> str:
    """``step-{step}``, or the first free ``step-{step}.N`` when that folder exists (a step saved again)."""
    name = f"step-{step:08d}"
    copy = 0
    while (directory / name).exists():
        copy += 1
        name = f"step-{step:08d}.{copy}"
    return name


def holds_checkpoints(directory: str | Path) -> bool:
    """Whether ``directory`` holds a ``latest`` pointer or any checkpoint folder."""
    directory = Path(directory)
    if (directory / LATEST).exists():
        return True
    return directory.is_dir() and any(CHECKPOINT_NAME.fullmatch(path.name) for path in directory.iterdir())


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    config: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write a checkpoint of ``step`` into a new folder of ``directory``, point ``latest`` at it, then remove the
    checkpoints beyond the ``keep`` (at least 1) most recently published. Returns the new folder.

    ``state`` is JSON-serialisable training state (step counters, data position, timers); ``config`` is the
    run's configuration, compared on resume so a checkpoint is never loaded into a different model. If anything
    fails (a full disk), the half-written temporary is removed and ``latest`` still names the previous checkpoint.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    previous = _read_pointer(directory)
    final = directory / _unused_name(directory, step)
    temporary = make_temporary_folder(directory, f"step-{step:08d}")
    try:
        optimizer_tensors, optimizer_json = _optimizer_state(optimizer)
        rng_tensors, rng_json = rng_state()
        save_file(_model_weights(model), str(temporary / WEIGHTS))
        save_file(optimizer_tensors | rng_tensors, str(temporary / STATE_TENSORS))
        payload = {"step": step, "state": state, "config": config, "optimizer": optimizer_json, "rng": rng_json}
        (temporary / STATE_JSON).write_text(json.dumps(payload, indent=2))
        for file in temporary.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(temporary, final)
        unmark(final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    fsync_dir(directory)
    published = [name for name in (previous or {}).get("published", []) if (directory / name).is_dir()]
    published = [*published, final.name][-max(keep, 1) :]
    write_json_atomic(directory / LATEST, {"checkpoint": final.name, "published": published})
    # only now that latest names the new folder may the old ones go; unpublished leftovers of killed saves go too
    for path in directory.iterdir():
        if CHECKPOINT_NAME.fullmatch(path.name) and path.name not in published and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint ``latest`` points at, or None when the directory has none yet."""
    directory = Path(directory)
    pointer = _read_pointer(directory)
    if pointer is None:
        return None
    path = directory / pointer["checkpoint"]
    if not path.is_dir():
        raise CheckpointError(f"{directory / LATEST} points at {pointer['checkpoint']}, which does not exist")
    return path


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys (``run.model.hidden_size``)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: dict[str, Any], current: dict[str, Any], ignored: Collection[str] = ()) -> list[str]:
    """``key (checkpoint X, now Y)`` for every dotted key whose values differ, leaving out the keys with a part in
    ``ignored`` (settings a resumed run may change, and everything under them)."""
    absent, ignored_parts = object(), set(ignored)
    saved_flat, current_flat = _flatten(saved), _flatten(current)
    differences = []
    for key in sorted(saved_flat.keys() | current_flat.keys()):
        if not ignored_parts.isdisjoint(key.split(".")):
            continue
        before, now = saved_flat.get(key, absent), current_flat.get(key, absent)
        if before != now:
            shown = ["absent" if value is absent else _short(value) for value in (before, now)]
            differences.append(f"{key} (checkpoint {shown[0]}, now {shown[1]})")
    return differences


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_training_state(path: str | Path) -> dict[str, Any]:
    """The training state saved in checkpoint ``path`` (step, data position, budget...), read without loading any
    tensor; ``CheckpointError`` when the file is missing or corrupt."""
    path = Path(path)
    try:
        return json.loads((path / STATE_JSON).read_text())["state"]
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is missing {STATE_JSON}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt: {error}") from None


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    config: dict[str, Any],
    ignored: Collection[str] = (),
) -> dict[str, Any]:
    """Restore weights, optimizer and RNG states from ``path``; returns the saved training state.

    Raises :class:`CheckpointError` naming the problem for missing files, corrupt files, a configuration that
    differs from ``config`` (naming the differing keys; keys with a part in ``ignored`` are not compared),
    or weights whose names or shapes do not match ``model``. Nothing is modified before all files are read and
    checked.
    """
    path = Path(path)
    for name in (WEIGHTS, STATE_TENSORS, STATE_JSON):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}")
    try:
        payload = json.loads((path / STATE_JSON).read_text())
        weights = load_file(str(path / WEIGHTS))
        state_tensors = load_file(str(path / STATE_TENSORS))
    except (json.JSONDecodeError, SafetensorError, OSError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt: {error}") from error
    differing = config_differences(payload["config"], config, ignored)
    if differing:
        raise CheckpointError(f"checkpoint {path} was made with a different configuration: {', '.join(differing)}")
    expected = _model_weights(model)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mis_shaped = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or mis_shaped:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model: missing {missing}, unexpected {unexpected}, "
            f"mis-shaped {mis_shaped}"
        )
    not_finite = sorted(name for name, tensor in weights.items() if not bool(torch.isfinite(tensor).all()))
    if not_finite:
        raise CheckpointError(f"checkpoint {path} holds NaN or infinite values in {', '.join(not_finite)}")
    model.load_state_dict(weights, strict=False)  # tied duplicates are absent by design, checked above
    if optimizer is not None:
        _load_optimizer_state(optimizer, state_tensors, payload["optimizer"])
    restore_rng_state(state_tensors, payload["rng"])
    return payload["state"]
