"""The package's dependencies point one way, in the order CONTRIBUTING.md states (its ``layout`` block, the one
place the order is written down).

Read from the source with ``ast`` (nothing is imported), counting imports inside functions too: a lazy import
may save start-up time, but it may not close a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ultrafastbert"
CONTRIBUTING = PACKAGE.parent / "CONTRIBUTING.md"


def read_ranks(text: str) -> dict[str, int]:
    """Rank of each unit from the ``layout`` block: one line per rank, lowest first, units separated by spaces. A
    unit is a top-level module or sub-package (``train``), or a deeper one named with dots (``model.base``). An
    import may only go to the same unit or a lower rank."""
    block = re.search(r"```layout\n(.*?)```", text, flags=re.DOTALL)
    assert block, f"{CONTRIBUTING.name} has no ```layout block"
    return {unit: rank for rank, line in enumerate(block.group(1).splitlines()) for unit in line.split()}


# A new top-level module fails `test_every_unit_has_a_rank` until CONTRIBUTING.md places it.
RANKS = read_ranks(CONTRIBUTING.read_text())
PUBLIC_API = "ultrafastbert"  # the package's own __init__ re-exports the layers below it


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str], source: str | None = None) -> set[str]:
    """Modules of this package (of ``modules``) that ``path`` imports anywhere in its body, relative imports
    resolved; ``from package import name`` counts the submodule ``name`` when there is one, else the package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = [f"{target}.{alias.name}" for alias in node.names]
            targets = [module if module in modules else target for module in submodules]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t == PUBLIC_API or t.startswith(PUBLIC_API + "."))
    return found


def build_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        name: {target for target in imported_modules(path, set(modules)) if target in modules and target != name}
        for name, path in modules.items()
    }


def unit(module: str, ranks: dict[str, int] = RANKS) -> str:
    """The unit of ``module``: the longest dotted name below the package that ``ranks`` holds and that covers it
    (``ultrafastbert.model.base`` -> ``model.base``), else its top-level module or sub-package (``model``)."""
    parts = module.split(".")[1:]
    for end in range(len(parts), 1, -1):
        if ".".join(parts[:end]) in ranks:
            return ".".join(parts[:end])
    return parts[0] if parts else module


def wrong_imports(graph: dict[str, set[str]], ranks: dict[str, int] = RANKS) -> list[str]:
    """``module -> target`` for every import of ``graph`` that goes to another unit of the same or a higher rank."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module != PUBLIC_API
        for target in targets
        if target != PUBLIC_API
        and unit(target, ranks) != unit(module, ranks)
        and ranks[unit(target, ranks)] >= ranks[unit(module, ranks)]
    )


def unranked_subpackages(ranks: dict[str, int] = RANKS) -> list[str]:
    """Sub-packages of a package that the block splits into dotted units (``model``) which it does not name: a new
    model family must be placed, not folded into its parent's rank."""
    split = {name.rpartition(".")[0] for name in ranks if "." in name}
    return sorted(
        f"{parent}.{init.parent.name}"
        for parent in split
        for init in PACKAGE.joinpath(*parent.split(".")).glob("*/__init__.py")
        if f"{parent}.{init.parent.name}" not in ranks
    )


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(following) == 1:
                return path[path.index(following) :] + [following]
            elif not state.get(following):
                state[following] = 1
                path.append(following)
                stack.append(iter(sorted(graph[following])))
    return None


def test_no_import_cycle():
    cycle = find_cycle(build_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_unit_has_a_rank():
    units = {unit(module) for module in build_graph() if module != PUBLIC_API}
    assert units <= set(RANKS), f"place these in RANKS: {sorted(units - set(RANKS))}"
    unranked = unranked_subpackages()
    assert not unranked, f"place these sub-packages in RANKS: {unranked}"


def test_dependencies_point_one_way():
    wrong = wrong_imports(build_graph())
    assert not wrong, "imports against the layering: " + "; ".join(wrong)


def test_the_checks_see_a_cycle_and_a_wrong_direction():
    """The checks above can fail: a made-up graph with a cycle and an upward import is caught."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert RANKS[unit("ultrafastbert.model.crammedbert.modeling")] < RANKS[unit("ultrafastbert.train.jobs")]
    assert read_ranks("text\n```layout\nlow other\nhigh\n```\n") == {"low": 0, "other": 0, "high": 1}


def test_the_checks_see_a_wrong_import_between_model_units():
    """Dotted units: a family importing another family, or a shared module importing a family, is caught; a family
    importing a shared module, and the package ``__init__`` importing a family, are not."""
    assert unit("ultrafastbert.model.crammedbert.modeling") == "model.crammedbert"
    assert unit("ultrafastbert.model.codegen") == "model" and unit("ultrafastbert.model") == "model"
    family, other_family = "ultrafastbert.model.fffbert.modeling", "ultrafastbert.model.crammedbert.modeling"
    graph = {
        family: {other_family, "ultrafastbert.model.base"},
        "ultrafastbert.model.base": {"ultrafastbert.model.ultrafastgpt.modeling", "ultrafastbert.model.loading"},
        "ultrafastbert.model": {other_family},
    }
    assert wrong_imports(graph) == [
        "ultrafastbert.model.base -> ultrafastbert.model.ultrafastgpt.modeling",
        f"{family} -> {other_family}",
    ]
    ranks = read_ranks("```layout\nmodel.base\nmodel.crammedbert\nmodel\n```\n")
    unranked = unranked_subpackages(ranks)
    assert {"model.fffbert", "model.ultrafastgpt"} <= set(unranked) and "model.crammedbert" not in unranked


@pytest.mark.parametrize(
    "statement", ["from ..model.crammedbert import modeling", "from ultrafastbert.model import loading"]
)
def test_imports_are_resolved(statement):
    """Relative and absolute forms, inside a function too, resolve to the module they name."""
    source = f"def f():\n    {statement}\n"
    modules = {
        "ultrafastbert.model",
        "ultrafastbert.model.crammedbert",
        "ultrafastbert.model.crammedbert.modeling",
        "ultrafastbert.model.loading",
    }
    found = imported_modules(PACKAGE / "train" / "example.py", modules, source)
    assert len(found) == 1 and found <= modules - {"ultrafastbert.model", "ultrafastbert.model.crammedbert"}
