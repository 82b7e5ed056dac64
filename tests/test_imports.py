"""Which module may import which: the one-way edges of docs/design.md, read from the source with ``ast``.

Every import statement counts, wherever it stands (top level, inside a function, under ``TYPE_CHECKING``): an
edge the type checker follows is an edge a reader follows. A rule names the modules it governs, the modules they
must not import, and the exceptions; each rule has its own test, so a failure names the rule it breaks.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("aiobroker", "resolvers")


@dataclass(frozen=True)
class Rule:
    importers: str  #: a package: the rule governs every module in it
    forbidden: str  #: a package or module its modules must not import (nor anything inside it)
    allowed: tuple[str, ...] = ()  #: modules inside ``forbidden`` that may be imported all the same
    why: str = ""

    def breaks(self, importer: str, imported: str) -> bool:
        return (
            within(importer, self.importers)
            and within(imported, self.forbidden)
            and not any(imported == a for a in self.allowed)
        )


RULES = {
    "resolvers use only the resolver interface": Rule(
        importers="resolvers",
        forbidden="aiobroker",
        allowed=("aiobroker.resolver",),
        why="a built-in resolver is a plug-in like any other: everything it needs is in aiobroker.resolver",
    ),
    "aiobroker does not import resolvers": Rule(
        importers="aiobroker",
        forbidden="resolvers",
        why="the node finds resolvers through the entry point group aiobroker.resolvers, never by import",
    ),
}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_by(path: Path) -> set[str]:
    """Every module the file imports; ``from package import module`` counts as importing the module, not the
    package (whose ``__init__`` runs all the same, but whose names it does not use)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            modules = {f"{source}.{a.name}" for a in node.names if is_module(f"{source}.{a.name}")}
            found.update(modules)
            if len(modules) < len(node.names):  # names defined in ``source`` itself
                found.add(source)
    return found


@cache
def edges() -> tuple[tuple[str, str], ...]:
    """(importer, imported) for every import in the packages."""
    return tuple(
        (module_name(path), imported)
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for imported in sorted(imported_by(path))
    )


def broken(rule: Rule) -> list[str]:
    return [f"{a} imports {b}" for a, b in edges() if rule.breaks(a, b)]


def check(title: str) -> None:
    rule = RULES[title]
    bad = broken(rule)
    assert not bad, f"{title} ({rule.why}):\n  " + "\n  ".join(bad)


def test_the_reader_sees_the_imports_it_judges() -> None:
    """The rules below pass only if the reader finds edges at all: it sees absolute, relative and
    ``TYPE_CHECKING`` imports, and ``from package import module``."""
    found = set(edges())
    assert ("resolvers.http", "aiobroker.resolver") in found
    assert ("aiobroker.node", "aiobroker.resolver") in found
    assert ("aiobroker.core.routing", "aiobroker.errors") in found  # from ..errors import InvalidArgument
    assert ("aiobroker.core.dynamic", "aiobroker.resolver") in found  # under TYPE_CHECKING
    assert ("aiobroker.client", "aiobroker.transport.tls") in found  # from .transport import tls
    assert ("aiobroker.cli.parser", "aiobroker") in found  # from .. import __version__
    assert ("aiobroker.client", "aiobroker.transport") not in found  # only its module tls is used


def test_resolvers_use_only_the_resolver_interface() -> None:
    check("resolvers use only the resolver interface")


def test_aiobroker_does_not_import_resolvers() -> None:
    check("aiobroker does not import resolvers")
