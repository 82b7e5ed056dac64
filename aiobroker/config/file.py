"""The TOML file of :mod:`aiobroker.config`: reading it, its sections and keys, and the messages for what is unknown.

Part of :mod:`aiobroker.config` (its docstring says how the parts fit, and documents the file); import from there.
:func:`from_document` turns a parsed file into :class:`~aiobroker.config.NodeConfig` field values, each with the
label ``"<file>: [section] key"`` that an error about it will start with. Values are checked later, all together
(:func:`~aiobroker.config.fields.validate`), except what only the file can say: a key's section, a path relative to
the file, the listen address's syntax, and the ``[[kind]]`` arrays (:mod:`aiobroker.config.objects`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Final

from .fields import split_http_listen, split_listen
from .messages import Invalid, describe, describe_or_empty, did_you_mean
from .objects import OBJECT_KINDS, objects_from_file
from ..errors import ConfigError

#: The keys each section allows, as written in the file.
SECTIONS: Final[dict[str, tuple[str, ...]]] = {
    "node": ("listen", "data_dir", "store", "durability", "log_level", "log_format", "store_wait", "standby"),
    "limits": ("max_message_size", "max_frame_size", "max_connections", "reserved_connections",
               "max_connections_per_address", "idle_timeout", "max_memory", "queue_window"),
    "receive": ("lease_seconds", "poison_rollbacks"),
    "federation": ("forwarding", "max_hops", "connect_timeout", "handshake_timeout", "ack_timeout", "closed_retention",
                   "link_token"),
    "tls": ("cert", "key", "ca", "check_hostname"),
    "dynamic_routing": ("resolve_timeout", "max_delayed_per_service", "max_delayed_messages"),
    "security": ("identity", "authorization", "binding_failure_cache"),
    "http": ("listen", "metrics_open"),
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
    "http_metrics_open": "metrics_open",
}
#: Keys whose field name is spelled differently; the rest are the same. (``listen`` sets two fields: see
#: :func:`_read_section`.)
_FIELD_FOR_FILE_KEY: Final = {key: field for field, key in _FILE_KEY_FOR_FIELD.items() if key != "listen"}


def read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    """The file's text and its parsed document; ConfigError if it cannot be read or is not TOML."""
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


