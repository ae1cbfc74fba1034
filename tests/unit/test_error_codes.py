"""The error-code registry, the code that answers codes and docs/api.md agree.

Channels and acquirers code against the codes, so a code the registry does
not know, a registered code nothing answers, or a doc that says another
status is a broken promise. The source is read with ``ast``: a code is a
string literal at a raising site (or reaches one through a local name, a
conditional or a module-level table), or a value typed ``ErrorCode``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lequan.domain.error_codes import ERRORS, ErrorCode, spec_of
from lequan.domain.errors import (
    AuthError,
    Conflict,
    IdempotencyError,
    InvalidInput,
    LequanError,
    NotFound,
    Unavailable,
)
from lequan.services.views import http_status

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "lequan"
REGISTRY = SRC / "domain" / "error_codes.py"
DOC = ROOT / "docs" / "api.md"
TABLE_SCRIPT = ROOT / "scripts" / "error-table"
BEGIN = "<!-- error-codes: printed by scripts/error-table --write; edit the registry, not this -->"
END = "<!-- /error-codes -->"

# The statuses each kind may answer with, as the exception tree's docstrings say.
STATUSES_BY_KIND: dict[type[LequanError], frozenset[int]] = {
    LequanError: frozenset(),  # none: only the CLI's setup_error is a bare LequanError
    InvalidInput: frozenset({413, 422}),
    NotFound: frozenset({404}),
    Conflict: frozenset({409}),
    AuthError: frozenset({401, 403}),
    IdempotencyError: frozenset({409, 422}),
    Unavailable: frozenset({429, 503}),
}


class Unresolved(Exception):
    """A code expression the scan cannot follow to literals or an ``ErrorCode``."""


@dataclass(frozen=True)
class Site:
    where: str
    codes: frozenset[str]
    status: int | None = None  # an HTTP status literal written beside the code


class _Module:
    """One source file, with what the scan needs to follow a name."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.parents: dict[ast.AST, ast.AST] = {
            child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
        }

    def scope(self, node: ast.AST) -> ast.AST:
        """The innermost function around ``node``, or the module."""
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node
        return self.tree

    def assignments(
        self, name: str, scope: ast.AST
    ) -> Iterator[tuple[ast.expr | None, int | None]]:
        """What ``name`` is bound to in ``scope``: (value, position in a tuple target).

        An ``ErrorCode`` annotation (of a parameter or an assignment) yields None:
        mypy holds such a value to the registry.
        """
        if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            args = scope.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                if arg.arg == name:
                    if _is_error_code(arg.annotation):
                        yield None, None
                    else:
                        raise Unresolved(f"parameter {name}")
        # In a function, any binding in its body; in the module, its own statements only.
        nodes = ast.walk(scope) if scope is not self.tree else iter(self.tree.body)
        for node in nodes:
            if isinstance(node, ast.AnnAssign) and _is_name(node.target, name):
                if _is_error_code(node.annotation):
                    yield None, None
                elif node.value is not None:
                    yield node.value, None
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if _is_name(target, name):
                        yield node.value, None
                    elif isinstance(target, ast.Tuple):
                        for position, element in enumerate(target.elts):
                            if _is_name(element, name):
                                yield node.value, position

    def table(self, name: str) -> ast.Dict:
        """A module-level dict literal bound to ``name``."""
        for value, position in self.assignments(name, self.tree):
            if isinstance(value, ast.Dict) and position is None:
                return value
        raise Unresolved(f"{name} is not a module-level dict literal")

    def resolve(self, expr: ast.expr, scope: ast.AST, position: int | None = None) -> set[str]:
        """The string codes ``expr`` (or its item at ``position``) can be."""
        if position is not None:
            if isinstance(expr, ast.Tuple):
                return self.resolve(expr.elts[position], scope)
            if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Name):
                return self._resolve_table(expr.value.id, scope, position)
            if isinstance(expr, ast.Name):
                return self._resolve_name(expr.id, scope, position)
            raise Unresolved(ast.unparse(expr))
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        if isinstance(expr, ast.Attribute):
            if _is_name(expr.value, "ErrorCode"):
                return {ErrorCode[expr.attr].value}
            if expr.attr == "code":
                return set()  # passes on the code of an error made elsewhere
        if isinstance(expr, ast.IfExp):
            return self.resolve(expr.body, scope) | self.resolve(expr.orelse, scope)
        if isinstance(expr, ast.Name):
            return self._resolve_name(expr.id, scope, None)
        if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Name):
            return self._resolve_table(expr.value.id, scope, None)
        raise Unresolved(ast.unparse(expr))

    def _resolve_table(self, name: str, scope: ast.AST, position: int | None) -> set[str]:
        """Whatever entry of a module-level table the subscript picks."""
        codes: set[str] = set()
        for value in self.table(name).values:
            codes |= self.resolve(value, scope, position)
        return codes

    def _resolve_name(self, name: str, scope: ast.AST, position: int | None) -> set[str]:
        for where in dict.fromkeys((scope, self.tree)):  # the function's, then the module's
            bound = list(self.assignments(name, where))
            if bound:
                codes: set[str] = set()
                for value, at in bound:
                    if value is None:
                        continue
                    if at is not None and position is not None:
                        raise Unresolved(f"{name}: a tuple inside a tuple")
                    codes |= self.resolve(value, scope, at if at is not None else position)
                return codes
        raise Unresolved(f"{name} is bound nowhere the scan looks")


