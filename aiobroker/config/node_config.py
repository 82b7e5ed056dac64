"""The node's configuration as a value: :class:`NodeConfig`, :func:`load_config` and :func:`parse_listen`.

Part of :mod:`aiobroker.config` (its docstring documents the file and the three layers, and says how the parts
fit); import from there. This module merges the layers (defaults, the file through :mod:`aiobroker.config.file`,
overrides) and hands every value to :func:`~aiobroker.config.fields.validate`, the same check a
:class:`NodeConfig` built in Python goes through.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from .fields import ARGUMENT_LABEL, DEFAULT_LABEL, MIB, OVERRIDE_LABEL, split_http_listen, split_listen, validate
from .file import from_document, read_toml
from .messages import Invalid, did_you_mean
from .objects import ObjectDef
from ..core.broker import DEFAULT_BINDING_FAILURE_CACHE  # the engine owns its defaults
from ..core.paging import DEFAULT_WINDOW
from ..errors import ConfigError

__all__ = [
    "DEFAULT_HTTP_PORT", "DEFAULT_LISTEN_HOST", "DEFAULT_LISTEN_PORT", "NodeConfig", "load_config", "parse_http",
    "parse_listen",
]  # fmt: skip

DEFAULT_LISTEN_HOST: Final = "127.0.0.1"
DEFAULT_LISTEN_PORT: Final = 4022
#: The HTTP monitoring listener's port when ``aiobroker serve`` is told nothing (docs/monitoring.md). A
#: :class:`NodeConfig` built in Python has no HTTP listener unless it asks for one (``http_port``), so that programs
#: and tests running many nodes in one process never fight over a fixed port.
DEFAULT_HTTP_PORT: Final = 4080


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything a node needs to start. Immutable; checked when built (a bad value raises ConfigError)."""

    listen_host: str = DEFAULT_LISTEN_HOST
    listen_port: int = DEFAULT_LISTEN_PORT  #: 0..65535; 0 picks a free port
    data_dir: Path = Path("aiobroker-data")
    #: "sqlite", "memory", "postgresql" (or a plug-in store's name), or a postgresql:// URL (the store's dsn)
    store: str = "sqlite"
    #: the ``[store]`` table's options (the postgresql store's ``dsn``, ``schema``, ...; docs/stores.md)
    store_options: dict[str, Any] | None = None
    durability: str = "normal"  #: "normal" (WAL, survives a process crash) or "full" (fsync per commit)
    log_level: str = "info"  #: "debug", "info", "warning" or "error"
    log_format: str = "text"  #: "text" (a line of words) or "json" (one object a line, with fields)
    #: seconds to wait at start for a data directory another node holds (a restart that overlaps the old process);
    #: /readyz says why meanwhile. 0: fail at once
    store_wait: float = 0.0
    #: wait for the store for as long as it takes, listening meanwhile and sending clients and peers to the owner
    #: (docs/high-availability.md); the node takes over when the owner lets go of the store
    standby: bool = False
    max_message_size: int = 4 * MIB  #: 1 .. max_frame_size - 4096 (room for the envelope)
    max_frame_size: int = 16 * MIB  #: 8 KiB .. 256 MiB
    max_connections: int = 1000  #: >= 1; established connections anyone may take
    #: >= 0; connections beyond max_connections that only administrators (identities with admin) and peer nodes may
    #: take, so that a node full of anonymous connections still lets in its operator and its federation
    reserved_connections: int = 50
    #: >= 1; ordinary (not administrator, not peer) connections from one IP address, and handshakes from it at once
    max_connections_per_address: int = 100
    #: seconds; > 0 closes a connection with nothing sent, received or in flight (a waiting receive, a lease) for
    #: this long, saying why (REFUSED ``idle``); 0 never does
    idle_timeout: float = 600.0
    receive_lease: float = 30.0  #: seconds a received batch stays locked without commit/rollback; > 0
    poison_rollbacks: int = 5  #: >= 1; rollbacks in a row of one conversation group that trip poison handling
    forwarding: bool = False  #: pass on messages for other nodes (in memory only)
    max_hops: int = 16  #: >= 1; a forwarded message that crossed this many nodes is in a loop and dropped
    connect_timeout: float = 5.0  #: seconds for a TCP connection to a peer node; > 0
    handshake_timeout: float = 10.0  #: seconds for a peer's HELLO/WELCOME exchange; > 0
    ack_timeout: float = 5.0  #: seconds to wait for an acknowledgement before reconnecting and resending; > 0
    closed_retention: float = 1800.0  #: seconds an ended conversation with a remote far side is remembered; >= 0
    #: the token this node presents when it links to a peer node whose authorization is on
    link_token: str | None = None
    tls_cert: Path | None = None  #: PEM certificate: with tls_key, the node speaks TLS only (clients and peers)
    tls_key: Path | None = None  #: PEM private key of tls_cert
    tls_ca: Path | None = None  #: PEM CA bundle: require certificates it signed, and check peers' against it
    tls_check_hostname: bool = True  #: a peer's certificate must name the address dialled
    #: the built-in (or plug-in) resolver for dynamic routing: its config table, ``kind`` naming it; None: ask
    #: the Broker Configuration Notice service (when a route names it or it is on this node)
    resolver: dict[str, Any] | None = None
    resolve_timeout: float | None = None  #: give up on a request after this many seconds (None: never, as the seeds)
    max_delayed_per_service: int = 100_000  #: DELAYED messages per service before a send fails
    max_delayed_messages: int = 1_000_000  #: DELAYED messages per node before a send fails
    #: bytes the node may hold for messages (queues, transmission queue, DELAYED) before it refuses sends and
    #: peers' messages; None: a quarter of the machine's (or its cgroup's) memory, at least 64 MiB (memory.py)
    max_memory: int | None = None
    #: waiting messages a queue keeps in memory on a store that pages (SQLite); the rest wait in the store only,
    #: read back as receivers drain the queue (core/paging.py)
    queue_window: int = DEFAULT_WINDOW
    #: the identity that owns services naming no owner and signs bindings naming no identity (docs/security.md)
    node_identity: str | None = None
    authorization: bool = False  #: check each client's rights (off: every client may do everything)
    binding_failure_cache: float = DEFAULT_BINDING_FAILURE_CACHE  #: seconds a failed binding request is remembered
    http_host: str = DEFAULT_LISTEN_HOST  #: where the HTTP monitoring listener listens (docs/monitoring.md)
    #: its port: 0 picks a free one; None: no HTTP listener (the default here; ``aiobroker serve`` listens on
    #: DEFAULT_HTTP_PORT unless told otherwise)
    http_port: int | None = None
    #: with authorization on, /metrics answers without a token (off: it needs an identity, like ``status``)
    http_metrics_open: bool = False
    #: a taken HTTP address turns the listener off with a warning instead of failing the start: what
    #: ``aiobroker serve``'s default asks, so that a second node on one machine still starts; an address someone
    #: gave (``[http] listen``, ``--http``) is never optional
    http_optional: bool = False
    #: ``(kind, definition)`` in file order; the definition is the table as written (the node checks it).
    objects: tuple[ObjectDef, ...] = ()

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        checked = validate(values, {name: f"{ARGUMENT_LABEL}{name}" for name in values})
        for name, value in checked.items():
            if value is not values[name]:  # normalized (an int lease to float, a list of objects to a tuple)
                object.__setattr__(self, name, value)

    @property
    def http_listen(self) -> str | None:
        """``"host:port"`` of the HTTP monitoring listener, None when there is none."""
        if self.http_port is None:
            return None
        host = f"[{self.http_host}]" if ":" in self.http_host else self.http_host
        return f"{host}:{self.http_port}"

    @property
    def listen(self) -> str:
        """``"host:port"``, an IPv6 host in brackets (``"[::1]:4022"``); :func:`parse_listen` reverses it."""
        if ":" in self.listen_host:
            return f"[{self.listen_host}]:{self.listen_port}"
        return f"{self.listen_host}:{self.listen_port}"


