"""Rules of the house that a reviewer would otherwise have to remember."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "lequan"

# Calls an assert may make: pure functions with no effect to lose under ``python -O``.
PURE_IN_ASSERT = frozenset(
    {"len", "all", "any", "isinstance", "set", "frozenset", "sum", "sorted", "min", "max"}
)
PURE_METHODS_IN_ASSERT = frozenset({"fullmatch", "match", "startswith", "endswith"})


def _effects_in_asserts(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assert):
            continue
        for sub in ast.walk(node.test):
            if not isinstance(sub, ast.Call):
                continue
            func = sub.func
            if isinstance(func, ast.Name) and func.id in PURE_IN_ASSERT:
                continue
            if isinstance(func, ast.Attribute) and func.attr in PURE_METHODS_IN_ASSERT:
                continue
            found.append((node.lineno, ast.unparse(func)))
    return found


def test_no_call_with_an_effect_inside_an_assert() -> None:
    """``python -O`` deletes asserts, and a write inside one with them.

    Only pure built-ins may be called in an assert's test; anything else is
    called first and its result asserted.
    """
    offenders = [
        f"{path.relative_to(SRC)}:{line}: {call}(...)"
        for path in sorted(SRC.rglob("*.py"))
        for line, call in _effects_in_asserts(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert offenders == []


def test_the_rule_catches_a_write_inside_an_assert() -> None:
    tree = ast.parse("assert uow.take_stock(key, 1), 'locked'\nassert len(rows) == 2\n")
    assert _effects_in_asserts(tree) == [(1, "uow.take_stock")]


# Who may import what: services and the HTTP layer speak to ports, never adapters;
# only the composition root (``bootstrap``) picks adapters; the engine's exceptions
# never leave the SQL adapter.
FORBIDDEN_IMPORTS = {
    "services": ("lequan.adapters", "lequan.bootstrap", "lequan.http", "sqlalchemy", "redis"),
    "http": ("lequan.adapters", "sqlalchemy", "redis"),
    "domain": ("lequan.adapters", "lequan.services", "lequan.http", "lequan.ports", "sqlalchemy"),
    "ports": ("lequan.adapters", "lequan.services", "lequan.http", "sqlalchemy", "redis"),
    "rows.py": ("lequan.adapters", "lequan.services", "sqlalchemy"),
}
# Central (issue 14) has its own SQL store package and composition root.
SQLALCHEMY_ALLOWED = ("adapters/sql/", "central/store/")


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_layers_import_inward_only() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        room = relative.split("/")[0]
        forbidden = FORBIDDEN_IMPORTS.get(room, ())
        for line, module in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if any(_matches(module, prefix) for prefix in forbidden):
                offenders.append(f"{relative}:{line} imports {module}")
            elif _matches(module, "sqlalchemy") and not relative.startswith(SQLALCHEMY_ALLOWED):
                offenders.append(f"{relative}:{line} imports {module} outside adapters/sql")
    assert offenders == []


def test_adapters_are_picked_in_bootstrap_only() -> None:
    """Entry points (CLI, HTTP, demo) go through ``bootstrap``; it alone names adapters."""
    allowed = ("adapters/", "bootstrap.py", "central/bootstrap.py", "central/store/")
    offenders = [
        f"{path.relative_to(SRC).as_posix()}:{line} imports {module}"
        for path in sorted(SRC.rglob("*.py"))
        if not path.relative_to(SRC).as_posix().startswith(allowed)
        for line, module in _imports(ast.parse(path.read_text(encoding="utf-8")))
        if _matches(module, "lequan.adapters")
    ]
    assert offenders == []


# Packages of the repository that the wheel does not ship (it holds ``src/lequan`` alone).
NOT_SHIPPED = frozenset({"benchmarks", "tests"})


def _unshipped_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.extend((node.lineno, name) for name in names if name.split(".")[0] in NOT_SHIPPED)
    return sorted(found)


def test_the_product_never_imports_the_lab_or_the_tests() -> None:
    """An operator's install has no ``benchmarks`` and no ``tests``: importing either
    from the product would fail there, and lab equipment would be back in the product."""
    offenders = [
        f"{path.relative_to(SRC)}:{line}: {name}"
        for path in sorted(SRC.rglob("*.py"))
        for line, name in _unshipped_imports(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert offenders == []


def test_the_rule_catches_an_import_of_the_lab() -> None:
    tree = ast.parse(
        "import lequan.cli\n"
        "def f():\n"
        "    from benchmarks.run import fresh_postgres\n"
        "import tests.factories, json\n"
        "from . import benchmarks\n"
    )
    assert _unshipped_imports(tree) == [(3, "benchmarks.run"), (4, "tests.factories")]
