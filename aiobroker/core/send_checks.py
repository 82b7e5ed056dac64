"""The checks a send must pass before anything of it is sent, and the words of its refusals: pure functions of
the batch, the catalog and the memory budget, kept out of :mod:`aiobroker.core.delivery` so that the part reads as
the path a batch takes.

Each either returns what the hot path needs (the batch's types and bytes) or raises the error a client gets, saying
what was wrong and what to do.
"""

from __future__ import annotations

from typing import Any, NoReturn

from ..errors import ContractViolation, InvalidArgument, MessageTooLarge, Overloaded, QueueFull, UnknownObject
from ..tracecontext import check_trace
from .budget import Budget
from .catalog import SYSTEM_MESSAGE_TYPES, Catalog, QueueDef
from .conversation import Endpoint


def check_sizes(messages: list[Any], limit: int) -> None:
    """Refuse the batch if one body is over ``limit`` (called only when the batch's total is: it may be one)."""
    for m in messages:
        if len(m[1]) > limit:
            raise MessageTooLarge(
                f"message body of {len(m[1])} bytes is over the node's max_message_size of {limit} bytes"
            )


def check_traced(messages: list[Any], limit: int) -> tuple[set[str], int]:
    """The checks of a send for a batch where some messages carry trace context as a third element
    (``aiobroker/tracecontext.py``); such a batch is made all triples in place (None where a message has none), so
    the row builders and the shell tell it by its first message. Returns the message types and the bodies' bytes."""
    types: set[str] = set()
    size = 0
    for i, m in enumerate(messages):
        if type(m) is not list or not 2 <= len(m) <= 3 or type(m[0]) is not str or type(m[1]) is not bytes:
            raise InvalidArgument(
                "each message is a [message_type, body] pair with a bytes body, or a"
                " [message_type, body, trace_context] triple"
            )
        if len(m[1]) > limit:
            raise MessageTooLarge(
                f"message body of {len(m[1])} bytes is over the node's max_message_size of {limit} bytes"
            )
        if len(m) == 3 and m[2] is not None:
            check_trace(m[2])
        else:
            messages[i] = [m[0], m[1], None]
        types.add(m[0])
        size += len(m[1])
    return types, size


def refuse_overloaded(budget: Budget) -> NoReturn:
    """The node holds more than its memory budget: no send until receivers have taken messages."""
    budget.refused += 1
    raise Overloaded(
        f"nothing was sent: {budget.words()}; it accepts sends again once receivers have taken messages"
        f" (below {budget.low} bytes): receive from the queues that hold them, or raise max_memory"
    )


def check_queue_bounds(budget: Budget, queue: QueueDef, count: int, size: int) -> None:
    """A send of ``count`` messages (``size`` body bytes) to a queue with bounds: refused, whole, if it would take
    the queue past either (the policy "refuse new")."""
    held, held_bytes = budget.in_queue(queue.name)
    if queue.max_messages is not None and held + count > queue.max_messages:
        raise QueueFull(
            f"queue {queue.name!r} is full: it holds {held} message(s) and its max_messages is"
            f" {queue.max_messages}; nothing was sent. Receive from it, or raise the bound with:"
            f" aiobroker alter queue {queue.name} --max-messages N"
        )
    if queue.max_bytes is not None and held_bytes + size > queue.max_bytes:
        raise QueueFull(
            f"queue {queue.name!r} is full: it holds {held_bytes} bytes of message bodies and its max_bytes is"
            f" {queue.max_bytes}; nothing was sent. Receive from it, or raise the bound with:"
            f" aiobroker alter queue {queue.name} --max-bytes N"
        )


def refuse_type(catalog: Catalog, ep: Endpoint, message_type: Any) -> NoReturn:
    """``ep`` may not send ``message_type``: say why (a system type, no such type, or the contract)."""
    if message_type in SYSTEM_MESSAGE_TYPES:
        raise InvalidArgument(
            f"{message_type!r} is a system message type: end() sends EndDialog and Error,"
            " begin_timer() makes DialogTimer"
        )
    if message_type not in catalog.message_types:
        raise UnknownObject(f"message type {message_type!r} does not exist")
    side = "initiator" if ep.is_initiator else "target"
    raise ContractViolation(f"contract {ep.contract!r} does not let the {side} send message type {message_type!r}")
