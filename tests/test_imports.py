"""The one-way imports docs/design.md promises, read from the source with ``ast`` (nothing is imported).

Each rule is one test: the files it covers, the modules they must not import, and the exceptions it allows, each
with its reason. Every form of import counts: absolute or relative, inside a function, under ``TYPE_CHECKING``.
A failure names the file, the line and the edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import aiobroker

PACKAGE = Path(aiobroker.__file__).parent
ROOT = PACKAGE.parent


def _matches(module: str, pattern: str) -> bool:
    """``aiobroker.store`` matches itself and what is inside it; ``aiobroker.config*`` every name it begins."""
    if pattern.endswith("*"):
        return module.startswith(pattern[:-1])
    return module == pattern or module.startswith(pattern + ".")


def imports(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str, str | None]]:
    """``(line, module, name)`` for everything ``path`` imports, relative imports resolved against ``root``:
    ``from ..store.base import Store`` in ``aiobroker/core/x.py`` gives ``(n, "aiobroker.store.base", "Store")``;
    ``import aiobroker.node`` gives ``(n, "aiobroker.node", None)``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]  # a module's package; for an ``__init__.py``, the package itself
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                yield node.lineno, module, None if alias.name == "*" else alias.name


def forbidden_edges(
    files: Iterable[Path], forbidden: Iterable[str], allowed: Iterable[str] = (), root: Path = ROOT
) -> list[str]:
    """One line per import statement of ``files`` that imports something matching ``forbidden`` and not
    ``allowed``, as ``file:line: from module import names``.

    A name is matched with its module (``aiobroker.store.base.Store``), since it may itself be a module:
    ``from .. import store`` imports ``aiobroker.store``.
    """
    forbidden, allowed = list(forbidden), list(allowed)
    found: dict[tuple[str, int, str], list[str]] = {}
    for path in sorted(files):
        for line, module, name in sorted(imports(path, root), key=lambda edge: edge[0]):
            full = module if name is None else f"{module}.{name}"
            if any(_matches(full, f) for f in forbidden) and not any(_matches(full, a) for a in allowed):
                found.setdefault((path.relative_to(root).as_posix(), line, module), []).append(name or "")
    return [
        f"{file}:{line}: " + (f"from {module} import {', '.join(names)}" if any(names) else f"import {module}")
        for (file, line, module), names in found.items()
    ]


def module_name(path: Path, root: Path = ROOT) -> str:
    """``aiobroker/node/server.py`` is ``aiobroker.node.server``; ``aiobroker/node/__init__.py`` is ``aiobroker.node``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(files: Iterable[Path], root: Path = ROOT) -> dict[str, dict[str, str]]:
    """Which of ``files``' modules each of them imports, with where: ``{module: {imported: "file:line"}}``.

    An import names the module it loads: ``from .sessions import Session`` is an edge to ``aiobroker.node.sessions``,
    ``from . import sessions`` too, ``from .. import errors`` one to ``aiobroker.errors``; a name that is not a
    module counts as its module (``from ..core.broker import BrokerCore`` is an edge to ``aiobroker.core.broker``).
    The packages a dotted name passes through are not edges: ``aiobroker.node.sessions`` runs
    ``aiobroker/node/__init__.py`` first, but that is Python's order of loading, not a dependency the reader sees.
    """
    paths = {module_name(path, root): path for path in files}
    graph: dict[str, dict[str, str]] = {}
    for module, path in sorted(paths.items()):
        edges = graph.setdefault(module, {})
        for line, imported, name in sorted(imports(path, root), key=lambda edge: edge[0]):
            target = f"{imported}.{name}" if name is not None and f"{imported}.{name}" in paths else imported
            while target not in paths and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in paths and target != module:
                edges.setdefault(target, f"{path.relative_to(root).as_posix()}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str]:
    """One import cycle of ``graph``, as its edges ``file:line: a -> b`` in order; empty if there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done (no cycle through it)
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for target in graph.get(module, {}):
            if state.get(target) == 1:
                loop = [*path[path.index(target) :], target]
                return [f"{graph[a][b]}: {a} -> {b}" for a, b in zip(loop, loop[1:], strict=False)]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return []


