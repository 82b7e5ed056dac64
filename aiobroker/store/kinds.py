"""The stores aiobroker ships, as plug-ins: each a factory registered in the entry point group ``aiobroker.stores``.

A store plug-in is a callable ``create(settings: StoreSettings) -> Store`` registered under its name (the name
``--store`` and ``[node] store`` accept); a third party's package registers its own the same way
(docs/stores.md). The factories here check their options and say what is wrong; the PostgreSQL one imports its
driver only when asked for, so that the core installs without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import Store
from .memory import MemoryStore
from .sqlite import SqliteStore, check_durability


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """What a store factory is given: the node's data directory and durability (the sqlite store's), and the
    ``[store]`` table's other keys (``options``)."""

    data_dir: Path
    durability: str = "normal"
    options: Mapping[str, Any] = field(default_factory=dict)


def _no_options(kind: str, options: Mapping[str, Any]) -> None:
    if options:
        raise ConfigError(f"[store] the {kind} store takes no options; remove {', '.join(sorted(options))}")


def sqlite(settings: StoreSettings) -> Store:
    _no_options("sqlite", settings.options)
    return SqliteStore(settings.data_dir, settings.durability)


def memory(settings: StoreSettings) -> Store:
    _no_options("memory", settings.options)
    check_durability(settings.durability)  # a typo there would otherwise pass unnoticed until the store is switched
    return MemoryStore()


#: the PostgreSQL store's options, each with what it must be
POSTGRESQL_OPTIONS = {
    "dsn": "a libpq connection string or postgresql:// URL",
    "schema": "the PostgreSQL schema holding the node's tables (default aiobroker)",
    "heartbeat": "seconds between the owner's heartbeats (default 1)",
    "takeover_after": "seconds without a heartbeat after which a standby takes over (default 10)",
    "reconnect_for": "seconds to try reaching the database again after a connection broke (default 30)",
}


def postgresql(settings: StoreSettings) -> Store:
    options = dict(settings.options)
    unknown = sorted(set(options) - set(POSTGRESQL_OPTIONS))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in POSTGRESQL_OPTIONS.items())
        raise ConfigError(f"[store] unknown option(s) {', '.join(unknown)} for the postgresql store (known: {known})")
    dsn = options.pop("dsn", None)
    if not isinstance(dsn, str) or not dsn:
        raise ConfigError(
            "[store] the postgresql store needs a dsn: --store postgresql://USER@HOST/DBNAME, or dsn = \"...\" in"
            " the [store] table"
        )
    for key in ("heartbeat", "takeover_after", "reconnect_for"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
            raise ConfigError(f"[store] {key} must be a number of seconds > 0, not {value!r}")
    try:
        from .postgresql import PostgresStore
    except ImportError as exc:
        raise ConfigError(
            f"the postgresql store needs the PostgreSQL driver psycopg ({exc}); install it with"
            " pip install 'aiobroker[postgresql]'"
        ) from exc
    return PostgresStore(dsn, **options)
