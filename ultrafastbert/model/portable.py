"""Saved model folders that load without this package: the model code written beside ``config.json``.

Every model family's ``save_pretrained`` (``FFFPreTrainedMixin`` in ``base.py``) calls ``write_model_code``,
which writes the configuration and modeling code in the Hub's custom-code layout: flat ``.py`` files next to
``config.json``, named by its ``auto_map`` entries (``configuration_crammedbert.CrammedBertConfig``,
``modeling_crammedbert.CrammedBertModel``, ...). Where ``transformers`` and ``torch`` are installed but this package
is not, ``AutoModel*.from_pretrained`` and ``pipeline`` with ``trust_remote_code=True`` then compute what the
package computes.

The files are the package's own sources, rewritten at save time rather than kept as a second copy of the model:
each module of ``folder_files(model_class)`` keeps its text, with its relative imports pointed at the flat folder
files. Where the model code imports the FFF layer, the copy prefers the installed package (``try: from
ultrafastbert.fff import ...``), whose compiled kernel is faster; without it, the folder's pure-PyTorch copy of the
layer serves, and ``fff_kernels.py`` stands in for the kernel modules, reporting the kernel unavailable (a warning,
once). Package-only code (what calls this module) is left out: a model loaded from the folder is saved again by
``transformers``' own custom-code mechanism, which copies the files the model was loaded from.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACKAGE = __name__.partition(".")[0]
PACKAGE_ROOT = Path(__file__).resolve().parents[1]

# Package module -> the folder file (name without ``.py``) that carries its copy. Every family's folder carries the
# shared modules: the FFF layer's, the loading checks and the base that every family's model classes share; each
# family adds its own (``FFFPreTrainedMixin.folder_files``: ``folder_files`` below joins the two).
LOADING_MODULE = f"{PACKAGE}.model.loading"
BASE_MODULE = f"{PACKAGE}.model.base"
FFF_FILES = {
    f"{PACKAGE}.fff.layer": "fff_layer",
    f"{PACKAGE}.fff.reference": "fff_reference",
    f"{PACKAGE}.fff.sparse": "fff_sparse",
    f"{PACKAGE}.fff.onnx": "fff_onnx",
}
SHARED_FILES = {BASE_MODULE: "model_base", LOADING_MODULE: "model_loading", **FFF_FILES}
# The compiled kernel's modules, which a folder cannot carry: one stand-in file takes the place of both.
KERNEL_MODULES = (f"{PACKAGE}.fff.kernels", f"{PACKAGE}.fff.ops")
KERNEL_STAND_IN = "fff_kernels"
# Imports of this sub-package from the rest of the folder's code prefer the installed package.
PREFER_INSTALLED = f"{PACKAGE}.fff"
# Package-only code: imports of these modules are dropped from the copies, and these (class, method) with them.
PACKAGE_ONLY_MODULES = (__name__,)
PACKAGE_ONLY_MEMBERS = {BASE_MODULE: (("FFFPreTrainedMixin", "save_pretrained"),)}

_STAND_IN_TEMPLATE = '''"""Stand-in for the compiled FFF kernel of the ``{package}`` package (its {modules}
modules), which a saved folder does not carry: ``available()`` is False, with a warning once, so the FFF layers of
this folder run their pure-PyTorch paths. With the package installed, the model code here uses the package's own
FFF layer instead.
"""

import sys
import warnings

import torch

_warned = False


def available() -> bool:
    """False: there is no compiled kernel here."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "{package} is not installed: the FFF layers of this model folder run their pure-PyTorch paths "
            "(install the {package} package for its compiled CPU kernel)",
            RuntimeWarning,
            stacklevel=2,
        )
    return False


{copied}

