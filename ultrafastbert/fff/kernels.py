"""Build and load the compiled CPU kernel (``csrc/``: several C++ sources, one library) on the machine it runs on.

The extension is compiled just in time by ``torch.utils.cpp_extension.load`` with ``-O3 -fopenmp`` and the
instruction set chosen by ``$ULTRAFASTBERT_KERNEL_ISA`` (``ISA_FLAGS``): ``native`` (the default: everything this
CPU has), ``avx2`` (x86-64-v3: AVX2 + FMA, what most x86 machines of the last decade run) or ``avx512``
(x86-64-v4). It goes into a cache directory (``$ULTRAFASTBERT_CACHE`` or ``~/.cache/ultrafastbert``) keyed by the
torch version, the Python version, the CPU's instruction set, the flags (so the chosen ISA) and the content of
every source and header, so a shared home directory never hands one machine another's binary, and two checkouts
with different sources keep one build each instead of rebuilding each other's. The first use compiles (about
20 s on 2 cores); later processes load the cached library in milliseconds. ``csrc/README.md`` describes the
kernel's design.

Where it cannot be built (no compiler, no ninja, another platform, an unknown ``$ULTRAFASTBERT_KERNEL_ISA`` or an
instruction set this CPU lacks) ``available()`` is ``False``, a one-line warning says why, once, and the layer
falls back to the pure-PyTorch paths.
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
from ..progress import status
from . import ops  # noqa: F401  (defines the operator schemas the library implements)

CSRC = Path(__file__).parent / "csrc"
SOURCES = sorted(CSRC.glob("*.cpp"))  # compiled separately, linked into one library
HEADERS = sorted(CSRC.glob("*.h"))
LIBRARY = "ultrafastbert_fff_cpu"  # the compiled library's name: LIBRARY.so in the build directory
CFLAGS = ["-O3", "-ffp-contract=fast", "-fopenmp"]
ISA_VARIABLE = "ULTRAFASTBERT_KERNEL_ISA"
# The instruction sets the kernel can be built for: compiler flags, and the /proc/cpuinfo flags they need.
ISA_FLAGS = {"native": ["-march=native"], "avx2": ["-march=x86-64-v3"], "avx512": ["-march=x86-64-v4"]}
ISA_CPU_FLAGS = {
    "native": (),
    "avx2": ("avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"),
    "avx512": ("avx2", "fma", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
}

_lock = threading.Lock()
_available: bool | None = None  # None: not tried yet
_failure: str | None = None


def _cpu_flags() -> str:
    """The CPU's instruction-set flags line of /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def isa() -> str:
    """The instruction set the kernel is built for: ``$ULTRAFASTBERT_KERNEL_ISA``, ``native`` when unset."""
    return os.environ.get(ISA_VARIABLE, "").strip().lower() or "native"


def cpu_supports(name: str) -> bool:
    """Whether this CPU runs code built for instruction set ``name`` (a key of ``ISA_FLAGS``)."""
    if name == "native":
        return True
    flags = set(_cpu_flags().partition(":")[2].split())
    return platform.machine() in ("x86_64", "AMD64") and all(flag in flags for flag in ISA_CPU_FLAGS[name])


def compiler_flags() -> list[str]:
    """The flags the kernel is compiled with; a ``ValueError`` naming the problem for an unknown
    ``$ULTRAFASTBERT_KERNEL_ISA`` or an instruction set this CPU lacks."""
    name = isa()
    if name not in ISA_FLAGS:
        raise ValueError(f"{ISA_VARIABLE}={name!r} is not one of {', '.join(ISA_FLAGS)}")
    if not cpu_supports(name):
        raise ValueError(f"{ISA_VARIABLE}={name}: this CPU cannot run {name} code")
    return [*CFLAGS, *ISA_FLAGS[name]]


def _build_key() -> str:
    """Short hash of what the binary depends on: torch, Python, the CPU's instruction-set flags, the compiler
    flags (with the chosen ISA), and the name and content of every source and header."""
    fields = [torch.__version__, sys.version.split()[0], platform.machine(), _cpu_flags()]
    key = hashlib.sha256("|".join(fields).encode())
    key.update(" ".join(compiler_flags()).encode())
    for path in [*SOURCES, *HEADERS]:
        content = path.read_bytes()
        key.update(f"|{path.name}:{len(content)}|".encode())
        key.update(content)
    return key.hexdigest()[:12]


def build_directory() -> Path:
    """Where the extension for this machine, Python, torch, instruction set and kernel source is compiled and
    cached."""
    return cache_root() / f"fff_cpu-{isa()}-{_build_key()}"


def _build() -> None:
    from torch.utils import cpp_extension

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / f"{LIBRARY}.so").is_file():
        status(f"compiling the FFF kernel for this CPU (first use only, about 20 s; cached in {directory})")
    cpp_extension.load(
        name=LIBRARY,
        sources=[str(source) for source in SOURCES],
        extra_cflags=compiler_flags(),
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