def _next_use(assign: ast.Assign, scope: ast.AST) -> ast.Name | None:
    """The first read of the name ``assign`` binds, after it."""
    target = assign.targets[0]
    if not isinstance(target, ast.Name):
        return None
    uses = [
        node
        for node in ast.walk(scope)
        if isinstance(node, ast.Name)
        and isinstance(node.ctx, ast.Load)
        and node.id == target.id
        and node.lineno > (assign.end_lineno or assign.lineno)
    ]
    return min(uses, key=lambda node: (node.lineno, node.col_offset), default=None)


def _is_name(node: ast.AST | None, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _is_error_code(annotation: ast.expr | None) -> bool:
    return annotation is not None and ast.unparse(annotation) == "ErrorCode"


def _error_classes(trees: list[ast.Module]) -> dict[str, str | None]:
    """LequanError and every class that derives from it, by name, each with the code
    its constructor fixes (``super().__init__("setup_error", message)``), if any."""
    classes: dict[str, str | None] = {kind.__name__: None for kind in STATUSES_BY_KIND}
    while True:
        found = {
            node.name: _fixed_code(node)
            for tree in trees
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)
            and any(isinstance(b, ast.Name) and b.id in classes for b in node.bases)
        }
        if found.keys() <= classes.keys():
            return classes
        classes |= found


def _fixed_code(cls: ast.ClassDef) -> str | None:
    for node in ast.walk(cls):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "__init__"
            and ast.unparse(node.func.value) == "super()"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            return node.args[0].value
    return None


def _code_dict(node: ast.AST) -> ast.expr | None:
    """The value of the ``"code"`` key of a dict literal."""
    if not isinstance(node, ast.Dict):
        return None
    for key, value in zip(node.keys, node.values, strict=True):
        if isinstance(key, ast.Constant) and key.value == "code":
            return value
    return None


def _status_beside(module: _Module, node: ast.AST) -> int | None:
    """An HTTP status literal next to a body: ``f(request, 422, {...})``, ``422, {...}``."""
    parent = module.parents.get(node)
    if isinstance(parent, ast.Call):
        siblings = parent.args
    elif isinstance(parent, ast.Tuple):
        siblings = parent.elts
    else:
        return None
    for sibling in siblings:
        if (
            isinstance(sibling, ast.Constant)
            and type(sibling.value) is int
            and 100 <= sibling.value <= 599
        ):
            return sibling.value
    return None


