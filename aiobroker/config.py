"""Node configuration: built-in defaults, a TOML file, and command-line overrides.

:func:`load_config` builds one :class:`NodeConfig` from three layers, each later one winning:

1. the built-in defaults (the field defaults of :class:`NodeConfig`);
2. a TOML file, when a path is given;
3. overrides (from command-line flags), keyed by :class:`NodeConfig` field name; ``None`` means "not given".

Every problem raises :class:`~aiobroker.errors.ConfigError`, whose message says which file, which key
(``[node] listen``, ``service #2``), what was wrong and what is allowed. Nothing is returned half-built. A
:class:`NodeConfig` built directly in Python (embedding, tests, :func:`dataclasses.replace`) goes through the
same checks.

The file
--------

Every section and key is optional; a key left out keeps its default. An unknown section or key is an error
(with a "did you mean" hint), so a typo never falls back silently to a default. A complete example:

.. code-block:: toml

    [node]
    listen = "127.0.0.1:4022"     # host:port; "[::1]:4022" for IPv6; a bare ":4022" keeps the default host
    data_dir = "aiobroker-data"   # relative to this file's directory
    store = "sqlite"              # "sqlite" or "memory"
    durability = "normal"         # "normal" (WAL, survives a process crash) or "full" (fsync per commit)
    log_level = "info"            # "debug", "info", "warning" or "error"

    [limits]
    max_message_size = 4194304    # bytes, 1 .. max_frame_size - 1024
    max_frame_size = 16777216     # bytes, 1024 .. 268435456 (256 MiB)
    max_connections = 1000        # >= 1

    [receive]
    lease_seconds = 30            # a received batch stays locked this long without commit/rollback; > 0
    poison_rollbacks = 5          # rollbacks in a row of one conversation group that trip poison handling

    [federation]
    forwarding = false            # pass on messages meant for other nodes (in memory, with a hop limit)
    max_hops = 16                 # a forwarded message that crossed this many nodes is in a loop: dropped
    connect_timeout = 5           # seconds for a TCP connection to a peer node
    handshake_timeout = 10        # seconds for a peer's HELLO/WELCOME
    ack_timeout = 5               # seconds without an acknowledgement before reconnecting and resending
    closed_retention = 1800       # seconds an ended conversation with a remote side is remembered
    # link_token = "..."          # presented when linking to peers whose authorization is on (docs/security.md)

    [tls]                         # leave out for plain TCP; nodes of one federation all use TLS or none do
    # cert = "node.pem"           # with key: this node speaks TLS only, to clients and peers
    # key = "node.key"
    # ca = "ca.pem"               # require certificates signed by this CA, and check peers' against it
    check_hostname = true         # a peer's certificate must name the address dialled

    [dynamic_routing]             # when no route names a service (see docs/semantics.md)
    # resolve_timeout = 30        # give up on a request after this long (default: never, as in the seeds)
    max_delayed_per_service = 100000
    max_delayed_messages = 1000000

    [security]                    # identities, bindings and authorization: see docs/security.md
    # identity = "node"           # the default owner of local services (an [[identity]] with a private key)
    authorization = false         # true: check every client's rights (a token or TLS certificate names them)
    binding_failure_cache = 600   # seconds a failed binding request is remembered; > 0

    # [resolver]                  # leave out to ask the Broker Configuration Notice service, if there is one
    # kind = "static_file"        # or dns_srv, http, chain: options as in resolvers/<kind>.py
    # path = "services.toml"

    [[message_type]]
    name = "//example/Request"
    validation = "json"

    [[message_type]]
    name = "//example/Reply"
    validation = "json"

    [[contract]]
    name = "//example/Contract"
    messages = { "//example/Request" = "initiator", "//example/Reply" = "target" }

    [[queue]]
    name = "requests"

    [[identity]]                  # who a client is (by token or TLS certificate) and what it may do
    name = "operator"
    tokens = ["change-me-long-random-string"]   # clients give it with connect(token=...) or --token
    admin = true                  # may create, alter and drop objects
    # certificate = "certs/operator.crt"         # a path relative to this file, or the PEM text itself
    # private_key = "certs/operator.key"         # only for an identity that owns services or signs bindings
    # send = ["//example/Server"]                # services it may send to ("*": any)
    # receive = ["requests"]                     # queues it may receive from ("*": any)

    [[service]]
    name = "//example/Server"
    queue = "requests"
    contracts = ["//example/Contract"]
    # owner = "node"              # the identity whose key reads secured conversations (default [security] identity)

    # [[binding]]                 # how to secure conversations to a service on another node
    # name = "to-orders"
    # to_service = "//shop/Orders"
    # certificate = "certs/orders-owner.crt"     # the remote owner's certificate: a path, or PEM text
    # identity = "node"           # the local identity that signs (default [security] identity)
    # anonymous = false

Keys and the :class:`NodeConfig` fields they set:

* ``[node] listen`` sets ``listen_host`` and ``listen_port`` (see :func:`parse_listen`; port 0 picks a free
  port); the other ``[node]`` and ``[limits]`` keys set the field of the same name.
* ``[node] data_dir``: a relative path is taken relative to the config file's directory (not the current
  directory); ``~`` is expanded. The result is absolute.
* ``[receive] lease_seconds`` sets ``receive_lease`` (an integer or a float); ``[receive] poison_rollbacks``
  sets ``poison_rollbacks``.
* ``[security] identity`` sets ``node_identity``; ``authorization`` and ``binding_failure_cache`` set the field
  of the same name.
* ``[[message_type]]``, ``[[contract]]``, ``[[queue]]``, ``[[service]]``, ``[[route]]``, ``[[identity]]`` and
  ``[[binding]]`` are the objects the node creates at start, in file order (also across kinds, so write an
  object after the objects it refers to), except that identities are created first. Each is a table with a
  string ``name``; the rest of the table is passed on as written, and the node checks it when it creates the
  object.
* In ``[[identity]]`` (``certificate``, ``private_key``) and ``[[binding]]`` (``certificate``), a value with a
  ``-----BEGIN`` line is PEM text; any other string is a file path, relative to the config file's directory,
  read when the file is loaded. Identities and bindings are checked as the file is loaded (the certificate
  parses, the key matches it, tokens are long enough), so a mistake names the file and the identity at once.
  In a :class:`NodeConfig` built in Python, a :class:`~pathlib.Path` value is read the same way (relative to
  the current directory).

Overrides
---------

``overrides`` maps :class:`NodeConfig` field names to values of the field's type; a ``None`` value is
skipped, so ``vars(args)``-style mappings with unset flags can be passed as they are. ``data_dir`` may also
be a ``str``; a relative override path stays relative to the current directory. There is no ``listen``
override: split a ``--listen`` value with :func:`parse_listen` into ``listen_host`` and ``listen_port``.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final

from .errors import ConfigError, SecurityError
from .security.certs import read_pem_file

__all__ = [
    "DEFAULT_LISTEN_HOST",
    "DEFAULT_LISTEN_PORT",
    "OBJECT_KINDS",
    "NodeConfig",
    "load_config",
    "parse_listen",
]

MIB: Final = 1024 * 1024

DEFAULT_LISTEN_HOST: Final = "127.0.0.1"
DEFAULT_LISTEN_PORT: Final = 4022

STORES: Final = ("sqlite", "memory")
DURABILITIES: Final = ("normal", "full")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
#: The object kinds a config file may declare, as ``[[kind]]`` arrays of tables.
OBJECT_KINDS: Final = ("message_type", "contract", "queue", "service", "route", "identity", "binding")
#: Fields of ``[[identity]]`` and ``[[binding]]`` that hold PEM text, given as the text or a file path.
PEM_FIELDS: Final = {"identity": ("certificate", "private_key"), "binding": ("certificate",)}
DEFAULT_BINDING_FAILURE_CACHE: Final = 600.0

MIN_FRAME_SIZE: Final = 1024
MAX_FRAME_SIZE: Final = 256 * MIB
#: Room in a frame for the envelope around one message body:
#: max_message_size <= max_frame_size - FRAME_OVERHEAD.
FRAME_OVERHEAD: Final = 1024

ObjectDef = tuple[str, dict[str, Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything a node needs to start. Immutable; checked when built (a bad value raises ConfigError)."""

    listen_host: str = DEFAULT_LISTEN_HOST
    listen_port: int = DEFAULT_LISTEN_PORT  #: 0..65535; 0 picks a free port
    data_dir: Path = Path("aiobroker-data")
    store: str = "sqlite"  #: "sqlite" or "memory"
    durability: str = "normal"  #: "normal" (WAL, survives a process crash) or "full" (fsync per commit)
    log_level: str = "info"  #: "debug", "info", "warning" or "error"
    max_message_size: int = 4 * MIB  #: 1 .. max_frame_size - 1024
    max_frame_size: int = 16 * MIB  #: 1024 .. 256 MiB
    max_connections: int = 1000  #: >= 1
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
    #: the identity that owns services naming no owner and signs bindings naming no identity (docs/security.md)
    node_identity: str | None = None
    authorization: bool = False  #: check each client's rights (off: every client may do everything)
    binding_failure_cache: float = DEFAULT_BINDING_FAILURE_CACHE  #: seconds a failed binding request is remembered
    #: ``(kind, definition)`` in file order; the definition is the table as written (the node checks it).
    objects: tuple[ObjectDef, ...] = ()

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        checked = _validate(values, {name: f"NodeConfig.{name}" for name in values})
        for name, value in checked.items():
            if value is not values[name]:  # normalized (an int lease to float, a list of objects to a tuple)
                object.__setattr__(self, name, value)

    @property
    def listen(self) -> str:
        """``"host:port"``, an IPv6 host in brackets (``"[::1]:4022"``); :func:`parse_listen` reverses it."""
        if ":" in self.listen_host:
            return f"[{self.listen_host}]:{self.listen_port}"
        return f"{self.listen_host}:{self.listen_port}"


