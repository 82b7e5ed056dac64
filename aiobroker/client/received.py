"""What a receive hands out: :class:`Message`, a light view over one row of the node's reply, and
:class:`ReceivedMessages`, the lazy sequence of a batch's messages (``ReceivedBatch.messages``).

A receive reply carries the node's stored rows as they are (``[id, location, handle, seq, type, body,
enqueued_at, state(, trace)]``, aiobroker/core/records.py) and the facts of each conversation once. Building a
``Message`` (a Python ``__init__``, a dictionary lookup for its conversation) for each of a thousand messages, all
kept alive together, cost the consumer more than decoding them, and set off the garbage collector. So the rows
are kept as decoded, and a message is a view made when it is asked for (by iteration or index), inline, without
an ``__init__``: the row's plain fields copied into slots (a slot reads faster than a property, and
nearly every consumer reads ``body`` and ``sequence_number``), the rest (conversation facts, trace context, error)
read from the row or the batch's shared facts when asked for. A view is dropped as soon as the consumer moves on,
so a batch leaves no thousand objects for the collector. It holds its row and the batch's facts, not the batch:
it stays valid after commit, rollback, or the batch being dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast, overload

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

#: a conversation's facts as a receive reply carries them (a list once decoded, with these fields): service,
#: far service, contract, group id, is_initiator, conversation id
ConversationFacts = tuple[str, str, str, str, bool, str]
#: the facts of a conversation that ended while its batch was on its way (the node had none to send)
UNKNOWN_CONVERSATION: ConversationFacts = ("", "", "", "", False, "")


class BatchFacts:
    """What the messages of one receive share: the queue, each conversation's facts, and whether rows may carry
    trace context (the node says so: a ninth field is looked for only then).

    The facts come as a map (handle -> facts), or, from a node asked for them compact (docs/protocol.md), as a
    flat list of six items per conversation in the order of its first row: then the map is made from them when a
    message's conversation is first asked for, and never if none is (decoding a map, a list and a handle per
    conversation was most of a consumer's time in a batch of one-message conversations)."""

    __slots__ = ("queue", "_conversations", "traced", "_rows", "_facts")

    def __init__(
        self,
        queue: str,
        conversations: Mapping[str, ConversationFacts] | None,
        traced: bool,
        *,
        rows: Sequence[MessageRow] = (),
        facts: Sequence[Any] = (),
    ) -> None:
        self.queue = queue
        self._conversations = conversations
        self.traced = traced
        self._rows, self._facts = rows, facts

    @property
    def conversations(self) -> Mapping[str, ConversationFacts]:
        """handle -> [service, far_service, contract, group_id, is_initiator, conversation_id]"""
        found = self._conversations
        if found is None:
            found = self._conversations = compact_to_map(self._rows, self._facts)
            self._rows = self._facts = ()
        return found


def compact_to_map(rows: Sequence[MessageRow], facts: Sequence[Any]) -> dict[str, ConversationFacts]:
    """The map of a receive's compact facts: six items per conversation, in the order of its first row (the node's
    ``Status.compact_facts``)."""
    out: dict[str, ConversationFacts] = {}
    i = 0
    for row in rows:
        handle = row[ROW_HANDLE]
        if handle in out:
            continue
        if i + 6 > len(facts):
            break  # fewer facts than conversations: a node's fault; the rest read as unknown
        service, far, contract, group, initiator, conversation_id = facts[i:i + 6]
        i += 6
        out[handle] = (
            UNKNOWN_CONVERSATION
            if service is None
            else (service, far, contract, handle if group is None else group, initiator, conversation_id)
        )
    return out