def load_config(
    path: Path | None = None, overrides: Mapping[str, Any] | None = None, defaults: Mapping[str, Any] | None = None
) -> NodeConfig:
    """Build the node's configuration: built-in defaults < ``defaults`` < the TOML file at ``path`` < ``overrides``.

    ``defaults`` are a program's own defaults (``aiobroker serve`` turns the HTTP listener on with them), keyed by
    field name like ``overrides``. ``path=None`` reads no file. ``overrides`` are keyed by :class:`NodeConfig` field name; ``None`` values
    are skipped. Raises :class:`ConfigError` naming the file and key for any problem.
    """
    values: dict[str, Any] = {f.name: f.default for f in fields(NodeConfig)}
    where: dict[str, str] = {name: DEFAULT_LABEL for name in values}
    if defaults is not None:
        values.update(defaults)
    if path is not None:
        path = Path(path)
        text, document = read_toml(path)
        file_values, file_where = from_document(document, text, path)
        values.update(file_values)
        where.update(file_where)
    if overrides is not None:
        override_values, override_where = _from_overrides(overrides)
        values.update(override_values)
        where.update(override_where)
    # Check with the labels that say where each value came from, then build (which checks again, cheaply).
    return NodeConfig(**validate(values, where))


def parse_listen(text: str, *, default_host: str = DEFAULT_LISTEN_HOST) -> tuple[str, int]:
    """Split a listen address into ``(host, port)``.

    Accepted: ``"host:port"``, ``"[IPv6 address]:port"`` (``"[::1]:4022"``) and ``":port"``, which gives
    ``default_host``. The port is 0..65535 (0 picks a free port). Anything else raises :class:`ConfigError`.
    """
    try:
        host, port = split_listen(text)
    except Invalid as exc:
        raise ConfigError(exc.reason) from None
    return (default_host if host is None else host), port


def parse_http(text: str, *, default_host: str = DEFAULT_LISTEN_HOST) -> tuple[str, int | None]:
    """``--http``'s value: an address as :func:`parse_listen` reads it, or ``"off"``: ``(default_host, None)``."""
    try:
        host, port = split_http_listen(text)
    except Invalid as exc:
        raise ConfigError(f'{exc.reason}, or "off" for no HTTP listener') from None
    return (default_host if host is None else host), port


def _from_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    names = tuple(f.name for f in fields(NodeConfig))
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        label = f"{OVERRIDE_LABEL} {key}"
        if key not in names:
            if key == "listen":
                hint = "; split it with parse_listen() into listen_host and listen_port"
            else:
                hint = did_you_mean(str(key), names)
            raise ConfigError(f"unknown override {key!r}{hint} (fields: {', '.join(names)})")
        if key == "data_dir" and isinstance(value, str | os.PathLike) and not isinstance(value, Path):
            value = os.fspath(value)
            if value == "":
                raise ConfigError(f"{label}: must be a directory path; got an empty string")
            if isinstance(value, str):
                value = Path(value)  # a bytes path stays as it is, and validate reports it
        values[key], where[key] = value, label
    return values, where