# --- public functions ---------------------------------------------------------------------------------------


def load_config(path: Path | None = None, overrides: Mapping[str, Any] | None = None) -> NodeConfig:
    """Build the node's configuration: built-in defaults < the TOML file at ``path`` < ``overrides``.

    ``path=None`` reads no file. ``overrides`` are keyed by :class:`NodeConfig` field name; ``None`` values
    are skipped. Raises :class:`ConfigError` naming the file and key for any problem.
    """
    values: dict[str, Any] = {f.name: f.default for f in fields(NodeConfig)}
    where: dict[str, str] = {name: _DEFAULT for name in values}
    if path is not None:
        path = Path(path)
        text, document = _read_toml(path)
        file_values, file_where = _from_document(document, text, path)
        values.update(file_values)
        where.update(file_where)
    if overrides is not None:
        override_values, override_where = _from_overrides(overrides)
        values.update(override_values)
        where.update(override_where)
    # Check with the labels that say where each value came from, then build (which checks again, cheaply).
    return NodeConfig(**_validate(values, where))


def parse_listen(text: str, *, default_host: str = DEFAULT_LISTEN_HOST) -> tuple[str, int]:
    """Split a listen address into ``(host, port)``.

    Accepted: ``"host:port"``, ``"[IPv6 address]:port"`` (``"[::1]:4022"``) and ``":port"``, which gives
    ``default_host``. The port is 0..65535 (0 picks a free port). Anything else raises :class:`ConfigError`.
    """
    try:
        host, port = _split_listen(text)
    except _Invalid as exc:
        raise ConfigError(exc.reason) from None
    return (default_host if host is None else host), port


