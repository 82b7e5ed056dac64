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
    ]
    allowed = [
        # validation 'msgpack' checks a body with the codec's unpackb: pure (bytes in, objects out), and the
        # codec is the one module that imports msgpack. An exception docs/design.md lists.
        "aiobroker.wire.codec.unpackb",
    ]
    edges = forbidden_edges((PACKAGE / "core").rglob("*.py"), forbidden, allowed)
    assert not edges, "the core imports what it must not:\n" + "\n".join(edges)


def test_only_the_server_starts_the_monitor() -> None:
    """The HTTP monitoring listener (``aiobroker/node/monitor/``, a part of the shell) is the server's to start, and
    nothing else of aiobroker imports it: not the core (which the floors keep below the shell anyway), not the
    shell's other parts (which it reads through ``monitor/host.py``'s protocol), not the client or the CLI, which
    would otherwise load Starlette and Hypercorn for every command."""
    files = [p for p in PACKAGE.rglob("*.py") if "monitor" not in p.relative_to(PACKAGE).parts]
    edges = forbidden_edges([p for p in files if p != PACKAGE / "node" / "server.py"], ["aiobroker.node.monitor"])
    assert not edges, "aiobroker.node.monitor is imported from outside the server:\n" + "\n".join(edges)


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


#: docs/design.md's floors: a module imports only from floors below its own, or from its own package
FLOORS = {
    "aiobroker.errors": 0,
    "aiobroker.durations": 0,
    "aiobroker.names": 0,
    "aiobroker.version": 0,
    "aiobroker.tracecontext": 0,  # the W3C trace context's format, checked (pure)
    "aiobroker.security": 1,
    "aiobroker.wire": 1,
    "aiobroker.resolver": 2,
    "aiobroker.transport": 2,
    "aiobroker.tracing": 2,  # spans through the optional OpenTelemetry, for the node and the client
    "aiobroker.core": 3,
    "aiobroker.store": 4,
    "aiobroker.config": 5,
    "aiobroker.node": 6,
    "aiobroker.client": 6,
    "aiobroker.cli": 7,
    "aiobroker": 7,  # the package's __init__: the names users import
    "aiobroker.__main__": 8,  # python -m aiobroker: runs the command line
}
#: edges the floors alone would refuse, each with its reason
SAME_FLOOR_ALLOWED = {
    ("aiobroker.names", "aiobroker.errors"),  # a bad name raises the library's InvalidArgument
    ("aiobroker.tracecontext", "aiobroker.errors"),  # so does a malformed traceparent
}


def floor_package(module: str) -> str:
    """The entry of :data:`FLOORS` a module belongs to: ``aiobroker.core.delivery`` is ``aiobroker.core``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def floor_violations(graph: dict[str, dict[str, str]]) -> list[str]:
    out = []
    for module, edges in sorted(graph.items()):
        here = floor_package(module)
        for target, where in edges.items():
            there = floor_package(target)
            if here == there or (here, there) in SAME_FLOOR_ALLOWED:
                continue
            if FLOORS[there] >= FLOORS[here]:
                out.append(f"{where}: {module} (floor {FLOORS[here]}) -> {target} (floor {FLOORS[there]})")
    return out


def test_every_module_imports_only_from_the_floors_below_its_own() -> None:
    """The layering docs/design.md draws, as a rule: errors and names at the bottom, then the pure pieces (crypto on
    bytes, the wire), the plug-in interface and the transport, the core, the store, the configuration, the shell
    and the client, and the command line on top. An import sideways (the node and the client) or upwards fails."""
    graph = import_graph(PACKAGE.rglob("*.py"))
    unplaced = sorted({floor_package(m) for m in graph} - set(FLOORS))
    assert not unplaced, f"packages with no floor in FLOORS (add them, and to docs/design.md): {unplaced}"
    violations = floor_violations(graph)
    assert not violations, "imports against the floors (docs/design.md, Floors):\n" + "\n".join(violations)


def test_the_floor_rule_catches_an_upward_and_a_sideways_edge() -> None:
    graph = {
        "aiobroker.core.delivery": {"aiobroker.node.server": "aiobroker/core/delivery.py:3"},
        "aiobroker.client.client": {"aiobroker.node.server": "aiobroker/client/client.py:9"},
        "aiobroker.node.server": {"aiobroker.core.broker": "aiobroker/node/server.py:1"},
    }
    assert floor_violations(graph) == [
        "aiobroker/client/client.py:9: aiobroker.client.client (floor 6) -> aiobroker.node.server (floor 6)",
        "aiobroker/core/delivery.py:3: aiobroker.core.delivery (floor 3) -> aiobroker.node.server (floor 6)",
    ]


#: the core's parts (core/parts.py): they reach each other through the protocols there, never by import
CORE_PARTS = [
    "delivery", "endings", "receiving", "outbound", "inbound", "dynamic", "dialog_security", "objects", "status", "loading"
]


def test_no_part_of_the_core_imports_another() -> None:
    """Each part of the core calls a sibling through an attribute typed by ``core/parts.py``'s protocols, so a
    reader of ``self.outbound.route(...)`` knows the file that answers and the parts form no web of imports; only
    ``broker.py``, the facade that wires them, imports them all."""
    parts = [f"aiobroker.core.{name}" for name in CORE_PARTS]
    files = [PACKAGE / "core" / f"{name}.py" for name in CORE_PARTS]
    edges = forbidden_edges(files, parts)
    assert not edges, "a part of the core imports another (use core/parts.py's protocols):\n" + "\n".join(edges)


def test_no_module_or_class_too_large_to_hold() -> None:
    """Kept so that one person can hold each (docs/design.md, Module sizes): no module of aiobroker or of the
    built-in resolvers over ~500 lines (520: a long header of documentation is no reason to split), no class over
    400."""
    too_large = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "resolvers").rglob("*.py")]):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT).as_posix()
        if (lines := text.count("\n")) > 520:
            too_large.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                if (size := node.end_lineno - node.lineno + 1) > 400:
                    too_large.append(f"{name}: class {node.name} is {size} lines")
    assert not too_large, "split these (docs/design.md, Module sizes):\n" + "\n".join(too_large)


def test_only_the_tracing_module_imports_opentelemetry_and_only_when_a_span_is_made() -> None:
    """OpenTelemetry is the optional ``otel`` extra: ``aiobroker/tracing.py`` is the one module that imports it, and
    only inside its functions, so that aiobroker imports and runs without it (and pays no import time for it)."""
    others = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "tracing.py"]
    edges = forbidden_edges(others, ["opentelemetry"])
    assert not edges, "only aiobroker/tracing.py may import opentelemetry:\n" + "\n".join(edges)
    tree = ast.parse((PACKAGE / "tracing.py").read_text(encoding="utf-8"))
    in_functions = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for inner in ast.walk(node)
    }
    at_import_time = [
        f"aiobroker/tracing.py:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and id(node) not in in_functions
        and any(
            (node.module if isinstance(node, ast.ImportFrom) else alias.name or "").startswith("opentelemetry")
            for alias in node.names
        )
    ]
    assert not at_import_time, "aiobroker/tracing.py imports opentelemetry at module import time: " + ", ".join(
        at_import_time
    )
