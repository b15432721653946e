"""The study folder as the study's state: atomic JSON files, and one folder per study settings."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..train.run_folder import LOCK
from .config import StudyConfig, StudyError


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically: readers see the old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    temporary.replace(path)


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def check_folder(config: StudyConfig) -> Path:
    """``StudyError`` unless the study folder is absent, empty (but for the lock), or holds a study with the same
    settings; writes nothing (:func:`claim_folder` does, once every other check has passed)."""
    out = Path(config.output_dir)
    settings_file = out / "study.json"
    if settings_file.is_file():
        saved = read_json(settings_file)
        ours = config.settings()
        differing = sorted(key for key in saved.keys() | ours.keys() if saved.get(key) != ours.get(key))
        if differing:
            details = "; ".join(f"{key}: folder {saved.get(key)!r}, now {ours.get(key)!r}" for key in differing)
            raise StudyError(
                f"{out} holds a study with other settings ({details}); rerun with the same settings to continue "
                "it, or choose another --output"
            )
    elif out.exists() and any(path.name != LOCK for path in out.iterdir()):
        raise StudyError(f"{out} exists and holds something other than a study; choose another --output")
    return out


def claim_folder(config: StudyConfig) -> Path:
    """Record the study's settings in its folder (checked by :func:`check_folder` first)."""
    out = check_folder(config)
    write_json(out / "study.json", config.settings())
    return out
