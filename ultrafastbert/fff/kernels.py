"""Build and load the compiled CPU kernel (``csrc/``: several C++ sources, one library) on the machine it runs on.

The extension is compiled just in time by ``torch.utils.cpp_extension.load`` with ``-O3 -march=native
-fopenmp`` into a cache directory (``$ULTRAFASTBERT_CACHE`` or ``~/.cache/ultrafastbert``) keyed by the torch
version, the Python version, the CPU's instruction set, the flags and the content of every source and header, so
a shared home directory never hands one machine another's binary, and two checkouts with different sources
keep one build each instead of rebuilding each other's. The first use compiles (about 20 s on 2 cores);
later processes load the cached library in milliseconds. ``csrc/README.md`` describes the kernel's design.

Where it cannot be built (no compiler, no ninja, another platform) ``available()`` is ``False``, a one-line
warning is issued once, and the layer falls back to the pure-PyTorch paths.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import warnings
from pathlib import Path

import torch

from ..cache import cache_root
from . import ops  # noqa: F401  (defines the operator schemas the library implements)

CSRC = Path(__file__).parent / "csrc"
SOURCES = sorted(CSRC.glob("*.cpp"))  # compiled separately, linked into one library
HEADERS = sorted(CSRC.glob("*.h"))
CFLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"]

_lock = threading.Lock()
_available: bool | None = None  # None: not tried yet
_failure: str | None = None


def _build_key() -> str:
    """Short hash of what the binary depends on: torch, Python, the CPU's instruction-set flags, the compiler
    flags, and the name and content of every source and header."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    key = hashlib.sha256("|".join([torch.__version__, sys.version.split()[0], platform.machine(), flags]).encode())
    key.update(" ".join(CFLAGS).encode())
    for path in [*SOURCES, *HEADERS]:
        content = path.read_bytes()
        key.update(f"|{path.name}:{len(content)}|".encode())
        key.update(content)
    return key.hexdigest()[:12]


def build_directory() -> Path:
    """Where the extension for this machine, Python, torch and kernel source is compiled and cached."""
    return cache_root() / f"fff_cpu-{_build_key()}"


def _build() -> None:
    from torch.utils import cpp_extension

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="ultrafastbert_fff_cpu",
        sources=[str(source) for source in SOURCES],
        extra_cflags=CFLAGS,
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        is_python_module=False,  # the library registers its kernels with torch.library when loaded
        verbose=bool(os.environ.get("ULTRAFASTBERT_VERBOSE_BUILD")),
    )


def _reason(error: Exception) -> str:
    """One line saying why: the compiler's first error if there is one, else the exception's last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first_error = next((line for line in lines if "error:" in line), None)
    return f"{type(error).__name__}: {first_error or (lines[-1] if lines else 'no message')}"


@torch.compiler.assume_constant_result  # a compiled graph reads the answer once instead of tracing the lock
def available() -> bool:
    """Whether the compiled kernel is loaded, building it on the first call; warns once if it cannot be."""
    global _available, _failure
    if _available is None:
        with _lock:
            if _available is None:
                try:
                    _build()
                    _available = True
                except Exception as error:  # any build or load failure means: use the PyTorch fallback
                    _failure = _reason(error)
                    _available = False
                    warnings.warn(
                        f"ultrafastbert: compiled FFF CPU kernel unavailable ({_failure}); using the pure-PyTorch path",
                        RuntimeWarning,
                        stacklevel=2,
                    )
    return _available


def failure() -> str | None:
    """Why the kernel could not be built or loaded; None when it was, or has not been tried yet."""
    return _failure
