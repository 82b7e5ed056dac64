"""Where a node keeps its durable state: the :class:`Store` interface and the stores, found as plug-ins.

``sqlite`` is the default durable store (one database file in the node's data directory); ``memory`` keeps
nothing and is the fast path for tests and benchmarks; ``postgresql`` keeps the state in a PostgreSQL database,
so that it outlives the node's machine and a standby can take over. Each is registered in the entry point group
``aiobroker.stores`` (``kinds.py``), as a third party's store would be; :func:`open_store` finds one by the name
(or the URL) used in configuration.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from ..errors import ConfigError
from . import kinds
from .base import Store
from .kinds import StoreSettings
from .memory import MemoryStore
from .sqlite import SqliteStore

__all__ = ["STORE_KINDS", "MemoryStore", "SqliteStore", "Store", "StoreSettings", "open_store", "store_kind", "store_kinds"]

ENTRY_POINT_GROUP: Final = "aiobroker.stores"
#: The stores aiobroker ships (also registered as entry points; found here even in a tree that is not installed).
STORE_KINDS: Final = ("sqlite", "memory", "postgresql")
_BUILT_IN: Final[dict[str, Callable[[StoreSettings], Store]]] = {
    "sqlite": kinds.sqlite,
    "memory": kinds.memory,
    "postgresql": kinds.postgresql,
}
#: URL schemes ``--store`` accepts in place of a name: the URL is then the store's ``dsn``
URL_SCHEMES: Final = {"postgresql": "postgresql", "postgres": "postgresql"}


def store_kind(store: str) -> tuple[str, dict[str, Any]]:
    """``(kind, options)`` for what ``--store`` or ``[node] store`` says: a name, or a URL naming the kind by its
    scheme and carrying the store's ``dsn`` (``postgresql://user@host/db``)."""
    if "://" not in store:
        return store, {}
    scheme = store.split("://", 1)[0].lower()
    if scheme not in URL_SCHEMES:
        known = ", ".join(f"{s}://..." for s in URL_SCHEMES)
        raise ConfigError(f"store {_redact(store)!r}: no store is reached by {scheme}:// URLs (known: {known})")
    return URL_SCHEMES[scheme], {"dsn": store}


def open_store(
    kind: str, data_dir: Path, durability: str = "normal", options: Mapping[str, Any] | None = None
) -> Store:
    """Construct the store named ``kind`` (or reached by the URL ``kind``) with the ``[store]`` table's
    ``options``; the caller calls ``.open()`` (which is where files and connections are made)."""
    name, from_url = store_kind(kind)
    factory = _factories().get(name)
    if factory is None:
        known = ", ".join(repr(k) for k in store_kinds())
        raise ConfigError(f"store must be one of {known} (or a postgresql:// URL), not {kind!r}")
    try:
        store = factory(StoreSettings(Path(data_dir), durability, {**from_url, **(options or {})}))
    except ValueError as exc:  # a built-in's own check (durability) says what is wrong
        raise ConfigError(str(exc)) from exc
    if not isinstance(store, Store):
        raise ConfigError(f"store {name!r}: its factory returned {type(store).__name__}, not a Store")
    return store


def _shipped_first(kind: str) -> tuple[int, str]:
    return (STORE_KINDS.index(kind) if kind in STORE_KINDS else len(STORE_KINDS), kind)


def store_kinds() -> list[str]:
    """Every store name :func:`open_store` accepts: the shipped ones first, then plug-ins'."""
    return sorted(_factories(), key=_shipped_first)


@functools.cache  # entry points are read once a process: they change only when packages are installed
def _factories() -> dict[str, Callable[[StoreSettings], Store]]:
    from importlib.metadata import entry_points

    found: dict[str, Callable[[StoreSettings], Store]] = dict(_BUILT_IN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found:
            found[ep.name] = _lazy(ep)
    return found


def _lazy(ep: Any) -> Callable[[StoreSettings], Store]:
    def create(settings: StoreSettings) -> Store:
        try:
            factory = ep.load()
        except Exception as exc:  # a plug-in that does not load is a configuration problem, said in words
            raise ConfigError(f"store {ep.name!r} ({ep.value}) cannot be loaded: {type(exc).__name__}: {exc}") from exc
        store: Store = factory(settings)
        return store

    return create


def _redact(url: str) -> str:
    """``url`` without a password (``user:secret@`` becomes ``user:***@``)."""
    head, sep, rest = url.partition("://")
    auth, at, tail = rest.rpartition("@")
    if at and ":" in auth:
        auth = auth.split(":", 1)[0] + ":***"
    return f"{head}{sep}{auth}{at}{tail}" if at else url
