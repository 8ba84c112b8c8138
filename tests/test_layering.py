"""The package's layers, checked on its source: what may import what, and no cycles.

- ``compressors`` is the library layer: no Optuna, no Ray, nothing from ``slimtune.trials``,
  ``slimtune.strategies``, the dashboard or the CLI; ``search_spaces`` (Optuna distributions over
  plans) nothing from the strategies or above;
- ``strategies`` sits below ``trials``: nothing from ``slimtune.trials``;
- Optuna's private attributes are reached only through :mod:`slimtune.optuna_internals` (and the
  storage subclass in :mod:`slimtune.trials.storage`);
- no module imports a private name of another module (``from x import _name``);
- no import cycles between modules, counting imports inside functions (which hide cycles from the
  interpreter) but not those under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "slimtune"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    """The slimtune module ``name`` refers to (``a.b.C`` → ``a.b`` when ``C`` is not a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> list[tuple[str, str, int]]:
    """``(imported module, imported name or '', line)`` of every import outside TYPE_CHECKING blocks."""
    tree = ast.parse(MODULES[module].read_text())
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(sub) for sub in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend((node.module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((alias.name, "", node.lineno) for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for module in MODULES:
        for target, name, _ in _imports(module):
            if target.split(".")[0] != "slimtune":
                continue
            resolved = _resolve(f"{target}.{name}" if name else target)
            if resolved != module:
                edges[module].add(resolved)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def _layer_violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for module in MODULES:
        if module != layer and not module.startswith(layer + "."):
            continue
        for target, _, line in _imports(module):
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                bad.append(f"{module}:{line} imports {target}")
    return bad


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        (
            "slimtune.compressors",
            ("optuna", "ray", "slimtune.trials", "slimtune.strategies", "slimtune.dashboard", "slimtune.cli"),
        ),
        # (search spaces are made of Optuna distributions)
        ("slimtune.search_spaces", ("ray", "slimtune.trials", "slimtune.strategies", "slimtune.dashboard", "slimtune.cli")),
        ("slimtune.strategies", ("slimtune.trials", "slimtune.dashboard", "slimtune.cli")),
    ],
)
def test_lower_layers_do_not_import_upper_ones(layer: str, forbidden: tuple[str, ...]) -> None:
    assert _layer_violations(layer, forbidden) == []


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]


def test_no_module_imports_a_private_name_of_another() -> None:
    bad = [
        f"{module}:{line} imports {name} from {target}"
        for module in MODULES
        for target, name, line in _imports(module)
        if target.startswith("slimtune") and name.startswith("_") and not name.startswith("__")
    ]
    assert bad == []


_PRIVATE_OPTUNA = re.compile(r"\._storage\b|\._study_id\b|\._trial_id\b|\bsystem_attrs\b|set_study_system_attr")
_ALLOWED = {"slimtune.optuna_internals", "slimtune.trials.storage"}


def test_optuna_internals_are_used_in_one_place() -> None:
    bad = [
        f"{module}:{n}: {line.strip()}"
        for module, path in MODULES.items()
        if module not in _ALLOWED
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _PRIVATE_OPTUNA.search(line.split("#")[0])
    ]
    assert bad == []