# --- checking values ----------------------------------------------------------------------------------------

_DEFAULT: Final = "built-in default"
_OVERRIDE: Final = "override"


class _Invalid(Exception):
    """A value is wrong. The caller prefixes where the value came from and raises ConfigError."""

    def __init__(self, reason: str, sub: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.sub = sub  # a position inside the value, e.g. "[2]" for an item of objects


def _describe(value: Any) -> str:
    """``a boolean (true)``, ``a string ('x')``: the kind of a wrong value, in TOML's words, and the value."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    kinds: tuple[tuple[type | tuple[type, ...], str], ...] = (
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (Mapping, "a table"),
        ((list, tuple), "an array"),
        (datetime, "a date-time"),
        (date, "a date"),
        (time, "a time"),
    )
    kind = next((name for cls, name in kinds if isinstance(value, cls)), f"a {type(value).__name__}")
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} ({text})"


def _quoted(words: Iterable[str]) -> str:
    items = [f'"{w}"' for w in words]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _did_you_mean(word: str, candidates: Iterable[str], template: str = "{}") -> str:
    by_lower = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {template.format(by_lower[match[0]])}?" if match else ""


def _int(value: Any, low: int, high: int | None = None, note: str = "") -> int:
    allowed = f"from {low} to {high}{note}" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"must be an integer {allowed}; got {_describe(value)}")
    if value < low or (high is not None and value > high):
        raise _Invalid(f"must be an integer {allowed}; got {value}")
    return value


def _choice(allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"must be {_quoted(allowed)}; got {_describe(value)}")
        if value not in allowed:
            hint = _did_you_mean(value, allowed, '"{}"')
            raise _Invalid(f"must be {_quoted(allowed)}; got {value!r}{hint}")
        return value

    return check


def _check_host(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a host name or IP address (a string); got {_describe(value)}")
    if not value:
        raise _Invalid("must be a host name or IP address; got an empty string")
    if any(c.isspace() for c in value) or "[" in value or "]" in value:
        raise _Invalid(f"must be a host name or IP address, without spaces or brackets; got {value!r}")
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise _Invalid(f"has a ':' but is not an IPv6 address; got {value!r}") from None
    return value


def _check_port(value: Any) -> int:
    return _int(value, 0, 65535, " (0 picks a free port)")


def _check_data_dir(value: Any) -> Path:
    if not isinstance(value, Path):
        raise _Invalid(f"must be a pathlib.Path; got {_describe(value)}")
    return value


def _check_optional_path(value: Any) -> Path | None:
    if value is None:
        return None
    if isinstance(value, str) and value:
        return Path(value).expanduser()
    if not isinstance(value, Path):
        raise _Invalid(f"must be a file path; got {_describe(value)}")
    return value


def _check_resolver(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str) or not value["kind"]:
        raise _Invalid(f"must be a table with a kind (a registered resolver's name); got {_describe(value)}")
    return value


def _check_optional_seconds(value: Any) -> float | None:
    return None if value is None else _check_lease(value)


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false; got {_describe(value)}")
    return value


def _check_retention(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 <= value < math.inf):
        raise _Invalid(f"must be a number of seconds >= 0; got {_describe(value)}")
    return float(value)


def _check_lease(value: Any) -> float:
    allowed = "a number of seconds > 0 (an integer or a float)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"must be {allowed}; got {_describe(value)}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not (seconds > 0 and math.isfinite(seconds)):
        raise _Invalid(f"must be {allowed}, and finite; got {value}")
    return seconds


def _check_link_token(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < 8:
        raise _Invalid(f"must be a token of at least 8 characters (an identity's token on the peer nodes); got {_describe(value)}")
    return value


def _check_identity_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        got = "an empty string" if value == "" else _describe(value)
        raise _Invalid(f'must be the name of an [[identity]] with a private key (identity = "node"); got {got}')
    return value


def _read_pem(what: str, key: str, value: Any, base: Path | None) -> Any:
    """A PEM field's text: the value itself if it is PEM, else the file it names (relative to ``base``; with
    ``base`` None only a :class:`Path` is a file, a string is passed on for the node to judge)."""
    if isinstance(value, str) and ("-----BEGIN" in value or base is None):
        return value
    if not isinstance(value, str | Path):
        raise _Invalid(f"{what}: {key} must be PEM text or a file path (a string); got {_describe(value)}")
    if isinstance(value, str) and not value.strip():
        raise _Invalid(f"{what}: {key} must be PEM text or a file path; got an empty string")
    file = Path(value).expanduser()
    if not file.is_absolute() and base is not None:
        file = base / file
    try:
        return read_pem_file(file)
    except FileNotFoundError:
        where = "the config file's directory" if base is not None else "the current directory"
        raise _Invalid(f"{what}: {key} file {file} does not exist (a relative path is relative to {where})") from None
    except SecurityError as exc:
        raise _Invalid(f"{what}: {key} file {file} {exc.message}") from None


def _read_pem_fields(kind: str, definition: dict[str, Any], base: Path | None) -> dict[str, Any]:
    """``definition`` with its PEM fields' files read (a new dict if anything was read)."""
    out = definition
    for key in PEM_FIELDS.get(kind, ()):
        value = definition.get(key)
        if value is None:
            continue
        text = _read_pem(f"{kind} {definition.get('name')!r}", key, value, base)
        if text is not value:
            if out is definition:
                out = dict(definition)
            out[key] = text
    return out


