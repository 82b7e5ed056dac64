"""The frames of the aiobroker protocol, as frozen classes checked when built.

Every frame body is a msgpack array whose first element is an opcode:

=========  =============================================================  =========================================
opcode     array                                                          meaning
=========  =============================================================  =========================================
1 HELLO    ``[1, "aiobroker", version, role, info]``                       first frame from the side that connects
2 WELCOME  ``[2, version, broker_instance, info]``                         the listener accepts
3 REFUSED  ``[3, code, message]`` or ``[3, code, message, info]``         the listener refuses, then closes
10 REQUEST ``[10, request_id, op, args]``                                  a client asks (``args`` is a map)
11 REPLY   ``[11, request_id, result]``                                    the request succeeded
12 FAILED  ``[12, request_id, code, message]``                             the request failed; ``code`` is an
                                                                           :mod:`aiobroker.errors` code
20 ENVEL.  ``[20, messages, acks]``                                        between nodes, either way
=========  =============================================================  =========================================

``role`` is ``"client"`` or ``"peer"`` (a node linking to another, see federation). A request's operations and
their arguments are listed in :mod:`aiobroker.protocol`. Many frames travel in one write; one REQUEST may carry
many messages (``send`` takes a list).
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import ProtocolError

MAGIC = "aiobroker"
PROTOCOL_VERSION = 1
ROLES = ("client", "peer")

HELLO, WELCOME, REFUSED, REQUEST, REPLY, FAILED, ENVELOPES = 1, 2, 3, 10, 11, 12, 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    version: int = PROTOCOL_VERSION
    role: str = "client"
    info: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        return [HELLO, MAGIC, self.version, self.role, self.info]


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    version: int
    broker_instance: str
    info: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        return [WELCOME, self.version, self.broker_instance, self.info]


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    code: str
    message: str
    #: facts a program acts on (a standby's ``owner`` and ``since``); sent only when there are any
    info: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        if self.info:
            return [REFUSED, self.code, self.message, self.info]
        return [REFUSED, self.code, self.message]


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    request_id: int
    op: str
    args: dict[str, Any]

    def to_wire(self) -> list[Any]:
        return [REQUEST, self.request_id, self.op, self.args]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    request_id: int
    result: Any

    def to_wire(self) -> list[Any]:
        return [REPLY, self.request_id, self.result]


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    request_id: int
    code: str
    message: str

    def to_wire(self) -> list[Any]:
        return [FAILED, self.request_id, self.code, self.message]


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelopes:
    """Between nodes: messages and acknowledgements (their shapes: ``aiobroker/core/envelopes.py``)."""

    messages: list[Any]
    acks: list[Any]

    def to_wire(self) -> list[Any]:
        return [ENVELOPES, self.messages, self.acks]


Frame = Hello | Welcome | Refused | Request | Reply | Failed | Envelopes


# The frames the hot path sends, as plain lists: one per request or per batch of envelopes, thousands a second, so
# no object is built to be turned into a list at once. Each is exactly its class's ``to_wire()``.


def request_wire(request_id: int, op: str, args: dict[str, Any]) -> list[Any]:
    """``Request(...).to_wire()``, without the object."""
    return [REQUEST, request_id, op, args]


def reply_wire(request_id: int, result: Any) -> list[Any]:
    """``Reply(...).to_wire()``, without the object."""
    return [REPLY, request_id, result]


def envelopes_wire(messages: list[Any], acks: list[Any]) -> list[Any]:
    """``Envelopes(...).to_wire()``, without the object."""
    return [ENVELOPES, messages, acks]


def _need(cond: bool, what: str, obj: Any) -> None:
    if not cond:
        shown = reprlib.repr(obj)  # bounded: a frame may nest ~1000 deep (repr would overflow) or be huge
        if len(shown) > 120:
            shown = shown[:117] + "..."
        raise ProtocolError(f"malformed frame: {what} (got {shown})")


def parse_frame(obj: Any) -> Frame:
    """Check a decoded msgpack object's shape and build its frame; anything else is a :class:`ProtocolError`."""
    _need(isinstance(obj, list) and len(obj) >= 1 and type(obj[0]) is int, "expected [opcode, ...]", obj)
    op = obj[0]
    n = len(obj)
    if op == REQUEST:
        shape = "REQUEST is [10, request_id (int), op (str), args (map)]"
        _need(n == 4, shape, obj)
        _need(type(obj[1]) is int and isinstance(obj[2], str) and isinstance(obj[3], dict), shape, obj)
        return Request(request_id=obj[1], op=obj[2], args=obj[3])
    if op == REPLY:
        _need(n == 3 and type(obj[1]) is int, "REPLY is [11, request_id (int), result]", obj)
        return Reply(request_id=obj[1], result=obj[2])
    if op == FAILED:
        shape = "FAILED is [12, request_id (int), code (str), message (str)]"
        _need(n == 4 and type(obj[1]) is int, shape, obj)
        _need(isinstance(obj[2], str) and isinstance(obj[3], str), shape, obj)
        return Failed(request_id=obj[1], code=obj[2], message=obj[3])
    if op == HELLO:
        shape = "HELLO is [1, 'aiobroker', version (int), role ('client' or 'peer'), info (map)]"
        _need(n == 5 and obj[1] == MAGIC, shape, obj)
        _need(type(obj[2]) is int and obj[3] in ROLES and isinstance(obj[4], dict), shape, obj)
        return Hello(version=obj[2], role=obj[3], info=obj[4])
    if op == WELCOME:
        shape = "WELCOME is [2, version (int), broker_instance (str), info (map)]"
        _need(n == 4 and type(obj[1]) is int and isinstance(obj[2], str), shape, obj)
        _need(isinstance(obj[3], dict), shape, obj)
        return Welcome(version=obj[1], broker_instance=obj[2], info=obj[3])
    if op == REFUSED:
        shape = "REFUSED is [3, code (str), message (str)] or [3, code, message, info (map)]"
        _need(n in (3, 4) and isinstance(obj[1], str) and isinstance(obj[2], str), shape, obj)
        _need(n == 3 or isinstance(obj[3], dict), shape, obj)
        return Refused(code=obj[1], message=obj[2], info=obj[3] if n == 4 else {})
    if op == ENVELOPES:
        shape = "ENVELOPES is [20, messages (array), acks (array)]"
        _need(n == 3 and isinstance(obj[1], list) and isinstance(obj[2], list), shape, obj)
        return Envelopes(messages=obj[1], acks=obj[2])
    raise ProtocolError(f"malformed frame: unknown opcode {op} (expected one of 1, 2, 3, 10, 11, 12, 20)")
