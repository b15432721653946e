"""Suite-wide markers: tests marked ``gpu`` need a CUDA GPU with the Triton kernels and skip cleanly elsewhere
(``pytest -m gpu`` selects just them on a GPU machine)."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from ultrafastbert.fff import ops  # registers the ops, and with CUDA their Triton implementations

    if torch.cuda.is_available() and "cuda" in ops.TRITON_DEVICES:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and the Triton kernels registered for it")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