def from_document(document: dict[str, Any], text: str, path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The fields a parsed file sets, and for each the label ``"<file>: [section] key"``."""
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    arrays: dict[str, list[Any]] = {}
    for key, value in document.items():
        if key == "resolver":
            if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
                raise ConfigError(f"{path}: [resolver] must be a table with kind = \"NAME\" (static_file, dns_srv, http,"
                                  f" chain, or a plug-in's name); got {describe(value)}")
            values["resolver"], where["resolver"] = _resolve_paths(value, path.parent.absolute()), f"{path}: [resolver]"
        elif key == "store" and isinstance(value, dict):
            _read_store_table(value, path, values, where)
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{path}: [{key}] must be a table (a [{key}] line followed by key = value lines);"
                    f" got {describe(value)}"
                )
            _read_section(key, value, path, values, where)
        elif key in OBJECT_KINDS:
            if not isinstance(value, list):
                how = (
                    f"write [[{key}]], not [{key}]" if isinstance(value, dict) else f"got {describe(value)}"
                )
                home = _section_of(key)
                if home is not None and not isinstance(value, dict):
                    how += f" (the key {key} = ... belongs in [{home}])"
                raise ConfigError(f"{path}: {key} must be an array of tables, one [[{key}]] per {key}; {how}")
            arrays[key] = value
        else:
            raise ConfigError(f"{path}: {_unknown_top_level(key, value)}")
    if isinstance(document.get("store"), dict) and isinstance(document.get("node"), dict) and "store" in document["node"]:
        raise ConfigError(f"{path}: the store is given twice, by [node] store and by a [store] table; keep one")
    if arrays:
        values["objects"] = objects_from_file(arrays, text, path)
        where["objects"] = f"{path}: objects"
    return values, where


def _read_store_table(table: dict[str, Any], path: Path, values: dict[str, Any], where: dict[str, str]) -> None:
    """``[store]``: ``kind`` (or a ``dsn`` URL that names it) and the store's options (docs/stores.md)."""
    options = {k: v for k, v in table.items() if k != "kind"}
    kind = table.get("kind")
    dsn = options.get("dsn")
    if kind is None and isinstance(dsn, str) and "://" in dsn:
        kind = dsn.split("://", 1)[0]
        kind = "postgresql" if kind in ("postgres", "postgresql") else kind
    if not isinstance(kind, str) or not kind:
        raise ConfigError(
            f'{path}: [store] needs kind = "NAME" (sqlite, memory, postgresql or a plug-in\'s name), or a dsn ='
            f' "postgresql://..." that names it; got {describe(table)}'
        )
    values["store"], where["store"] = kind, f"{path}: [store] kind"
    values["store_options"], where["store_options"] = options, f"{path}: [store]"


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
    allowed = SECTIONS[section]
    for key, value in table.items():
        label = f"{path}: [{section}] {key}"
        if key not in allowed:
            raise ConfigError(f"{path}: {_unknown_key(section, key)}")
        if key == "listen" and section == "http":
            try:
                http_host, http_port = split_http_listen(value)
            except Invalid as exc:
                raise ConfigError(f'{label}: {exc.reason}, or "off" for no HTTP listener') from None
            if http_host is not None:
                values["http_host"], where["http_host"] = http_host, label
            values["http_port"], where["http_port"] = http_port, label
            values["http_optional"], where["http_optional"] = False, label  # an address given is an address wanted
        elif key == "listen":
            try:
                host, port = split_listen(value)
            except Invalid as exc:
                raise ConfigError(f"{label}: {exc.reason}") from None
            if host is not None:  # ":port" keeps the host as it was
                values["listen_host"], where["listen_host"] = host, label
            values["listen_port"], where["listen_port"] = port, label
        elif key == "data_dir":
            if not isinstance(value, str) or not value:
                got = describe_or_empty(value)
                raise ConfigError(f"{label}: must be a directory path (a non-empty string); got {got}")
            values["data_dir"], where["data_dir"] = _in_file_dir(value, path), label
        elif section == "tls" and key in ("cert", "key", "ca"):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{label}: must be a file path (a non-empty string); got {describe(value)}")
            name = _FIELD_FOR_FILE_KEY[key]
            values[name], where[name] = _in_file_dir(value, path), label
        else:
            name = _FIELD_FOR_FILE_KEY.get(key, key)
            values[name], where[name] = value, label  # checked in validate, with this label


def _in_file_dir(value: str, path: Path) -> Path:
    """``value`` as an absolute path, ``~`` expanded, a relative one taken from the directory of the file ``path``."""
    file = Path(value).expanduser()
    return file if file.is_absolute() else path.parent.absolute() / file


def _section_of(key: str) -> str | None:
    """The section that allows ``key``, if any."""
    return next((section for section, keys in SECTIONS.items() if key in keys), None)


def _unknown_key(section: str, key: str) -> str:
    allowed = SECTIONS[section]
    message = f"unknown key [{section}] {key}"
    home = _section_of(key)
    if home is not None:
        message += f"; {key} belongs in [{home}], not [{section}]"
    elif key in _FILE_KEY_FOR_FIELD and _FILE_KEY_FOR_FIELD[key] in allowed:
        message += f"; did you mean {_FILE_KEY_FOR_FIELD[key]}?"
    else:
        message += did_you_mean(key, allowed)
    return message + f" (keys allowed in [{section}]: {', '.join(allowed)})"


def _unknown_top_level(key: str, value: Any) -> str:
    sections = ", ".join(f"[{s}]" for s in SECTIONS)
    kinds = ", ".join(f"[[{k}]]" for k in OBJECT_KINDS)
    allowed = f"(sections: {sections}; object kinds: {kinds})"
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return f"unknown object kind [[{key}]]{did_you_mean(key, OBJECT_KINDS, '[[{}]]')} {allowed}"
    if isinstance(value, dict):
        hint = did_you_mean(key, SECTIONS, "[{}]") or did_you_mean(key, OBJECT_KINDS, "[[{}]]")
        return f"unknown section [{key}]{hint} {allowed}"
    home = _section_of(key)
    if home is None and key in _FILE_KEY_FOR_FIELD:
        key_hint = _FILE_KEY_FOR_FIELD[key]
        return f"unknown key {key} at the top level; did you mean {key_hint} in [{_section_of(key_hint)}]? {allowed}"
    if home is not None:
        return f"unknown key {key} at the top level; {key} belongs in [{home}] {allowed}"
    return f"unknown key {key} at the top level; keys go in a section {allowed}"