class Message:
    """A received message and the facts of its conversation.

    A view over its row of the receive reply (see the module's docstring): the row's plain fields are slots,
    filled when the view is made; the conversation's facts, the trace context and the error are read from the row
    or the batch's facts when asked for. Two views of the same received message are equal; a message
    received again (after a rollback) is a new one. ``Message(...)`` with the fields builds one by hand (for tests
    and fakes).
    """

    __slots__ = ("body", "sequence_number", "message_type", "conversation_handle", "message_id", "enqueued_at",
                 "queue", "_facts", "_row", "_batch")

    body: bytes
    #: in order per conversation and direction; -1 for messages the broker makes locally (DialogTimer, a lifetime
    #: Error)
    sequence_number: int
    message_type: str
    conversation_handle: str
    #: unique on its node; increases in arrival order
    message_id: int
    enqueued_at: float
    queue: str
    _facts: ConversationFacts | None  # its conversation's, looked up when first asked for (see _conversation)
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
        conversation: ConversationFacts | Sequence[Any],
        trace: str | None = None,
    ) -> None:
        self._row = message_row(message_id, f"q:{queue}", conversation_handle, sequence_number, message_type, body,
                                enqueued_at, 0, trace)
        facts = cast(ConversationFacts, tuple(conversation))
        self._batch = BatchFacts(queue, {conversation_handle: facts}, trace is not None)
        self._facts = facts
        self.body = body
        self.sequence_number = sequence_number
        self.message_type = message_type
        self.conversation_handle = conversation_handle
        self.message_id = message_id
        self.enqueued_at = enqueued_at
        self.queue = queue

    @property
    def trace(self) -> str | None:
        """The W3C trace context the sender gave, in its carried form (see :attr:`traceparent`), or None."""
        row = self._row
        return row[ROW_TRACE] if self._batch.traced and len(row) > ROW_TRACE else None

    # The conversation's facts, shared by the batch's messages: [service, far_service, contract, group_id,
    # is_initiator, conversation_id]. Looked up on the first read, not as the view is made: the handle is a new
    # string for each row, so the lookup hashes and compares 36 characters, about 0.08 us a message (half again
    # what a consumer that reads only body and sequence number pays, measured).

    def _conversation(self) -> ConversationFacts:
        facts = self._facts = self._batch.conversations.get(self.conversation_handle, UNKNOWN_CONVERSATION)
        return facts

    @property
    def service_name(self) -> str:
        """The local service (whose queue it is)."""
        return (self._facts or self._conversation())[0]

    @property
    def far_service_name(self) -> str:
        """The service at the other end."""
        return (self._facts or self._conversation())[1]

    @property
    def contract(self) -> str:
        """The conversation's contract."""
        return (self._facts or self._conversation())[2]

    @property
    def conversation_group_id(self) -> str:
        """The group this side's conversation is in."""
        return (self._facts or self._conversation())[3]

    @property
    def is_initiator(self) -> bool:
        """Whether this side began the conversation."""
        return (self._facts or self._conversation())[4]

    @property
    def conversation_id(self) -> str:
        """The same on both sides."""
        return (self._facts or self._conversation())[5]

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` the message was sent with, as sent (None: it carries no trace context)."""
        row = self._row
        return row[ROW_TRACE][:TRACEPARENT_LENGTH] if self._batch.traced and len(row) > ROW_TRACE else None

    @property
    def tracestate(self) -> str | None:
        """The W3C ``tracestate`` the message was sent with, if any."""
        row = self._row
        return split_trace(row[ROW_TRACE])[1] if self._batch.traced and len(row) > ROW_TRACE else None

    @property
    def is_end_dialog(self) -> bool:
        """The far side ended the conversation (EndDialog)."""
        return self.message_type == END_DIALOG

    @property
    def is_error(self) -> bool:
        """An Error message (see :attr:`error`)."""
        return self.message_type == ERROR

    @property
    def is_timer(self) -> bool:
        """A DialogTimer message (a timer set with ``begin_timer`` ran out)."""
        return self.message_type == DIALOG_TIMER

    @property
    def error(self) -> tuple[int, str] | None:
        """(code, description) of an Error message (codes < 0 are the broker's), else None."""
        return parse_error_body(self.body) if self.message_type == ERROR else None

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
    m.body = row[ROW_BODY]
    m.sequence_number = row[ROW_SEQ]
    m.message_type = row[ROW_TYPE]
    m.conversation_handle = row[ROW_HANDLE]
    m.message_id = row[ROW_ID]
    m.enqueued_at = row[ROW_ENQUEUED_AT]
    m.queue = batch.queue
    m._facts = None
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
        # the hot path of a consumer: one object a message, nothing else, and none kept (message_view, inline)
        batch = self._batch
        queue = batch.queue
        new = _new
        for row in self._rows:
            m: Message = new(Message)
            m._row = row
            m._batch = batch
            m.body = row[ROW_BODY]
            m.sequence_number = row[ROW_SEQ]
            m.message_type = row[ROW_TYPE]
            m.conversation_handle = row[ROW_HANDLE]
            m.message_id = row[ROW_ID]
            m.enqueued_at = row[ROW_ENQUEUED_AT]
            m.queue = queue
            m._facts = None
            yield m

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (ReceivedMessages, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a sequence compared by content: not hashable, as a list

    def __repr__(self) -> str:
        return f"<ReceivedMessages {len(self._rows)} of queue {self._batch.queue!r}>"
