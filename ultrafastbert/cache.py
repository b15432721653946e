"""The one cache folder of the project (kernel builds, data, tokenizers): ``$ULTRAFASTBERT_CACHE`` or
``~/.cache/ultrafastbert``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("ULTRAFASTBERT_CACHE") or Path.home() / ".cache" / "ultrafastbert")
