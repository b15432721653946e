"""Checkpoints that survive a kill: safetensors weights + optimizer state + RNG states + data position.

A checkpoint is a folder ``step-00000123`` written under a temporary name and renamed into place only when
complete, then published by atomically replacing the ``latest`` pointer file. A run killed at any instant leaves
either the previous checkpoint or the new one, never a half-written folder that ``--resume`` would read.
Nothing is unpickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..model.loading import CheckpointError

WEIGHTS = "model.safetensors"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
LATEST = "latest"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    config: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``directory/step-{step}`` atomically and point ``directory/latest`` at it; keep the newest ``keep``.

    ``state`` is JSON-serialisable training state (step counters, data position, timers); ``config`` is the
    run's configuration, compared on resume so a checkpoint is never loaded into a different model.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    optimizer_tensors, optimizer_json = _optimizer_state(optimizer)
    rng_tensors, rng_json = rng_state()
    save_file(_model_weights(model), str(tmp / WEIGHTS))
    save_file(optimizer_tensors | rng_tensors, str(tmp / STATE_TENSORS))
    payload = {"step": step, "state": state, "config": config, "optimizer": optimizer_json, "rng": rng_json}
    (tmp / STATE_JSON).write_text(json.dumps(payload, indent=2))
    for file in tmp.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():  # the same step saved twice (e.g. SIGTERM right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(directory)
    _write_json_atomic(directory / LATEST, {"checkpoint": final.name})
    for old in sorted(p for p in directory.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint ``latest`` points at, or None when the directory has none yet."""
    pointer = Path(directory) / LATEST
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (json.JSONDecodeError, KeyError) as error:
        raise CheckpointError(f"{pointer} is corrupt: {error}") from error
    path = Path(directory) / name
    if not path.is_dir():
        raise CheckpointError(f"{pointer} points at {name}, which does not exist")
    return path


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, config: dict[str, Any]
) -> dict[str, Any]:
    """Restore weights, optimizer and RNG states from ``path``; returns the saved training state.

    Raises :class:`CheckpointError` naming the problem for missing files, corrupt files, a configuration that
    differs from ``config``, or weights whose names or shapes do not match ``model``. Nothing is modified
    before all files are read and checked.
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
    differing = sorted(k for k in set(config) | set(payload["config"]) if config.get(k) != payload["config"].get(k))
    if differing:
        details = ", ".join(f"{k}: checkpoint={payload['config'].get(k)!r} run={config.get(k)!r}" for k in differing)
        raise CheckpointError(f"checkpoint {path} was made with a different configuration ({details})")
    expected = _model_weights(model)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mis_shaped = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or mis_shaped:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model: missing {missing}, unexpected {unexpected}, "
            f"mis-shaped {mis_shaped}"
        )
    model.load_state_dict(weights, strict=False)  # tied duplicates are absent by design, checked above
    if optimizer is not None:
        _load_optimizer_state(optimizer, state_tensors, payload["optimizer"])
    restore_rng_state(state_tensors, payload["rng"])
    return payload["state"]