def _check_security_object(kind: str, definition: dict[str, Any]) -> None:
    """Parse an identity or binding as the node will (without the date checks it makes at creation)."""
    from .core.identities import Binding, Identity
    from .errors import BrokerError

    try:
        (Identity if kind == "identity" else Binding).from_def(definition)
    except BrokerError as exc:
        raise _Invalid(exc.message) from None


def _check_object(kind: Any, definition: Any) -> None:
    if not isinstance(kind, str) or kind not in OBJECT_KINDS:
        hint = _did_you_mean(kind, OBJECT_KINDS, '"{}"') if isinstance(kind, str) else ""
        got = repr(kind) if isinstance(kind, str) else _describe(kind)
        raise _Invalid(f"unknown object kind {got}{hint} (kinds: {_quoted(OBJECT_KINDS)})")
    if not isinstance(definition, dict):
        raise _Invalid(f"a {kind} must be a table with a string name; got {_describe(definition)}")
    if "name" not in definition:
        raise _Invalid(f'has no name; every {kind} needs name = "..."')
    name = definition["name"]
    if not isinstance(name, str):
        raise _Invalid(f'name must be a string (name = "..."); got {_describe(name)}')


def _check_objects(value: Any) -> tuple[ObjectDef, ...]:
    if not isinstance(value, tuple | list):
        raise _Invalid(f"must be a tuple of (kind, definition) pairs; got {_describe(value)}")
    result: list[ObjectDef] = []
    changed = False
    for i, item in enumerate(value):
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise _Invalid(f"must be a (kind, definition) pair; got {_describe(item)}", f"[{i}]")
        kind, definition = item
        try:
            _check_object(kind, definition)
            read = _read_pem_fields(kind, definition, None)
        except _Invalid as exc:
            raise _Invalid(exc.reason, f"[{i}]") from None
        result.append((kind, read))
        changed = changed or read is not definition
    if isinstance(value, tuple) and all(type(item) is tuple for item in value) and not changed:
        return value
    return tuple(result)