# The layer imports the kernel modules themselves; this module takes the place of each.
{bindings} = sys.modules[__name__]
'''


class PortableCodeError(RuntimeError):
    """The package's model code imports something this module does not know how to carry into a folder."""


def save_pretrained_with_code(
    model: Any, save: Callable[..., None], save_directory: str | os.PathLike, args: tuple, kwargs: dict
) -> None:
    """What the model families' ``save_pretrained`` do: ``save`` (``PreTrainedModel.save_pretrained``), then the
    model code beside ``config.json`` (``write_model_code``, the modules of ``folder_files``), so that the folder
    loads with ``trust_remote_code=True`` where this package is not installed. ``push_to_hub=True`` is refused, as
    its upload would leave the code out: ``model.push_to_hub(repo_id)`` uploads a complete folder."""
    if kwargs.get("push_to_hub"):
        raise ValueError(
            "save_pretrained(push_to_hub=True) would upload the folder without its model code; "
            "use model.push_to_hub(repo_id), which saves and uploads both"
        )
    save(save_directory, *args, **kwargs)
    if model.should_save_on_this_rank(kwargs.get("is_main_process", True)):
        write_model_code(save_directory, folder_files(type(model)))


def folder_files(model_class: type) -> dict[str, str]:
    """Package module -> folder file for every module a folder of ``model_class``'s family carries: the family's
    own (its ``folder_files``) and the shared ones."""
    return {**model_class.folder_files, **SHARED_FILES}


def write_model_code(folder: str | os.PathLike, files: dict[str, str]) -> list[Path]:
    """Write the folder copy of the model code (``model_code(files)``) into ``folder``; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in model_code(files).items():
        path = folder / f"{name}.py"
        path.write_text(text)
        written.append(path)
    return written


def model_code(files: dict[str, str]) -> dict[str, str]:
    """Folder file name (without ``.py``) -> source: the copies of the modules of ``files`` (package module ->
    folder file, ``folder_files(model_class)``) and the kernel stand-in."""
    copies = {files[module]: _folder_copy(module, files) for module in files}
    stand_in_names = {name for text in copies.values() for name in _names_taken_from(text, KERNEL_STAND_IN)}
    return copies | {KERNEL_STAND_IN: _kernel_stand_in(stand_in_names)}


def _folder_copy(module: str, files: dict[str, str]) -> str:
    """``module``'s source with each relative import rewritten to the folder's files, package-only code removed."""
    path = _source_path(module)
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []  # (first line, line after the last, replacement), 0-based
    dropped: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            text, names_dropped = _rewrite_import(module, node, files)
            edits.append((node.lineno - 1, node.end_lineno or node.lineno, text))
            dropped |= names_dropped
    top_level = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and id(node) not in top_level:
            raise PortableCodeError(f"{path}:{node.lineno}: only top-level relative imports can be rewritten")
    for class_name, method_name in PACKAGE_ONLY_MEMBERS.get(module, ()):
        method = _method(tree, class_name, method_name, path)
        first = min([method.lineno, *(decorator.lineno for decorator in method.decorator_list)]) - 1
        if first and not lines[first - 1].strip():
            first -= 1  # the blank line that separated it
        edits.append((first, method.end_lineno or method.lineno, ""))
    for first, end, text in sorted(edits, reverse=True):
        lines[first:end] = [text] if text else []
    copy = "".join(lines)
    still_used = sorted(dropped & {node.id for node in ast.walk(ast.parse(copy)) if isinstance(node, ast.Name)})
    if still_used:
        raise PortableCodeError(f"{path}: the folder copy still uses {still_used}, imported from package-only code")
    return f"# Written by save_pretrained from {_shown(path)}: edit the package, not this copy.\n{copy}"


def _rewrite_import(module: str, node: ast.ImportFrom, files: dict[str, str]) -> tuple[str, set[str]]:
    """The folder's lines for one relative import of ``module``, and the names it no longer binds (dropped)."""
    target = _absolute(module, node.level, node.module)
    by_file: dict[str, list[str]] = {}
    dropped: set[str] = set()
    for alias in node.names:
        owner, is_module = _owner(target, alias.name)
        bound = alias.asname or alias.name
        if owner in PACKAGE_ONLY_MODULES:
            dropped.add(bound)
            continue
        if owner in KERNEL_MODULES:
            file, name = KERNEL_STAND_IN, (owner.rpartition(".")[2] if is_module else alias.name)
        elif owner in files and not is_module:
            file, name = files[owner], alias.name
        else:
            raise PortableCodeError(
                f"{module} imports {owner if is_module else f'{alias.name} from {owner}'}, which a saved folder does "
                f"not carry: add the module to the folder's files ({__name__}.SHARED_FILES or the family's "
                "folder_files)"
            )
        by_file.setdefault(file, []).append(name if name == bound else f"{name} as {bound}")
    folder_lines = [f"from .{file} import {', '.join(names)}\n" for file, names in by_file.items()]
    if not folder_lines:
        return "", dropped
    if _within(target, PREFER_INSTALLED) and not _within(module, PREFER_INSTALLED):
        return (
            f"try:  # the installed {PACKAGE} package, whose FFF layer has the compiled kernel\n"
            f"    from {target} import {', '.join(map(ast.unparse, node.names))}\n"
            f"except ImportError:  # not installed: this folder's pure-PyTorch copy\n"
            + "".join(f"    {line}" for line in folder_lines)
        ), dropped
    return "".join(folder_lines), dropped


def _kernel_stand_in(names: set[str]) -> str:
    """The stand-in for ``KERNEL_MODULES``: ``available()`` (False), the modules' names bound to itself, and any
    other ``names`` the folder imports from them, copied from their sources as top-level assignments."""
    short_names = [module.rpartition(".")[2] for module in KERNEL_MODULES]
    copied = [_assignment(name) for name in sorted(names - set(short_names) - {"available"})]
    return _STAND_IN_TEMPLATE.format(
        package=PACKAGE,
        modules=" and ".join(f"``{name}``" for name in short_names),
        copied="\n".join(copied),
        bindings=" = ".join(short_names),
    )


def _assignment(name: str) -> str:
    """The top-level assignment of ``name`` in one of ``KERNEL_MODULES``, as source text saying where from."""
    for module in KERNEL_MODULES:
        source = _source_path(module).read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(target, ast.Name) and target.id == name for target in targets):
                    return f"{ast.get_source_segment(source, node)}  # as in {_shown(_source_path(module))}"
    raise PortableCodeError(
        f"the folder imports {name} from {' or '.join(KERNEL_MODULES)}, where it is not a top-level assignment"
    )


def _names_taken_from(source: str, file: str) -> set[str]:
    """Names that ``source`` imports from the folder file ``file`` (``from .file import ...``)."""
    return {
        alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module == file
        for alias in node.names
    }


def _owner(target: str, name: str) -> tuple[str, bool]:
    """The module that defines ``name`` imported from ``target``, and whether ``name`` is that module itself.
    Names imported from a package are followed through its ``__init__``'s re-exports to their own module."""
    if _is_module(f"{target}.{name}"):
        return f"{target}.{name}", True
    init = _source_path(target)
    if init.name != "__init__.py":
        return target, False
    for node in ast.parse(init.read_text()).body:
        if (
            isinstance(node, ast.ImportFrom)
            and node.level
            and any(alias.name == name and alias.asname is None for alias in node.names)
        ):
            return _owner(_absolute(target, node.level, node.module), name)
    raise PortableCodeError(f"{target} does not re-export {name}")


def _absolute(module: str, level: int, name: str | None) -> str:
    """The absolute name of a relative import ``from {'.' * level}{name}`` inside ``module``."""
    package = module if _source_path(module).name == "__init__.py" else module.rpartition(".")[0]
    base = package.rsplit(".", level - 1)[0] if level > 1 else package
    return f"{base}.{name}" if name else base


def _source_path(module: str) -> Path:
    """The source file of package module ``module`` (a package's ``__init__.py``)."""
    if not _within(module, PACKAGE):
        raise PortableCodeError(f"{module} is not part of the {PACKAGE} package")
    path = PACKAGE_ROOT.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _shown(path: Path) -> str:
    """``path`` as written in the folder's files: relative to the package's parent (``ultrafastbert/fff/ops.py``)."""
    return path.relative_to(PACKAGE_ROOT.parent).as_posix()


def _is_module(module: str) -> bool:
    return _source_path(module).is_file()


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _method(tree: ast.Module, class_name: str, method_name: str, path: Path) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for member in node.body:
                if isinstance(member, ast.FunctionDef) and member.name == method_name:
                    return member
    raise PortableCodeError(f"{path} has no {class_name}.{method_name} to leave out of the folder copy")