def test_no_import_cycle_in_aiobroker() -> None:
    """No module of aiobroker imports, through any chain, a module that imports it: each can be read, and tested,
    after what it imports and never before. Imports under ``TYPE_CHECKING`` and inside functions count too: a
    circle that only the type checker follows is still one the reader has to walk.

    The shell's parts see the node through ``node/shell.py``'s protocols instead of importing the server; the
    version is ``aiobroker/version.py``, so the handshake need not import the package that imports the node.
    """
    cycle = find_cycle(import_graph(PACKAGE.rglob("*.py")))
    assert not cycle, "an import cycle among aiobroker's modules:\n" + "\n".join(cycle)


def test_core_imports_no_shell_and_no_store() -> None:
    """The core (``aiobroker/core/``) knows no sockets, frames, files or configuration: the node feeds it.

    What it does import from outside itself is pure: ``aiobroker.errors``, ``aiobroker.durations`` (parsing a
    duration), ``aiobroker.security`` (crypto on bytes), and the one exception below. The records it shares with
    the store are ``aiobroker.core.records``, which ``store/`` imports, not the other way round.
    """
    forbidden = [
        "aiobroker.node",  # the shell: server, sessions, handlers, rights, links, writer, admission, serve
        "aiobroker.transport",
        "aiobroker.store",
        "aiobroker.wire",
        "aiobroker.client",
        "aiobroker.cli",
        "aiobroker.config*",
        "aiobroker.__main__",
        "aiobroker.monitor",  # the HTTP listener reads the core; the core never knows it is watched
    ]
    allowed = [
        # validation 'msgpack' checks a body with the codec's unpackb: pure (bytes in, objects out), and the
        # codec is the one module that imports msgpack. An exception docs/design.md lists.
        "aiobroker.wire.codec.unpackb",
    ]
    edges = forbidden_edges((PACKAGE / "core").rglob("*.py"), forbidden, allowed)
    assert not edges, "the core imports what it must not:\n" + "\n".join(edges)


def test_only_the_server_starts_the_monitor() -> None:
    """The HTTP monitoring listener (``aiobroker/monitor/``) is the server's to start, and nothing else of aiobroker
    imports it: not the core, not the shell's other parts (which it reads through ``monitor/host.py``'s protocol),
    not the client or the CLI, which would otherwise load Starlette and Hypercorn for every command."""
    files = [p for p in PACKAGE.rglob("*.py") if "monitor" not in p.relative_to(PACKAGE).parts]
    edges = forbidden_edges([p for p in files if p != PACKAGE / "node" / "server.py"], ["aiobroker.monitor"])
    assert not edges, "aiobroker.monitor is imported from outside the server:\n" + "\n".join(edges)


def test_records_import_nothing_of_aiobroker() -> None:
    """``core/records.py`` is the one module of the core the store imports: it stays plain data, so that importing
    it brings none of the core's behaviour into the store."""
    edges = forbidden_edges([PACKAGE / "core" / "records.py"], ["aiobroker"], ["aiobroker.errors"])
    assert not edges, "core/records.py imports more than plain data needs:\n" + "\n".join(edges)


def test_resolvers_use_only_the_resolver_interface() -> None:
    """A plug-in (``resolvers/``, and any third party's) needs one import, ``aiobroker.resolver``: the interface,
    the answer types, the errors and the name and address checks. Nothing else of aiobroker, so that the inside
    of the broker can change without breaking plug-ins."""
    edges = forbidden_edges((ROOT / "resolvers").rglob("*.py"), ["aiobroker"], ["aiobroker.resolver"])
    assert not edges, "resolvers import more of aiobroker than its plug-in interface:\n" + "\n".join(edges)


def test_aiobroker_does_not_import_resolvers() -> None:
    """The broker finds resolvers through the entry point group ``aiobroker.resolvers`` only, as it finds a third
    party's: it never imports the built-in ones by name."""
    edges = forbidden_edges(PACKAGE.rglob("*.py"), ["resolvers"])
    assert not edges, "aiobroker imports the resolvers package:\n" + "\n".join(edges)


