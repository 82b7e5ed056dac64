"""The values of :class:`~aiobroker.config.NodeConfig`'s fields: what each allows, and the rules across fields.

Part of :mod:`aiobroker.config` (its docstring says how the parts fit); import from there. :func:`validate` checks
every field with its entry in :data:`CHECKS`, then the rules that join two fields, and names where the culprit
came from by the label it was given (``"<file>: [limits] max_frame_size"``, ``"override max_frame_size"``,
``"NodeConfig.max_frame_size"``). The listen address's syntax (:func:`split_listen`) is here too.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from .memory import MIN_MAX_MEMORY
from .messages import Invalid, describe, describe_or_empty, did_you_mean, quoted
from .objects import check_objects
from ..core.transmission import ENVELOPE_OVERHEAD
from ..errors import ConfigError, SecurityError
from ..security.certs import read_pem_file
from ..store import store_kind, store_kinds
from ..store.sqlite import DURABILITIES as SQLITE_DURABILITIES

MIB: Final = 1024 * 1024

STORES: Final = ("sqlite", "memory", "postgresql")
DURABILITIES: Final = tuple(SQLITE_DURABILITIES)  # the store owns them (each is a PRAGMA synchronous)
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")  # words (the default), or one JSON object a line

MIN_FRAME_SIZE: Final = 8 * 1024
MAX_FRAME_SIZE: Final = 256 * MIB
#: Room in a frame for the envelope around one message body: max_message_size <= max_frame_size - FRAME_OVERHEAD,
#: so that a message of the largest size crosses a link to a node with the same limits (its envelope, with the
#: longest names and a key header, is at most this much more).
FRAME_OVERHEAD: Final = ENVELOPE_OVERHEAD

#: The label of a value nobody gave (a field's default).
DEFAULT_LABEL: Final = "built-in default"
#: The start of the label of an override: ``"override max_hops"``.
OVERRIDE_LABEL: Final = "override"
#: The start of the label of a field given to NodeConfig directly: ``"NodeConfig.max_hops"``.
ARGUMENT_LABEL: Final = "NodeConfig."


# --- one field at a time ------------------------------------------------------------------------------------


def _int(value: Any, low: int, high: int | None = None, note: str = "") -> int:
    allowed = f"from {low} to {high}{note}" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"must be an integer {allowed}; got {describe(value)}")
    if value < low or (high is not None and value > high):
        raise Invalid(f"must be an integer {allowed}; got {value}")
    return value


def _check_count(value: Any) -> int:
    return _int(value, 1)


def _choice(allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be {quoted(allowed)}; got {describe(value)}")
        if value not in allowed:
            hint = did_you_mean(value, allowed, '"{}"')
            raise Invalid(f"must be {quoted(allowed)}; got {value!r}{hint}")
        return value

    return check


def _check_host(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a host name or IP address (a string); got {describe(value)}")
    if not value:
        raise Invalid("must be a host name or IP address; got an empty string")
    if any(c.isspace() for c in value) or "[" in value or "]" in value:
        raise Invalid(f"must be a host name or IP address, without spaces or brackets; got {value!r}")
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise Invalid(f"has a ':' but is not an IPv6 address; got {value!r}") from None
    return value


def _check_port(value: Any) -> int:
    return _int(value, 0, 65535, " (0 picks a free port)")


def _check_optional_port(value: Any) -> int | None:
    return None if value is None else _check_port(value)


def _check_data_dir(value: Any) -> Path:
    if not isinstance(value, Path):
        raise Invalid(f"must be a pathlib.Path; got {describe(value)}")
    return value


def _check_optional_path(value: Any) -> Path | None:
    if value is None:
        return None
    if isinstance(value, str) and value:
        return Path(value).expanduser()
    if not isinstance(value, Path):
        raise Invalid(f"must be a file path; got {describe(value)}")
    return value


def _check_pem_file(value: Any) -> Path | None:
    """A ``[tls]`` file: there, readable, and PEM text, checked now so that a mistake names its key and path
    before anything starts (whether it holds a usable certificate or key, the node's TLS set-up says)."""
    path = _check_optional_path(value)
    if path is None:
        return None
    try:
        read_pem_file(path)
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (a relative path, from the current directory {Path.cwd()})"
        raise Invalid(f"file {path} does not exist{where}") from None
    except SecurityError as exc:
        raise Invalid(f"file {path} {exc.message}") from None
    return path


def _check_resolver(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str) or not value["kind"]:
        raise Invalid(f"must be a table with a kind (a registered resolver's name); got {describe(value)}")
    return value


def _check_store(value: Any) -> str:
    """A store's name (``sqlite``, ``memory``, ``postgresql`` or a plug-in's), or a URL naming it by its scheme
    (``postgresql://user@host/db``); whether the name is registered is decided when the node builds the store."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid(
            f'must be "sqlite", "memory", "postgresql", a plug-in store\'s name, or a postgresql:// URL; got'
            f" {describe(value)}"
        )
    try:
        kind, _ = store_kind(value)
    except ConfigError as exc:
        raise Invalid(exc.message) from None
    known = store_kinds()
    if kind not in known:
        hint = did_you_mean(kind, tuple(known), '"{}"')
        raise Invalid(f"must be {quoted(tuple(known))} or a postgresql:// URL; got {value!r}{hint}")
    return value


def _check_store_options(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise Invalid(f"must be a table of the store's options (dsn = \"...\", ...); got {describe(value)}")
    return value


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false; got {describe(value)}")
    return value


def _check_retention(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 <= value < math.inf):
        raise Invalid(f"must be a number of seconds >= 0; got {describe(value)}")
    return float(value)


def _check_seconds(value: Any) -> float:
    allowed = "a number of seconds > 0 (an integer or a float)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"must be {allowed}; got {describe(value)}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not (seconds > 0 and math.isfinite(seconds)):
        raise Invalid(f"must be {allowed}, and finite; got {value}")
    return seconds


def _check_optional_seconds(value: Any) -> float | None:
    return None if value is None else _check_seconds(value)


def _check_link_token(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) < 8:
        raise Invalid(
            f"must be a token of at least 8 characters (an identity's token on the peer nodes); got {describe(value)}"
        )
    return value


def _check_max_memory(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_MAX_MEMORY:
        raise Invalid(
            f"must be an integer >= {MIN_MAX_MEMORY} (bytes, at least 1 MiB; leave it out for the default, a quarter"
            f" of the machine's memory); got {describe(value) if not isinstance(value, int) else value}"
        )
    return value


def _check_identity_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise Invalid(
            'must be the name of an [[identity]] with a private key (identity = "node");'
            f" got {describe_or_empty(value)}"
        )
    return value


#: One check per :class:`~aiobroker.config.NodeConfig` field, in field order: the value, normalized, or Invalid.
CHECKS: Final[dict[str, Callable[[Any], Any]]] = {
    "listen_host": _check_host,
    "listen_port": _check_port,
    "data_dir": _check_data_dir,
    "store": _check_store,
    "store_options": _check_store_options,
    "durability": _choice(DURABILITIES),
    "log_level": _choice(LOG_LEVELS),
    "log_format": _choice(LOG_FORMATS),
    "store_wait": _check_retention,  # >= 0 seconds
    "standby": _check_bool,
    "max_message_size": _check_count,  # the upper bound depends on max_frame_size; see validate
    "max_frame_size": lambda v: _int(v, MIN_FRAME_SIZE, MAX_FRAME_SIZE, " (256 MiB)"),
    "max_connections": _check_count,
    "reserved_connections": lambda v: _int(v, 0),
    "max_connections_per_address": _check_count,
    "idle_timeout": _check_retention,  # >= 0; 0: never
    "receive_lease": _check_seconds,
    "poison_rollbacks": _check_count,
    "forwarding": _check_bool,
    "max_hops": lambda v: _int(v, 1, 255),
    "connect_timeout": _check_seconds,
    "handshake_timeout": _check_seconds,
    "ack_timeout": _check_seconds,
    "closed_retention": _check_retention,
    "link_token": _check_link_token,
    "tls_cert": _check_pem_file,
    "tls_key": _check_pem_file,
    "tls_ca": _check_pem_file,
    "tls_check_hostname": _check_bool,
    "resolver": _check_resolver,
    "resolve_timeout": _check_optional_seconds,
    "max_delayed_per_service": _check_count,
    "max_delayed_messages": _check_count,
    "max_memory": _check_max_memory,
    "queue_window": _check_count,
    "node_identity": _check_identity_name,
    "authorization": _check_bool,
    "binding_failure_cache": _check_seconds,
    "http_host": _check_host,
    "http_port": _check_optional_port,  # None: no HTTP listener
    "http_metrics_open": _check_bool,
    "http_optional": _check_bool,
    "objects": check_objects,
}


# --- all fields ---------------------------------------------------------------------------------------------


def validate(values: Mapping[str, Any], where: Mapping[str, str]) -> dict[str, Any]:
    """Return the checked (normalized) values, or raise ConfigError naming where the bad one came from."""
    checked: dict[str, Any] = {}
    for name, check in CHECKS.items():
        try:
            checked[name] = check(values[name])
        except Invalid as exc:
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


def _rank(label: str) -> int:
    """How strongly a value was asked for: a default < a file < an override or a direct argument."""
    if label == DEFAULT_LABEL:
        return 0
    if label.startswith(OVERRIDE_LABEL) or label.startswith(ARGUMENT_LABEL):
        return 2
    return 1


# --- listen addresses ---------------------------------------------------------------------------------------

_LISTEN_FORMS: Final = 'expected "host:port", "[IPv6 address]:port" or ":port"'


def split_http_listen(text: Any) -> tuple[str | None, int | None]:
    """``[http] listen`` and ``--http``: an address as :func:`split_listen` reads it, or ``"off"`` (no listener:
    ``(None, None)``)."""
    if isinstance(text, str) and text.strip().lower() == "off":
        return None, None
    return split_listen(text)


def split_listen(text: Any) -> tuple[str | None, int]:
    """``(host, port)``, host None for ``":port"``; else Invalid with the address and the accepted forms."""
    if not isinstance(text, str):
        raise Invalid(f'must be a string such as "127.0.0.1:4022"; got {describe(text)}')

    def bad(why: str) -> Invalid:
        return Invalid(f"bad listen address {text!r}: {why}; {_LISTEN_FORMS}")

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