_CHECKS: Final[dict[str, Callable[[Any], Any]]] = {
    "listen_host": _check_host,
    "listen_port": _check_port,
    "data_dir": _check_data_dir,
    "store": _choice(STORES),
    "durability": _choice(DURABILITIES),
    "log_level": _choice(LOG_LEVELS),
    "max_message_size": lambda v: _int(v, 1),  # the upper bound depends on max_frame_size; see _validate
    "max_frame_size": lambda v: _int(v, MIN_FRAME_SIZE, MAX_FRAME_SIZE, " (256 MiB)"),
    "max_connections": lambda v: _int(v, 1),
    "receive_lease": _check_lease,
    "poison_rollbacks": lambda v: _int(v, 1),
    "forwarding": _check_bool,
    "max_hops": lambda v: _int(v, 1, 255),
    "connect_timeout": _check_lease,
    "handshake_timeout": _check_lease,
    "ack_timeout": _check_lease,
    "closed_retention": _check_retention,
    "link_token": _check_link_token,
    "tls_cert": _check_optional_path,
    "tls_key": _check_optional_path,
    "tls_ca": _check_optional_path,
    "tls_check_hostname": _check_bool,
    "resolver": _check_resolver,
    "resolve_timeout": _check_optional_seconds,
    "max_delayed_per_service": lambda v: _int(v, 1),
    "max_delayed_messages": lambda v: _int(v, 1),
    "node_identity": _check_identity_name,
    "authorization": _check_bool,
    "binding_failure_cache": _check_lease,
    "objects": _check_objects,
}


def _rank(label: str) -> int:
    """How strongly a value was asked for: a default < a file < an override or a direct argument."""
    if label == _DEFAULT:
        return 0
    if label.startswith(_OVERRIDE) or label.startswith("NodeConfig."):
        return 2
    return 1


