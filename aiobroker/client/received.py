"""What a receive hands out: :class:`Message`, a light view over one row of the node's reply, and
:class:`ReceivedMessages`, the lazy sequence of a batch's messages (``ReceivedBatch.messages``).

A receive reply carries the node's stored rows as they are (``[id, location, handle, seq, type, body,
enqueued_at, state(, trace)]``, aiobroker/core/records.py) and the facts of each conversation once. Building an
object with eight fields for each of a thousand messages cost the consumer more than decoding them (and, kept
alive together, set off the garbage collector); so the rows are kept as decoded, and a message is a two-slot view
made when it is asked for (by iteration or index), whose attributes read the row. A view holds its row and the
batch's shared facts, not the batch: it stays valid after commit, rollback, or the batch being dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

from ..core.catalog import DIALOG_TIMER, END_DIALOG, ERROR
from ..core.dialog_errors import parse_error_body
from ..core.records import (
    ROW_BODY,
    ROW_ENQUEUED_AT,
    ROW_HANDLE,
    ROW_ID,
    ROW_SEQ,
    ROW_TRACE,
    ROW_TYPE,
    MessageRow,
    message_row,
)
from ..tracecontext import TRACEPARENT_LENGTH, split_trace

#: the facts of a conversation that ended while its batch was on its way (the node had none to send)
UNKNOWN_CONVERSATION: tuple[str, str, str, str, bool, str] = ("", "", "", "", False, "")


class BatchFacts:
    """What the messages of one receive share: the queue, each conversation's facts, and whether rows may carry
    trace context (the node says so: a ninth field is looked for only then)."""

    __slots__ = ("queue", "conversations", "traced")

    def __init__(self, queue: str, conversations: Mapping[str, Sequence[Any]], traced: bool) -> None:
        self.queue = queue
        #: handle -> [service, far_service, contract, group_id, is_initiator, conversation_id]
        self.conversations = conversations
        self.traced = traced


class Message:
    """A received message and the facts of its conversation.

    A view over its row of the receive reply (see the module's docstring): reading an attribute reads the row, so
    its attributes are read-only. Two views of the same received message are equal; a message received again
    (after a rollback) is a new one. ``Message(...)`` with the fields builds one by hand (for tests and fakes).
    """

    __slots__ = ("_row", "_batch")

    _row: MessageRow  # as the node stored it; a list once decoded, with the same fields
    _batch: BatchFacts

    def __init__(
        self,
        queue: str,
        message_id: int,
        conversation_handle: str,
        sequence_number: int,
        message_type: str,
        body: bytes,
        enqueued_at: float,
        conversation: Sequence[Any],
        trace: str | None = None,
    ) -> None:
        self._row = message_row(message_id, f"q:{queue}", conversation_handle, sequence_number, message_type, body,
                                enqueued_at, 0, trace)
        self._batch = BatchFacts(queue, {conversation_handle: conversation}, trace is not None)

    @property
    def queue(self) -> str:
        return self._batch.queue

    @property
    def message_id(self) -> int:
        """Unique on its node; increases in arrival order."""
        return self._row[ROW_ID]

    @property
    def conversation_handle(self) -> str:
        return self._row[ROW_HANDLE]

    @property
    def sequence_number(self) -> int:
        """In order per conversation and direction; -1 for messages the broker makes locally (DialogTimer, a
        lifetime Error)."""
        return self._row[ROW_SEQ]

    @property
    def message_type(self) -> str:
        return self._row[ROW_TYPE]

    @property
    def body(self) -> bytes:
        return self._row[ROW_BODY]

    @property
    def enqueued_at(self) -> float:
        return self._row[ROW_ENQUEUED_AT]

    @property
    def trace(self) -> str | None:
        """The W3C trace context the sender gave, in its carried form (see :attr:`traceparent`), or None."""
        row = self._row
        return row[ROW_TRACE] if self._batch.traced and len(row) > ROW_TRACE else None

    @property
    def _conversation(self) -> Sequence[Any]:
        return self._batch.conversations.get(self._row[ROW_HANDLE], UNKNOWN_CONVERSATION)

    service_name = property(lambda self: self._conversation[0], doc="the local service (whose queue it is)")
    far_service_name = property(lambda self: self._conversation[1], doc="the service at the other end")
    contract = property(lambda self: self._conversation[2], doc="the conversation's contract")
    conversation_group_id = property(lambda self: self._conversation[3], doc="the group this side's conversation is in")
    is_initiator = property(lambda self: self._conversation[4], doc="whether this side began the conversation")
    conversation_id = property(lambda self: self._conversation[5], doc="the same on both sides")

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` the message was sent with, as sent (None: it carries no trace context)."""
        trace = self.trace
        return trace[:TRACEPARENT_LENGTH] if trace is not None else None

    @property
    def tracestate(self) -> str | None:
        """The W3C ``tracestate`` the message was sent with, if any."""
        return split_trace(self.trace)[1]

    @property
    def is_end_dialog(self) -> bool:
        """The far side ended the conversation (EndDialog)."""
        return self._row[ROW_TYPE] == END_DIALOG

    @property
    def is_error(self) -> bool:
        """An Error message (see :attr:`error`)."""
        return self._row[ROW_TYPE] == ERROR

    @property
    def is_timer(self) -> bool:
        """A DialogTimer message (a timer set with ``begin_timer`` ran out)."""
        return self._row[ROW_TYPE] == DIALOG_TIMER

    @property
    def error(self) -> tuple[int, str] | None:
        """(code, description) of an Error message (codes < 0 are the broker's), else None."""
        return parse_error_body(self._row[ROW_BODY]) if self._row[ROW_TYPE] == ERROR else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._row is other._row

    def __hash__(self) -> int:
        return id(self._row)

    def __repr__(self) -> str:
        return (
            f"<Message {self.message_type!r} seq={self.sequence_number} conversation={self.conversation_handle}"
            f" {len(self.body)} bytes>"
        )


_new = object.__new__


def message_view(row: MessageRow, batch: BatchFacts) -> Message:
    """The view of one row (what iteration does, inline)."""
    m: Message = _new(Message)
    m._row = row
    m._batch = batch
    return m


class ReceivedMessages(Sequence[Message]):
    """The messages of a received batch, in order, made as they are asked for: iterate it (each pass makes new
    views, equal to the last pass's), index or slice it (a slice is a list), take its ``len``. Compares equal to
    a list or tuple of the same messages."""

    __slots__ = ("_rows", "_batch")

    def __init__(self, rows: Sequence[MessageRow], batch: BatchFacts) -> None:
        self._rows = rows
        self._batch = batch

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> list[Message]: ...

    def __getitem__(self, index: int | slice) -> Message | list[Message]:
        if isinstance(index, slice):
            batch = self._batch
            return [message_view(row, batch) for row in self._rows[index]]
        return message_view(self._rows[index], self._batch)

    def __iter__(self) -> Iterator[Message]:
        # the hot path of a consumer: one two-slot object a message, nothing else, and none kept
        batch = self._batch
        new = _new
        for row in self._rows:
            m: Message = new(Message)
            m._row = row
            m._batch = batch
            yield m

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (ReceivedMessages, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a sequence compared by content: not hashable, as a list

    def __repr__(self) -> str:
        return f"<ReceivedMessages {len(self._rows)} of queue {self._batch.queue!r}>"
