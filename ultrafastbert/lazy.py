"""Packages whose public names import their modules on first use (PEP 562), so that importing a package, and the
command line with it, does not pay for torch and transformers until a name that needs them is used."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, sources: dict[str, tuple[str, ...]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the package named ``package``: ``sources`` maps each of its submodules
    (``".corpus"``) to the public names it defines. A name is imported on first access and then kept in the
    package's namespace, so the next access is a plain lookup. No name may be that of its own submodule: importing
    the submodule binds its name in the package to the module, so the name would depend on the import order."""
    namespace = vars(sys.modules[package])
    module_of = {name: module for module, names in sources.items() for name in names}
    shadowed = [name for name, module in module_of.items() if name == module.lstrip(".")]
    if shadowed:
        raise ValueError(f"{package}: {shadowed} would be replaced by the submodules of the same names")

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_of[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(module_of))

    return __getattr__, __dir__
