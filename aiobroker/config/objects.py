"""The objects a configuration declares: ``[[message_type]]``, ``[[contract]]``, ... ``[[binding]]``.

Part of :mod:`aiobroker.config` (its docstring says how the parts fit); import from there. This module owns the
object arrays of a file (their order across kinds, each table's name), the PEM fields of identities and bindings
(the text, or a file read when loaded), the early check of identities and bindings, and the check of the
``objects`` field of :class:`~aiobroker.config.NodeConfig`. The rest of a definition is the node's to check when
it creates the object.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

from .messages import Invalid, describe, did_you_mean, quoted
from ..errors import ConfigError, SecurityError
from ..security.certs import read_pem_file

#: The object kinds a config file may declare, as ``[[kind]]`` arrays of tables.
OBJECT_KINDS: Final = ("message_type", "contract", "queue", "service", "route", "identity", "binding")
#: Fields of ``[[identity]]`` and ``[[binding]]`` that hold PEM text, given as the text or a file path.
PEM_FIELDS: Final = {"identity": ("certificate", "private_key"), "binding": ("certificate",)}

ObjectDef = tuple[str, dict[str, Any]]

#: An array-of-tables header at the start of a line: [[queue]], [[ "queue" ]], [['queue']] # comment
_HEADER: Final = re.compile(
    r"""^[ \t]*\[\[[ \t]*(?:"([^"\\]*)"|'([^']*)'|([A-Za-z0-9_-]+))[ \t]*\]\]""", re.M
)


def objects_from_file(arrays: dict[str, list[Any]], text: str, path: Path) -> tuple[ObjectDef, ...]:
    """The objects of a file's ``[[kind]]`` arrays (``arrays``, keyed by kind) in the order ``text`` writes them.

    PEM fields naming files are read (relative to the file's directory) and identities and bindings are parsed,
    so a mistake raises :class:`ConfigError` naming the file and the object (``service #2``) at once.
    """
    base = path.parent.absolute()
    objects: list[ObjectDef] = []
    for kind, index in _file_order(text, {kind: len(items) for kind, items in arrays.items()}):
        definition = arrays[kind][index]
        try:
            definition = _checked(kind, definition, base)
            if kind in PEM_FIELDS:
                _check_security_object(kind, definition)
        except Invalid as exc:
            raise ConfigError(f"{path}: {kind} #{index + 1}: {exc.reason}") from None
        objects.append((kind, definition))
    return tuple(objects)


def check_objects(value: Any) -> tuple[ObjectDef, ...]:
    """The ``objects`` field: ``(kind, definition)`` pairs, as a tuple of tuples with PEM files (Paths) read."""
    if not isinstance(value, tuple | list):
        raise Invalid(f"must be a tuple of (kind, definition) pairs; got {describe(value)}")
    result: list[ObjectDef] = []
    changed = False
    for i, item in enumerate(value):
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise Invalid(f"must be a (kind, definition) pair; got {describe(item)}", f"[{i}]")
        kind, definition = item
        try:
            read = _checked(kind, definition, None)
        except Invalid as exc:
            raise Invalid(exc.reason, f"[{i}]") from None
        result.append((kind, read))
        changed = changed or read is not definition
    if isinstance(value, tuple) and all(type(item) is tuple for item in value) and not changed:
        return value
    return tuple(result)


def _checked(kind: Any, definition: Any, base: Path | None) -> dict[str, Any]:
    """``definition`` once its kind and name are checked, with its PEM fields' files read (see :func:`_read_pem`)."""
    _check_object(kind, definition)
    return _read_pem_fields(kind, definition, base)


def _check_object(kind: Any, definition: Any) -> None:
    if not isinstance(kind, str) or kind not in OBJECT_KINDS:
        hint = did_you_mean(kind, OBJECT_KINDS, '"{}"') if isinstance(kind, str) else ""
        got = repr(kind) if isinstance(kind, str) else describe(kind)
        raise Invalid(f"unknown object kind {got}{hint} (kinds: {quoted(OBJECT_KINDS)})")
    if not isinstance(definition, dict):
        raise Invalid(f"a {kind} must be a table with a string name; got {describe(definition)}")
    if "name" not in definition:
        raise Invalid(f'has no name; every {kind} needs name = "..."')
    name = definition["name"]
    if not isinstance(name, str):
        raise Invalid(f'name must be a string (name = "..."); got {describe(name)}')


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


def _read_pem(what: str, key: str, value: Any, base: Path | None) -> Any:
    """A PEM field's text: the value itself if it is PEM, else the file it names (relative to ``base``; with
    ``base`` None only a :class:`Path` is a file, a string is passed on for the node to judge)."""
    if isinstance(value, str) and ("-----BEGIN" in value or base is None):
        return value
    if not isinstance(value, str | Path):
        raise Invalid(f"{what}: {key} must be PEM text or a file path (a string); got {describe(value)}")
    if isinstance(value, str) and not value.strip():
        raise Invalid(f"{what}: {key} must be PEM text or a file path; got an empty string")
    file = Path(value).expanduser()
    if not file.is_absolute() and base is not None:
        file = base / file
    try:
        return read_pem_file(file)
    except FileNotFoundError:
        where = "the config file's directory" if base is not None else "the current directory"
        raise Invalid(f"{what}: {key} file {file} does not exist (a relative path is relative to {where})") from None
    except SecurityError as exc:
        raise Invalid(f"{what}: {key} file {file} {exc.message}") from None


def _check_security_object(kind: str, definition: dict[str, Any]) -> None:
    """Parse an identity or binding as the node will (without the date checks it makes at creation)."""
    from ..core.identities import Binding, Identity
    from ..errors import BrokerError

    try:
        (Identity if kind == "identity" else Binding).from_def(definition)
    except BrokerError as exc:
        raise Invalid(exc.message) from None


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
