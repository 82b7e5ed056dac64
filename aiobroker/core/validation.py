"""Message body validation: ``none``, ``empty``, ``msgpack``, ``json``, ``xml``.

Each validator returns ``None`` for a good body or a short reason naming the rule that failed. XML is checked for
well-formedness with expat and refuses any document type declaration, so no entity can be declared, let alone
expanded (the "billion laughs" and external-entity attacks need a DTD); this is the same guard defusedxml applies,
without the dependency.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from xml.parsers import expat

from ..errors import ProtocolError
from ..wire.codec import unpackb

Validator = Callable[[bytes], "str | None"]


def _none(body: bytes) -> str | None:
    return None


def _empty(body: bytes) -> str | None:
    return None if not body else f"validation 'empty' requires an empty body, got {len(body)} bytes"


def _msgpack(body: bytes) -> str | None:
    try:
        unpackb(body, max_size=max(len(body), 1))
    except ProtocolError as exc:
        return f"validation 'msgpack' failed: {exc}"
    return None


def _json(body: bytes) -> str | None:
    try:
        json.loads(body)
    except (ValueError, RecursionError) as exc:
        return f"validation 'json' failed: {exc}"
    return None


class _NoDTD(Exception):
    pass


def _refuse_dtd(*args: object) -> None:
    raise _NoDTD()


def _xml(body: bytes) -> str | None:
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    try:
        parser.Parse(body, True)
    except _NoDTD:
        return "validation 'xml' failed: document type declarations (DTDs) are not allowed"
    except expat.ExpatError as exc:
        return f"validation 'xml' failed: not well-formed ({exc})"
    return None


VALIDATORS: dict[str, Validator] = {
    "none": _none,
    "empty": _empty,
    "msgpack": _msgpack,
    "json": _json,
    "xml": _xml,
}