def _validate(values: Mapping[str, Any], where: Mapping[str, str]) -> dict[str, Any]:
    """Return the checked (normalized) values, or raise ConfigError naming where the bad one came from."""
    checked: dict[str, Any] = {}
    for name, check in _CHECKS.items():
        try:
            checked[name] = check(values[name])
        except _Invalid as exc:
            raise ConfigError(f"{where[name]}{exc.sub}: {exc.reason}") from None
    message_size, frame_size = checked["max_message_size"], checked["max_frame_size"]
    if message_size > frame_size - FRAME_OVERHEAD:
        where_m, where_f = where["max_message_size"], where["max_frame_size"]
        culprit = where_f if _rank(where_f) > _rank(where_m) else where_m
        raise ConfigError(
            f"{culprit}: max_message_size must be at most max_frame_size - {FRAME_OVERHEAD}"
            f" = {frame_size - FRAME_OVERHEAD}, so that one message and its envelope fit in a frame;"
            f" max_message_size is {message_size} ({where_m}), max_frame_size is {frame_size} ({where_f});"
            f" lower max_message_size or raise max_frame_size"
        )
    if (checked["tls_cert"] is None) != (checked["tls_key"] is None):
        given = "tls_cert" if checked["tls_cert"] is not None else "tls_key"
        raise ConfigError(f"{where[given]}: [tls] cert and key go together; give both, or neither for plain TCP")
    return checked


# --- listen addresses ---------------------------------------------------------------------------------------

_LISTEN_FORMS: Final = 'expected "host:port", "[IPv6 address]:port" or ":port"'


def _split_listen(text: Any) -> tuple[str | None, int]:
    """``(host, port)``, host None for ``":port"``; else _Invalid with the address and the accepted forms."""
    if not isinstance(text, str):
        raise _Invalid(f'must be a string such as "127.0.0.1:4022"; got {_describe(text)}')

    def bad(why: str) -> _Invalid:
        return _Invalid(f"bad listen address {text!r}: {why}; {_LISTEN_FORMS}")

    if not text:
        raise bad("it is empty")
    if text.strip() != text:
        raise bad("it has leading or trailing spaces")
    host: str | None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise bad("no ']' after the IPv6 address")
        host = text[1:close]
        rest = text[close + 1 :]
        if not rest.startswith(":"):
            raise bad("no ':port' after ']'")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise bad("no port")
        if ":" in host:
            raise bad("an IPv6 address must be in brackets, such as [::1]:4022")
        if not host:
            host = None
        elif any(c.isspace() for c in host) or "[" in host or "]" in host:
            raise bad(f"{host!r} is not a host name or IP address")
    if not port_text:
        raise bad("no port after ':'")
    if not (port_text.isascii() and port_text.isdigit()):
        raise bad(f"port {port_text!r} is not a number")
    if len(port_text) > 5 or int(port_text) > 65535:
        raise bad(f"port {port_text} is out of range 0..65535")
    return host, int(port_text)


# --- the file -----------------------------------------------------------------------------------------------

#: The keys each section allows, as written in the file.
_SECTIONS: Final[dict[str, tuple[str, ...]]] = {
    "node": ("listen", "data_dir", "store", "durability", "log_level"),
    "limits": ("max_message_size", "max_frame_size", "max_connections"),
    "receive": ("lease_seconds", "poison_rollbacks"),
    "federation": ("forwarding", "max_hops", "connect_timeout", "handshake_timeout", "ack_timeout", "closed_retention",
                   "link_token"),
    "tls": ("cert", "key", "ca", "check_hostname"),
    "dynamic_routing": ("resolve_timeout", "max_delayed_per_service", "max_delayed_messages"),
    "security": ("identity", "authorization", "binding_failure_cache"),
}
#: Field names whose key in the file is spelled differently.
_FILE_KEY_FOR_FIELD: Final = {
    "listen_host": "listen",
    "listen_port": "listen",
    "receive_lease": "lease_seconds",
    "tls_cert": "cert",
    "tls_key": "key",
    "tls_ca": "ca",
    "tls_check_hostname": "check_hostname",
    "node_identity": "identity",
}
#: Keys whose field name is spelled differently; the rest are the same.
_FIELD_FOR_FILE_KEY: Final = {
    "lease_seconds": "receive_lease",
    "cert": "tls_cert",
    "key": "tls_key",
    "ca": "tls_ca",
    "check_hostname": "tls_check_hostname",
    "identity": "node_identity",
}

