"""The Triton kernels (``triton_kernels``) as the CUDA implementations of the FFF ops (``ops``).

Imported with the package: where torch is built with CUDA and Triton is installed, the three ops get CUDA
implementations that import ``triton_kernels`` (and with it Triton) on their first call, so importing the package
costs a file-system lookup, not a Triton import. ``ops.TRITON_DEVICES`` records the devices registered; the layer
reads it to choose ``impl="triton"``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from .ops import TRITON_DEVICES

OP_NAMES = ("fff_infer", "fff_forward", "fff_backward")


def _lazy_kernel(name: str) -> Callable:
    def kernel(*args):
        from . import triton_kernels  # heavy and optional: imported on the first call, not with the package

        return getattr(triton_kernels, name)(*args)

    kernel.__name__ = f"{name}_triton"
    return kernel


def register_triton_kernels(device: str = "cuda") -> None:
    """Register the Triton kernels as the ``device`` implementations of the three ops (once per device).

    Done at import for ``"cuda"``. The tests register them for ``"cpu"`` in a process that runs Triton's
    interpreter (``TRITON_INTERPRET=1``) and never loads the compiled CPU kernel, which owns that device
    otherwise."""
    if device in TRITON_DEVICES:
        return
    for name in OP_NAMES:
        torch.library.register_kernel(f"ultrafastbert::{name}", device, _lazy_kernel(name))
    TRITON_DEVICES.add(device)


if torch.backends.cuda.is_built() and importlib.util.find_spec("triton") is not None:
    register_triton_kernels("cuda")
