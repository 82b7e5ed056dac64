"""The transmission queue: outgoing messages kept until the far node has stored them and acknowledged.

Theory of operation
-------------------
Every message for a service on another node, and every message DELAYED for want of a route, waits here as a
stored row (location ``"tx"``), per sending endpoint, in sequence order, until the far node acknowledges it.

A conversation with a route is attached to a **link**: the address of the next node. A link sends what it has not
sent in its current connection (its *epoch*), in order, many messages per frame; when a connection is lost or an
acknowledgement does not come in time, the link starts a new epoch and everything unacknowledged goes again. The
receiver drops duplicates and acknowledges cumulatively ("I have stored every message before ``next_seq``"), so a
resend never delivers twice.

Each entry's state is shown in words: not yet sent, delayed and why, sent and waiting for an acknowledgement,
retrying after an error (which, attempt, and when next).

This module holds the state and its bookkeeping only; the core decides routes, the shell runs the connections.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, cast

from .records import ROW_BODY, ROW_HANDLE, ROW_ID, ROW_SEQ, MessageRow

#: Bytes an envelope takes on the wire besides its body, at most: four names of up to 256 bytes (the two services,
#: the contract, the message type), the conversation id and two broker instances, the numbers, a sealed body's nonce
#: and tag, and on the first message of a secured conversation its key header: the wrapped key, the initiator's
#: certificate and its signature (measured: 3,693 bytes with RSA 4096 keys, a 1,451-byte certificate and every name
#: at 256 bytes), with room for a trace context of at most 312 characters (``tracecontext.py``, 4,009 bytes in
#: all). Used to keep a link's frames within the frame size, and by the config's limits.
ENVELOPE_OVERHEAD = 4096

#: First retry after a connection error, then doubling up to the cap (SEMANTICS.md: "first retry within a few
#: seconds, doubling, capped near a minute").
RETRY_FIRST = 1.0
RETRY_CAP = 60.0


class Link:
    """Messages bound for one next-hop address."""

    __slots__ = (
        "address",
        "handles",
        "unsent",
        "sent",
        "epoch",
        "connected",
        "peer_instance",
        "last_error",
        "attempts",
        "next_attempt",
        "waiting_since",
        "idle",
    )

    def __init__(self, address: str) -> None:
        self.address = address
        #: sending endpoints routed here (an ordered set)
        self.handles: dict[str, None] = {}
        #: those of them that may have rows not yet sent in this epoch (an ordered set): what ``take_unsent`` walks,
        #: so that a take costs what it takes, not a walk over every conversation on the link (100,000 after a
        #: resolution storm, most of them sent long ago and waiting for their acknowledgement). An OrderedDict: a
        #: take removes handles from its front, and a dict's iteration walks the slots of keys removed from its
        #: front again on every take (quadratic in a storm's release); an OrderedDict's does not.
        self.unsent: OrderedDict[str, None] = OrderedDict()
        #: handle → how many of its rows (from the front) were sent in this epoch; only handles with rows in flight
        self.sent: dict[str, int] = {}
        self.epoch = 0
        self.connected = False
        self.peer_instance: str | None = None
        self.last_error: str | None = None
        self.attempts = 0
        self.next_attempt: float | None = None
        #: when the oldest unacknowledged send of this epoch went out (for the acknowledgement time-out)
        self.waiting_since: float | None = None
        #: the far node closed the connection for being idle (no failure: it connects again when there is work)
        self.idle = False

    def new_epoch(self) -> None:
        """Forget what was sent: after a reconnect or a time-out everything unacknowledged goes again."""
        self.epoch += 1
        self.sent.clear()
        self.unsent = OrderedDict.fromkeys(self.handles)  # everything unacknowledged goes again, in the link's order
        self.waiting_since = None

    def failed(self, error: str, now: float) -> float:
        """A connection attempt or a connection failed; returns when to try again (doubling back-off)."""
        self.connected = False
        self.last_error = error
        self.attempts += 1
        delay = min(RETRY_CAP, RETRY_FIRST * 2 ** (self.attempts - 1))
        self.next_attempt = now + delay
        self.idle = False
        self.new_epoch()
        return self.next_attempt

    def went_idle(self) -> None:
        """The far node closed the connection for being idle: no failure, no back-off; anything still
        unacknowledged (nothing, normally) goes again on the next connection."""
        self.connected = False
        self.idle = True
        self.new_epoch()

    def up(self, peer_instance: str | None) -> None:
        self.connected = True
        self.peer_instance = peer_instance
        self.attempts = 0
        self.next_attempt = None
        self.idle = False
        self.new_epoch()

    def describe(self, tx: TransmissionQueue) -> dict[str, Any]:
        count = tx.count
        unacked = sum(count(h) for h in self.handles)
        sent = sum(self.sent.values())
        if self.connected:
            state = f"connected to {self.peer_instance or '?'}"
        elif self.idle:
            state = "idle: the far node closed the quiet connection; connects again when there is something to send"
        elif self.last_error:
            state = f"retrying: {self.last_error} (attempt {self.attempts})"
        else:
            state = "not yet tried"
        return {
            "address": self.address,
            "state": state,
            "conversations": len(self.handles),
            "unacknowledged": unacked,
            "sent_this_connection": sent,
            "last_error": self.last_error,
            "next_attempt": self.next_attempt,
        }


class TransmissionQueue:
    """Unacknowledged outgoing messages per sending endpoint, and the links they are routed to."""

    def __init__(self) -> None:
        #: sending endpoint → its unacknowledged messages, in sequence order: a list of rows, or the row itself
        #: when there is one (a DELAYED storm holds 100,000 conversations of one message each, and a list for
        #: each cost 93 bytes more); read them with :meth:`rows_of` and :meth:`count`. A list, not a deque: a deque
        #: costs ~600 bytes even for one row; acknowledgements remove a prefix in one slice.
        self.rows: dict[str, list[MessageRow] | MessageRow] = {}
        #: how many rows ``rows`` holds in all, kept as they come and go (``status`` reads it: no walk)
        self.message_count = 0
        #: far service name → sending endpoints DELAYED for want of a route (an ordered set). An endpoint waits on
        #: its own far service, which every call that may concern a DELAYED endpoint names (``far_service``): no
        #: index from endpoint to service, which cost ~45 bytes of each of 100,000 DELAYED conversations
        self.delayed: dict[str, dict[str, None]] = {}
        #: the DELAYED messages per service and in all (bounds)
        self.delayed_count: dict[str, int] = {}
        self.delayed_total = 0
        self.links: dict[str, Link] = {}
        #: sending endpoint → the link address it is routed to
        self.route_of: dict[str, str] = {}
        #: links with something new to send (the shell drains this after each call into the core)
        self.ready_links: set[str] = set()
        # A DELAYED conversation's bodies may wait in the store only (``tx_bodies.py``; stores that page): these
        # three ordered sets say where each such conversation is in that cycle, so that a pass costs what changed.
        #: whether bodies may be left in the store (a store that pages): only then is ``to_strip`` kept
        self.strips = False
        #: DELAYED conversations whose rows may still hold bodies to leave in the store
        self.to_strip: dict[str, None] = {}
        #: conversations with rows whose bodies are in the store only (``records.InStore``)
        self.stripped: dict[str, None] = {}
        #: of those, the ones routed and waiting for their bodies to be read back before they move: the link
        #: address they go to then (None: routing decides again, as for a far side on this node)
        self.reading: dict[str, str | None] = {}

    def __contains__(self, handle: str) -> bool:
        return handle in self.rows

    def rows_of(self, handle: str) -> list[MessageRow]:
        """An endpoint's unacknowledged rows, in order (a new list when it holds one row; [] when none)."""
        held = self.rows.get(handle)
        if held is None:
            return []
        return held if isinstance(held, list) else [held]

    def count(self, handle: str) -> int:
        """How many unacknowledged rows an endpoint has."""
        held = self.rows.get(handle)
        if held is None:
            return 0
        return len(held) if isinstance(held, list) else 1

    def load(self, row: MessageRow) -> None:
        """A stored row read back at start (routes and delays are decided afterwards, for all at once)."""
        if not isinstance(row, tuple):  # a lone row is told from a list of rows by its type
            row = cast(MessageRow, tuple(row))
        self._put(row[ROW_HANDLE], [row])
        self.message_count += 1

    def _put(self, handle: str, rows: list[MessageRow]) -> None:
        """Append rows (at least one) to an endpoint's, keeping a lone row without a list."""
        held = self.rows.get(handle)
        if held is None:
            self.rows[handle] = rows[0] if len(rows) == 1 else list(rows)
        elif isinstance(held, list):
            held.extend(rows)
        else:
            self.rows[handle] = [held, *rows]

    def is_delayed(self, handle: str, far_service: str) -> bool:
        waiting = self.delayed.get(far_service)
        return waiting is not None and handle in waiting

    def add_many(self, handle: str, rows: list[MessageRow], far_service: str) -> None:
        self._put(handle, rows)
        self.message_count += len(rows)
        address = self.route_of.get(handle)
        if address is not None:
            self.links[address].unsent[handle] = None
            self.ready_links.add(address)
        elif self.is_delayed(handle, far_service):
            self._count(far_service, len(rows))
            if self.strips:
                self.to_strip[handle] = None

    def _count(self, service: str, n: int) -> None:
        left = self.delayed_count.get(service, 0) + n
        if left:
            self.delayed_count[service] = left
        else:
            self.delayed_count.pop(service, None)
        self.delayed_total += n

    def delay(self, handle: str, far_service: str) -> None:
        self.detach(handle)
        waiting = self.delayed.setdefault(far_service, {})
        if handle not in waiting:
            waiting[handle] = None
            self._count(far_service, self.count(handle))
            if self.strips and handle in self.rows:
                self.to_strip[handle] = None

    def undelay(self, handle: str, far_service: str) -> None:
        waiting = self.delayed.get(far_service)
        if waiting is None or handle not in waiting:
            return
        del waiting[handle]
        if not waiting:
            del self.delayed[far_service]
        # the count, inline (a release undelays 100,000 conversations): what ``_count(far_service, -n)`` does
        held = self.rows.get(handle)
        n = 0 if held is None else len(held) if type(held) is list else 1
        if n:
            left = self.delayed_count.get(far_service, 0) - n
            if left:
                self.delayed_count[far_service] = left
            else:
                self.delayed_count.pop(far_service, None)
            self.delayed_total -= n
        if self.to_strip:  # only on a store that pages (``strips``)
            self.to_strip.pop(handle, None)

    def undelay_all(self, far_service: str) -> list[str]:
        """Take every conversation DELAYED on ``far_service`` out of DELAYED at once, in order (a resolver's answer
        routes them all again): :meth:`undelay` for each, with the counts taken down by the service's whole count."""
        waiting = self.delayed.pop(far_service, None)
        if waiting is None:
            return []
        self.delayed_total -= self.delayed_count.pop(far_service, 0)
        if self.to_strip:  # only on a store that pages (``strips``)
            pop = self.to_strip.pop
            for handle in waiting:
                pop(handle, None)
        return list(waiting)

    def attach(self, handle: str, address: str, far_service: str) -> Link:
        """Route a sending endpoint to a link (made on first use)."""
        waiting = self.delayed.get(far_service)
        if waiting is not None and handle in waiting:
            self.undelay(handle, far_service)
        route_of = self.route_of
        current = route_of.get(handle)
        if current != address:
            if current is not None:
                self.detach(handle)
            route_of[handle] = address
        link = self.links.get(address)
        if link is None:
            link = self.links[address] = Link(address)
        link.handles[handle] = None
        if handle in self.rows:
            link.unsent[handle] = None
            self.ready_links.add(address)
        return link

    def attach_many(self, address: str, handles: list[str]) -> None:
        """Route to one link conversations with rows that are neither DELAYED nor on a link, in bulk (a resolution
        storm's release attaches 100,000): those a reroute routed there (``Outbound.reroute``), those whose bodies
        were just read back (``tx_bodies.py``)."""
        if not handles:
            return
        link = self.links.get(address)
        if link is None:
            link = self.links[address] = Link(address)
        added = dict.fromkeys(handles)
        self.route_of.update(dict.fromkeys(handles, address))
        link.handles.update(added)
        link.unsent.update(added)
        self.ready_links.add(address)

    def detach(self, handle: str) -> None:
        address = self.route_of.pop(handle, None)
        if address is not None:
            link = self.links.get(address)
            if link is not None:
                link.handles.pop(handle, None)
                link.unsent.pop(handle, None)
                link.sent.pop(handle, None)

    def on_links(self) -> list[str]:
        """The sending endpoints on a link with messages not yet acknowledged, found from what each link has in
        flight or still to send (``sent``, ``unsent``): in proportion to the messages moving, not to every
        conversation that ever used a link."""
        rows = self.rows
        found: dict[str, None] = {}
        for link in self.links.values():
            for group in (link.sent, link.unsent):
                for handle in group:
                    if handle in rows:
                        found[handle] = None
        return list(found)

    def drop(self, handle: str, far_service: str) -> list[MessageRow]:
        """Forget an endpoint's messages (its conversation ended with an error, or its lifetime ran out)."""
        self.detach(handle)
        self.undelay(handle, far_service)
        self.stripped.pop(handle, None)
        self.reading.pop(handle, None)
        held = self.rows.pop(handle, None)
        dropped = [] if held is None else held if isinstance(held, list) else [held]
        self.message_count -= len(dropped)
        return dropped

    def take_unsent(
        self, address: str, max_messages: int, durable_upto: int, max_bytes: int
    ) -> list[tuple[str, MessageRow]]:
        """Up to ``max_messages`` rows of a link not yet sent in its epoch, in order per endpoint; marks them sent.

        Only rows with ids up to ``durable_upto`` go: a message leaves for a peer only once it is stored here, so
        a crash can never take back a sequence number a peer has already seen. The rows fit in ``max_bytes`` as
        envelopes (body + :data:`ENVELOPE_OVERHEAD` each), so that the frame carrying them is within the far
        node's frame size; one row always goes, since a message never exceeds a frame."""
        link = self.links.get(address)
        if link is None:
            return []
        out: list[tuple[str, MessageRow]] = []
        size = 0
        full = False
        done: list[str] = []  # all their rows sent: out of ``unsent`` (until new rows or a new epoch)
        all_rows = self.rows
        sent = link.sent
        for handle in link.unsent:
            held = all_rows.get(handle)
            if held is None:
                done.append(handle)
                continue
            if not isinstance(held, list):
                # A lone row (a storm's conversations hold one each): what the loop below does for a list of one
                # row, without making the list.
                if handle in sent:  # in flight already
                    done.append(handle)
                    continue
                if held[ROW_ID] > durable_upto:
                    self.ready_links.add(address)  # not yet stored: the write that stores it wakes this link again
                    continue
                size += len(held[ROW_BODY]) + ENVELOPE_OVERHEAD
                if size > max_bytes and out:
                    self.ready_links.add(address)  # more to go
                    break
                out.append((handle, held))
                sent[handle] = 1
                done.append(handle)
                if len(out) >= max_messages:
                    self.ready_links.add(address)  # more to go
                    break
                continue
            rows = held
            start = sent.get(handle, 0)
            if start >= len(rows):
                done.append(handle)
                continue
            end = min(len(rows), start + max_messages - len(out))
            i = start
            while i < end and rows[i][ROW_ID] <= durable_upto:
                size += len(rows[i][ROW_BODY]) + ENVELOPE_OVERHEAD
                if size > max_bytes and out:
                    full = True
                    break
                out.append((handle, rows[i]))
                i += 1
            if i:
                sent[handle] = i  # only conversations with rows in flight: "any awaiting ack?" is bool(sent)
            if i == len(rows):
                done.append(handle)
            if i < end:
                # stopped at a row not yet stored: the write that stores it must wake this link again
                self.ready_links.add(address)
            if full or len(out) >= max_messages:
                self.ready_links.add(address)  # more to go
                break
        unsent = link.unsent
        for handle in done:
            del unsent[handle]
        return out

    def acknowledge(self, handle: str, next_seq: int, far_service: str) -> list[MessageRow]:
        """The far side has stored every message of this endpoint before ``next_seq``: drop them."""
        held = self.rows.get(handle)
        if held is None:
            return []
        if isinstance(held, list):
            rows = held
            k = 0
            while k < len(rows) and rows[k][ROW_SEQ] < next_seq:
                k += 1
            if not k:
                return []
            done = rows[:k]
            del rows[:k]
            if len(rows) == 1:
                self.rows[handle] = rows[0]  # back to a lone row
            elif not rows:
                del self.rows[handle]
        elif held[ROW_SEQ] < next_seq:  # a lone row (a storm's conversations hold one each)
            k = 1
            done = [held]
            del self.rows[handle]
        else:
            return []
        self.message_count -= k
        waiting = self.delayed.get(far_service)
        if waiting is not None and handle in waiting:
            # sent before the conversation went back to DELAYED (its route was dropped), acknowledged after:
            # they no longer wait, so they leave the DELAYED counts the send bounds read
            self._count(far_service, -k)
        address = self.route_of.get(handle)
        link = self.links.get(address) if address is not None else None
        if link is not None:
            sent = link.sent
            left = sent.get(handle, 0) - k
            if left > 0:
                sent[handle] = left
            else:
                sent.pop(handle, None)
                if not sent:
                    link.waiting_since = None
        return done

    def acknowledge_all(self, acks: list[tuple[str, int, str]]) -> list[MessageRow]:
        """:meth:`acknowledge` for a frame's acknowledgements at once, each (handle, next_seq, far_service): the rows
        they free, in order. A frame after a storm's release holds 1,000, each for a lone row: those are done here
        without a call each (what :meth:`acknowledge` does for one), a conversation with a list of rows by it."""
        all_rows = self.rows
        delayed = self.delayed
        route_of = self.route_of
        links = self.links
        freed: list[MessageRow] = []
        lone = 0
        link_address: str | None = None
        link: Link | None = None
        for handle, next_seq, far_service in acks:
            held = all_rows.get(handle)
            if held is None:
                continue
            if type(held) is list:
                freed += self.acknowledge(handle, next_seq, far_service)
                continue
            if held[ROW_SEQ] >= next_seq:  # type: ignore[operator]  # (a lone row: a tuple)
                continue
            del all_rows[handle]
            lone += 1
            freed.append(held)  # type: ignore[arg-type]
            if delayed:
                waiting = delayed.get(far_service)
                if waiting is not None and handle in waiting:
                    self._count(far_service, -1)  # sent, went back to DELAYED, acknowledged (see ``acknowledge``)
            address = route_of.get(handle)
            if address is None:
                continue
            if address != link_address:  # one link for a frame's acknowledgements, as a rule
                link_address, link = address, links.get(address)
            if link is not None:
                sent = link.sent
                left = sent.get(handle, 0) - 1
                if left > 0:
                    sent[handle] = left
                else:
                    sent.pop(handle, None)
                    if not sent:
                        link.waiting_since = None
        self.message_count -= lone
        return freed

    def replace(self, handle: str, rows: list[MessageRow]) -> None:
        """Put ``rows`` in place of an endpoint's rows (the same messages, their bodies left in the store or read
        back: ``tx_bodies.py``)."""
        self.rows[handle] = rows[0] if len(rows) == 1 else rows

    def statistics(self) -> dict[str, Any]:
        return {
            "messages": self.message_count,
            "conversations": len(self.rows),
            "links": [link.describe(self) for link in self.links.values()],
        }

    def __repr__(self) -> str:
        return f"<TransmissionQueue conversations={len(self.rows)} links={len(self.links)} delayed={len(self.delayed)}>"