#: An array-of-tables header at the start of a line: [[queue]], [[ "queue" ]], [['queue']] # comment
_HEADER: Final = re.compile(
    r"""^[ \t]*\[\[[ \t]*(?:"([^"\\]*)"|'([^']*)'|([A-Za-z0-9_-]+))[ \t]*\]\]""", re.M
)


def _read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} is not valid TOML: it is not UTF-8 text (bad byte at line {line})"
        ) from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message ends with "(at line L, column C)"
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _from_document(document: dict[str, Any], text: str, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The fields a parsed file sets, and for each the label ``"<file>: [section] key"``."""
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    arrays: dict[str, list[Any]] = {}
    for key, value in document.items():
        if key == "resolver":
            if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
                raise ConfigError(f"{path}: [resolver] must be a table with kind = \"NAME\" (static_file, dns_srv, http,"
                                  f" chain, or a plug-in's name); got {_describe(value)}")
            values["resolver"], where["resolver"] = _resolve_paths(value, path.parent.absolute()), f"{path}: [resolver]"
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{path}: [{key}] must be a table (a [{key}] line followed by key = value lines);"
                    f" got {_describe(value)}"
                )
            _read_section(key, value, path, values, where)
        elif key in OBJECT_KINDS:
            if not isinstance(value, list):
                how = (
                    f"write [[{key}]], not [{key}]" if isinstance(value, dict) else f"got {_describe(value)}"
                )
                home = next((s for s, keys in _SECTIONS.items() if key in keys), None)
                if home is not None and not isinstance(value, dict):
                    how += f" (the key {key} = ... belongs in [{home}])"
                raise ConfigError(f"{path}: {key} must be an array of tables, one [[{key}]] per {key}; {how}")
            arrays[key] = value
        else:
            raise ConfigError(f"{path}: {_unknown_top_level(key, value)}")
    objects: list[ObjectDef] = []
    for kind, index in _file_order(text, {kind: len(items) for kind, items in arrays.items()}):
        definition = arrays[kind][index]
        try:
            _check_object(kind, definition)
            if kind in PEM_FIELDS:
                definition = _read_pem_fields(kind, definition, path.parent.absolute())
                _check_security_object(kind, definition)
        except _Invalid as exc:
            raise ConfigError(f"{path}: {kind} #{index + 1}: {exc.reason}") from None
        objects.append((kind, definition))
    if arrays:
        values["objects"] = tuple(objects)
        where["objects"] = f"{path}: objects"
    return values, where


def _resolve_paths(table: dict[str, Any], base: Path) -> dict[str, Any]:
    """A resolver's relative ``path`` (its own, or a chain member's) is relative to the config file."""
    out = dict(table)
    if isinstance(out.get("path"), str) and not Path(out["path"]).expanduser().is_absolute():
        out["path"] = str(base / out["path"])
    if isinstance(out.get("resolvers"), list):
        out["resolvers"] = [_resolve_paths(m, base) if isinstance(m, dict) else m for m in out["resolvers"]]
    return out


def _read_section(
    section: str, table: dict[str, Any], path: Path, values: dict[str, Any], where: dict[str, str]
) -> None:
    allowed = _SECTIONS[section]
    for key, value in table.items():
        label = f"{path}: [{section}] {key}"
        if key not in allowed:
            raise ConfigError(f"{path}: {_unknown_key(section, key)}")
        if key == "listen":
            try:
                host, port = _split_listen(value)
            except _Invalid as exc:
                raise ConfigError(f"{label}: {exc.reason}") from None
            if host is not None:  # ":port" keeps the host as it was
                values["listen_host"], where["listen_host"] = host, label
            values["listen_port"], where["listen_port"] = port, label
        elif key == "data_dir":
            if not isinstance(value, str) or not value:
                got = "an empty string" if value == "" else _describe(value)
                raise ConfigError(f"{label}: must be a directory path (a non-empty string); got {got}")
            data_dir = Path(value).expanduser()
            if not data_dir.is_absolute():
                data_dir = path.parent.absolute() / data_dir
            values["data_dir"], where["data_dir"] = data_dir, label
        elif section == "tls" and key in ("cert", "key", "ca"):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{label}: must be a file path (a non-empty string); got {_describe(value)}")
            file = Path(value).expanduser()
            name = _FIELD_FOR_FILE_KEY[key]
            values[name], where[name] = (file if file.is_absolute() else path.parent.absolute() / file), label
        else:
            name = _FIELD_FOR_FILE_KEY.get(key, key)
            values[name], where[name] = value, label  # checked in _validate, with this label


def _unknown_key(section: str, key: str) -> str:
    allowed = _SECTIONS[section]
    message = f"unknown key [{section}] {key}"
    home = next((s for s, keys in _SECTIONS.items() if key in keys), None)
    if home is not None:
        message += f"; {key} belongs in [{home}], not [{section}]"
    elif key in _FILE_KEY_FOR_FIELD and _FILE_KEY_FOR_FIELD[key] in allowed:
        message += f"; did you mean {_FILE_KEY_FOR_FIELD[key]}?"
    else:
        message += _did_you_mean(key, allowed)
    return message + f" (keys allowed in [{section}]: {', '.join(allowed)})"


def _unknown_top_level(key: str, value: Any) -> str:
    sections = ", ".join(f"[{s}]" for s in _SECTIONS)
    kinds = ", ".join(f"[[{k}]]" for k in OBJECT_KINDS)
    allowed = f"(sections: {sections}; object kinds: {kinds})"
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return f"unknown object kind [[{key}]]{_did_you_mean(key, OBJECT_KINDS, '[[{}]]')} {allowed}"
    if isinstance(value, dict):
        hint = _did_you_mean(key, _SECTIONS, "[{}]") or _did_you_mean(key, OBJECT_KINDS, "[[{}]]")
        return f"unknown section [{key}]{hint} {allowed}"
    home = next((s for s, keys in _SECTIONS.items() if key in keys), None)
    if home is None and key in _FILE_KEY_FOR_FIELD:
        key_hint = _FILE_KEY_FOR_FIELD[key]
        home = next(s for s, keys in _SECTIONS.items() if key_hint in keys)
        return f"unknown key {key} at the top level; did you mean {key_hint} in [{home}]? {allowed}"
    if home is not None:
        return f"unknown key {key} at the top level; {key} belongs in [{home}] {allowed}"
    return f"unknown key {key} at the top level; keys go in a section {allowed}"


def _file_order(text: str, counts: dict[str, int]) -> list[tuple[str, int]]:
    """``(kind, index)`` of every object in the order the file writes them, across kinds.

    tomllib groups arrays by key, so the order across kinds is read from the ``[[kind]]`` headers. If the
    headers found do not account for every object (an inline array, a header inside a multi-line string),
    fall back to kind by kind, each in file order.
    """
    seen = dict.fromkeys(counts, 0)
    order: list[tuple[str, int]] = []
    for match in _HEADER.finditer(text):
        kind = next(group for group in match.groups() if group is not None)
        if kind in seen:
            order.append((kind, seen[kind]))
            seen[kind] += 1
    if seen == counts:
        return order
    return [(kind, index) for kind, count in counts.items() for index in range(count)]


# --- overrides ----------------------------------------------------------------------------------------------


def _from_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    names = tuple(f.name for f in fields(NodeConfig))
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        label = f"{_OVERRIDE} {key}"
        if key not in names:
            if key == "listen":
                hint = "; split it with parse_listen() into listen_host and listen_port"
            else:
                hint = _did_you_mean(str(key), names)
            raise ConfigError(f"unknown override {key!r}{hint} (fields: {', '.join(names)})")
        if key == "data_dir" and isinstance(value, str | os.PathLike) and not isinstance(value, Path):
            value = os.fspath(value)
            if value == "":
                raise ConfigError(f"{label}: must be a directory path; got an empty string")
            if isinstance(value, str):
                value = Path(value)  # a bytes path stays as it is, and _validate reports it
        values[key], where[key] = value, label
    return values, where