def scan(sources: dict[str, str]) -> tuple[list[Site], list[str]]:
    """Every place that answers a code, and the places the scan could not follow."""
    modules = {name: _Module(ast.parse(text)) for name, text in sources.items()}
    classes = _error_classes([m.tree for m in modules.values()])
    sites: list[Site] = []
    unresolved: list[str] = []
    for name, module in modules.items():
        for node in ast.walk(module.tree):
            where = f"{name}:{getattr(node, 'lineno', 0)}"
            scope = module.scope(node)
            try:
                if isinstance(node, ast.Call) and (callee := _callee(node)) in classes:
                    fixed = classes[callee]
                    codes = {fixed} if fixed else _raised_codes(module, node, scope)
                    sites.append(Site(where, frozenset(codes)))
                elif (value := _code_dict(node)) is not None:
                    codes = module.resolve(value, scope)
                    # A body bound to a name first: its status is beside the name.
                    holder: ast.AST = node
                    parent = module.parents.get(node)
                    if isinstance(parent, ast.Assign) and len(parent.targets) == 1:
                        holder = _next_use(parent, scope) or node
                    status = _status_beside(module, holder)
                    sites.append(Site(where, frozenset(codes), status))
                elif (
                    isinstance(node, ast.Attribute)
                    and _is_name(node.value, "ErrorCode")
                    and name != str(REGISTRY.relative_to(SRC))
                ):
                    sites.append(Site(where, frozenset({ErrorCode[node.attr].value})))
            except Unresolved as error:
                unresolved.append(f"{where}: {error}")
    return sites, unresolved


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _raised_codes(module: _Module, call: ast.Call, scope: ast.AST) -> set[str]:
    if call.args:
        first = call.args[0]
        if isinstance(first, ast.Starred):
            return module.resolve(first.value, scope, 0)
        return module.resolve(first, scope)
    for keyword in call.keywords:
        if keyword.arg == "code":
            return module.resolve(keyword.value, scope)
    raise Unresolved(f"{ast.unparse(call)} names no code")


def _sources() -> dict[str, str]:
    return {
        str(path.relative_to(SRC)): path.read_text(encoding="utf-8")
        for path in sorted(SRC.rglob("*.py"))
    }


@pytest.fixture(scope="module")
def sites() -> list[Site]:
    found, unresolved = scan(_sources())
    assert unresolved == [], "make these codes literals or values typed ErrorCode"
    return found


# The registry itself.


def test_every_member_has_one_entry() -> None:
    assert list(ERRORS) == list(ErrorCode)


def test_each_kind_answers_with_the_statuses_its_docstring_states() -> None:
    wrong = {
        code: (spec.kind.__name__, spec.status)
        for code, spec in ERRORS.items()
        if spec.kind is not None
        and spec.status is not None
        and spec.status not in STATUSES_BY_KIND[spec.kind]
    }
    assert wrong == {}


def test_only_the_framework_fallback_and_the_cli_have_no_status_of_their_own() -> None:
    assert [code for code, spec in ERRORS.items() if spec.status is None] == [
        ErrorCode.HTTP_ERROR,
        ErrorCode.SETUP_ERROR,
    ]


def test_a_framework_status_names_one_code() -> None:
    statuses = [spec.status for spec in ERRORS.values() if spec.framework]
    assert len(statuses) == len(set(statuses))


def test_http_status_reads_the_registry() -> None:
    for code, spec in ERRORS.items():
        if spec.kind is not None and spec.status is not None:
            assert http_status(spec.kind(code, "m")) == spec.status, code
            assert http_status(spec.kind(str(code), "m")) == spec.status, code


def test_a_code_without_a_status_of_its_own_answers_as_its_kind_did() -> None:
    assert http_status(LequanError(ErrorCode.SETUP_ERROR, "m")) == 400
    assert http_status(Conflict("not_in_the_registry", "m")) == 409


def test_spec_of_takes_a_plain_string() -> None:
    assert spec_of("sold_out") is ERRORS[ErrorCode.SOLD_OUT]
    assert spec_of("no_such_code") is None


def test_the_exception_tree_names_only_registered_codes() -> None:
    """The tree drawn in ``domain/errors.py`` names codes too; a stale one misleads."""
    doc = ast.get_docstring(ast.parse((SRC / "domain" / "errors.py").read_text("utf-8")))
    assert doc is not None
    tree = doc[doc.index("LequanError") :]
    named = set(re.findall(r"\b[a-z]+(?:_[a-z]+)+\b", tree))
    assert len(named) > 20  # the pattern finds the codes: the check is not vacuous
    assert sorted(code for code in named if spec_of(code) is None) == []


# The source against the registry.


def test_every_code_answered_is_registered(sites: list[Site]) -> None:
    unknown = sorted(
        f"{site.where}: {code}" for site in sites for code in site.codes if spec_of(code) is None
    )
    assert unknown == []


def test_every_registered_code_is_answered_somewhere(sites: list[Site]) -> None:
    answered = {code for site in sites for code in site.codes}
    dead = [code for code, spec in ERRORS.items() if code not in answered and not spec.framework]
    assert dead == []


