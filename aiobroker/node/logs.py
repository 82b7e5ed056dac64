"""The node's log lines as JSON, one object a line: what ``aiobroker serve --log-format json`` writes to stderr.

The node logs through the standard library's :mod:`logging`, in words. A line about a service, a queue, a peer or
a resolver also carries the thing it names as a field: the call passes ``extra={"service": name}`` and its words
stay what they were, so the text format (the default) is unchanged and a JSON line says the same thing. Only the
keys in :data:`FIELDS` become fields (a record has many other attributes, none of them for the reader).

:class:`JsonFormatter` writes ``time`` (RFC 3339 in UTC, milliseconds), ``level``, ``logger``, ``message``, the
fields a line has, ``exception`` (the traceback) when there is one, and ``stack`` when a call asks for one. It
never fails on a value: what JSON cannot hold is written as its ``repr``. :class:`NodeName` puts the node's broker
instance on every line, from the moment the node has read it from its store. The standard library is enough for
this (a formatter and a filter), so no logging package is added.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["FIELDS", "JsonFormatter", "NodeName", "object_fields"]

#: The ``extra`` keys a log call may pass, each a string: ``node`` (this node's broker instance), ``conversation``
#: (a conversation handle), ``service``, ``queue``, ``peer`` (the address at the other end of a connection or link:
#: a client's or peer node's ``host:port``, or a link's ``tcp://host:port``), ``peer_instance`` (the far node's
#: broker instance) and ``resolver`` (the resolver's name).
FIELDS: Final = ("node", "conversation", "service", "queue", "peer", "peer_instance", "resolver")


def object_fields(kind: str, name: str) -> dict[str, str] | None:
    """The fields of a line about a catalog object: a queue or a service is one (``{"queue": name}``)."""
    return {kind: name} if kind in ("queue", "service") else None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _message(record),
        }
        fields = record.__dict__
        for key in FIELDS:
            value = fields.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        try:
            return json.dumps(line, allow_nan=False, default=_repr)
        except Exception:  # noqa: BLE001 - a value JSON cannot hold (a NaN, a dict with tuple keys): its repr
            return json.dumps({key: _plain(value) for key, value in line.items()})


class NodeName(logging.Filter):
    """Names the node on each record that names none: ``instance()`` is its broker instance, or None before the
    node knows it (it is in the store). Put on the handler, so it sees every logger's records."""

    def __init__(self, instance: Callable[[], str | None] = lambda: None) -> None:
        super().__init__()
        self.instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get("node") is None:
            record.__dict__["node"] = self.instance()
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # noqa: BLE001 - a log call whose arguments do not fit its words still gives a line
        return f"{_repr(record.msg)} {_repr(record.args)}"


def _plain(value: Any) -> Any:
    """``value`` if JSON can hold it as it is, else its repr."""
    try:
        json.dumps(value, allow_nan=False)
    except Exception:  # noqa: BLE001
        return _repr(value)
    return value


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__
        return f"<{type(value).__name__} that cannot be shown>"