def test_the_cycle_finder_follows_every_kind_of_edge(tmp_path: Path) -> None:
    """A cycle closed by an import under ``TYPE_CHECKING``, by ``from . import module`` or inside a function is
    found and printed edge by edge; a package's ``__init__`` importing its own module is no cycle by itself."""
    node = tmp_path / "aiobroker" / "node"
    node.mkdir(parents=True)
    (node / "__init__.py").write_text("from .server import Node\n")
    (node / "server.py").write_text("from . import handlers\nclass Node: ...\n")
    (node / "handlers.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .server import Node\n")
    graph = import_graph(node.glob("*.py"), tmp_path)
    assert graph["aiobroker.node"] == {"aiobroker.node.server": "aiobroker/node/__init__.py:1"}
    assert find_cycle(graph) == [
        "aiobroker/node/server.py:1: aiobroker.node.server -> aiobroker.node.handlers",
        "aiobroker/node/handlers.py:3: aiobroker.node.handlers -> aiobroker.node.server",
    ]
    (node / "handlers.py").write_text("def later():\n    from aiobroker.node import server\n")
    assert find_cycle(import_graph(node.glob("*.py"), tmp_path)) == [
        "aiobroker/node/server.py:1: aiobroker.node.server -> aiobroker.node.handlers",
        "aiobroker/node/handlers.py:2: aiobroker.node.handlers -> aiobroker.node.server",
    ]
    (node / "handlers.py").write_text("from .shell import Shell\n")
    (node / "shell.py").write_text("from typing import Protocol\n")
    assert find_cycle(import_graph(node.glob("*.py"), tmp_path)) == []


def test_the_reader_sees_every_form_of_import(tmp_path: Path) -> None:
    """The rules are only as good as the reader: relative imports at any depth, ``from .. import module``,
    imports inside functions and under ``TYPE_CHECKING`` all count; an allowed name is let through exactly."""
    core = tmp_path / "aiobroker" / "core"
    core.mkdir(parents=True)
    (core / "__init__.py").write_text("from . import records\nfrom .. import store\n")
    (core / "engine.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import aiobroker.node\n"
        "from ..store.base import Store\n"
        "from ..wire.codec import unpackb, packb\n"
        "from .records import ROW_ID\n"
        "if TYPE_CHECKING:\n"
        "    from ..config_fields import FIELDS\n"
        "def later():\n"
        "    from aiobroker.transport import connection\n"
    )
    assert sorted(imports(core / "engine.py", tmp_path), key=lambda edge: (edge[0], edge[2] or "")) == [
        (1, "typing", "TYPE_CHECKING"),
        (2, "aiobroker.node", None),
        (3, "aiobroker.store.base", "Store"),
        (4, "aiobroker.wire.codec", "packb"),
        (4, "aiobroker.wire.codec", "unpackb"),
        (5, "aiobroker.core.records", "ROW_ID"),
        (7, "aiobroker.config_fields", "FIELDS"),
        (9, "aiobroker.transport", "connection"),
    ]
    assert sorted(imports(core / "__init__.py", tmp_path)) == [
        (1, "aiobroker.core", "records"),
        (2, "aiobroker", "store"),
    ]
    edges = forbidden_edges(
        core.glob("*.py"),
        ["aiobroker.store", "aiobroker.wire", "aiobroker.config*", "aiobroker.node", "aiobroker.transport"],
        ["aiobroker.wire.codec.unpackb"],
        root=tmp_path,
    )
    assert edges == [
        "aiobroker/core/__init__.py:2: from aiobroker import store",
        "aiobroker/core/engine.py:2: import aiobroker.node",
        "aiobroker/core/engine.py:3: from aiobroker.store.base import Store",
        "aiobroker/core/engine.py:4: from aiobroker.wire.codec import packb",
        "aiobroker/core/engine.py:7: from aiobroker.config_fields import FIELDS",
        "aiobroker/core/engine.py:9: from aiobroker.transport import connection",
    ]