def test_a_code_is_raised_as_its_registered_kind() -> None:
    classes = {
        "LequanError": LequanError,
        "InvalidInput": InvalidInput,
        "NotFound": NotFound,
        "Conflict": Conflict,
        "AuthError": AuthError,
        "IdempotencyError": IdempotencyError,
        "Unavailable": Unavailable,
    }
    wrong: list[str] = []
    for name, text in _sources().items():
        module = _Module(ast.parse(text))
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Call) and (kind := classes.get(_callee(node) or "")):
                for code in _raised_codes(module, node, module.scope(node)):
                    spec = spec_of(code)
                    if spec is not None and spec.kind is not kind:
                        wrong.append(f"{name}:{node.lineno}: {code} raised as {kind.__name__}")
    assert wrong == []


def test_a_status_written_beside_a_code_is_the_registered_one(sites: list[Site]) -> None:
    beside = [site for site in sites if site.status is not None]
    assert len(beside) >= 3  # the HTTP layer's own bodies: the check is not vacuous
    wrong = [
        f"{site.where}: {code} {site.status}"
        for site in beside
        for code in site.codes
        if (spec := spec_of(code)) is not None and spec.status != site.status
    ]
    assert wrong == []


# The scan itself: it must find what it claims to find.


def test_the_scan_follows_literals_names_conditionals_and_tables() -> None:
    source = """
class SoldOut(Conflict):
    pass

_REFUSALS = {1: ("sold_out", "gone"), 2: ("already_claimed", "twice")}

def f(status, outcome, code: ErrorCode):
    Conflict("lock_expired", "m")
    SoldOut(code="voucher_void", message="m")
    which = "redemption_state" if status else "voucher_busy"
    Conflict(which, "m")
    refusal, message = _REFUSALS[outcome]
    Conflict(refusal, message)
    Conflict(*_REFUSALS[1])
    Conflict(code, "m")
    error_response(request, 422, {"code": "invalid_request", "message": "m"})
    body = {"code": ErrorCode.STORE_UNAVAILABLE, "message": "m"}
    return 503, body, []
"""
    sites, unresolved = scan({"m.py": source})
    assert unresolved == []
    assert {code for site in sites for code in site.codes} == {
        "lock_expired",
        "voucher_void",
        "redemption_state",
        "voucher_busy",
        "sold_out",
        "already_claimed",
        "invalid_request",
        "store_unavailable",
    }
    assert {(code, site.status) for site in sites if site.status for code in site.codes} == {
        ("invalid_request", 422),
        ("store_unavailable", 503),
    }


def test_the_scan_refuses_a_code_it_cannot_follow() -> None:
    source = """
def f(code):
    raise NotFound(code, "m")

def g(codes):
    raise Unavailable(codes.pop(), "m")
"""
    _, unresolved = scan({"m.py": source})
    assert len(unresolved) == 2


# The doc against the registry.


def _doc_block() -> str:
    text = DOC.read_text(encoding="utf-8")
    _, begin, rest = text.partition(BEGIN + "\n")
    block, end, _ = rest.partition(END)
    assert begin, f"the error-code markers are missing from {DOC}"
    assert end, f"the error-code markers are missing from {DOC}"
    return block


def test_the_doc_table_is_the_one_the_registry_prints() -> None:
    printed = subprocess.run(
        [sys.executable, str(TABLE_SCRIPT)], capture_output=True, text=True, check=True
    ).stdout
    assert _doc_block() == printed, "run scripts/error-table --write"


def test_the_doc_table_lists_every_code_with_its_status() -> None:
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}|—) \|", _doc_block(), re.MULTILINE)
    assert rows == [
        (str(code), "—" if spec.status is None else str(spec.status))
        for code, spec in ERRORS.items()
    ]


def test_every_other_doc_table_with_a_status_agrees() -> None:
    """Tables elsewhere in the guide (claim refusals…) name codes with a status too."""
    checked = 0
    wrong: list[str] = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or not cells[1].isdigit():
            continue
        for code in re.findall(r"`([a-z_]+)`", cells[0]):
            checked += 1
            spec = spec_of(code)
            if spec is None or spec.status != int(cells[1]):
                wrong.append(line)
    assert checked > len(ERRORS)  # the generated table and at least one more
    assert wrong == []
