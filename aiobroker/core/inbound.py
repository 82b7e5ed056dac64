"""Inbound: what other nodes send this one, message envelopes and acknowledgements, and what it forwards.

Theory of operation
-------------------
:meth:`Inbound.accept` takes the envelopes a peer sent (``envelopes.py`` has their shape): each message is
delivered in order to its local endpoint (the target's endpoint is made by message 0), duplicates are dropped, a gap
is dropped unacknowledged; it returns the acknowledgements to send back once the store has what was delivered (the
shell sends them after the commit), and what to forward when this node forwards. Consecutive envelopes of one
conversation and direction (a *run*) are looked up once, and the in-order stretch of ordinary messages in it is
delivered as one run of rows: the hot path of a link.

:meth:`Inbound.acknowledged` applies acknowledgements: the acknowledged rows leave the transmission queue and the
store; the first one fixes the far broker instance (sticky routing).

An endpoint whose far side is remote stays, closed, for ``closed_retention`` seconds after it ended and its last
message was acknowledged (``Conversations.retire``), so a late retransmission of its first message cannot begin the
conversation twice. Anything malformed or refused is put in the outbox as a ``Report`` for the shell to log.
"""

from __future__ import annotations

from typing import Any

from ..errors import SecurityError
from .catalog import DISPATCHER_SERVICE, END_DIALOG, ERROR, QueueDef
from .conversation import Endpoint, State
from .conversation_states import STARTS, Event
from .conversations import Conversations
from .dialog_errors import Refusal
from .effects import Report
from .envelopes import ACK, Envelope, same_run, well_formed, well_formed_ack
from .identities import PUBLIC
from .ledger import Ledger
from .parts import DeliveryPart, EndingsPart, SecurityPart
from .records import ROW_LOCATION, MessageRow
from .routing import choose

#: A forwarded message that has crossed this many nodes is dropped and reported: it is in a routing loop.
DEFAULT_MAX_HOPS = 16

#: queues' row locations kept (:meth:`Inbound._location`); a bound, as queues may come and go without end
MAX_LOCATIONS = 10_000

#: the state of a target's endpoint made by a conversation's first message (looked up once: an enum's hash is
#: Python code)
_TARGET_START = STARTS[Event.RECEIVE_FIRST]
#: ``State.CLOSED``, for the accept path: a member read from its enum class is a class attribute lookup through
#: the metaclass, ten times a global's cost, and the path reads it twice a conversation
_CLOSED = State.CLOSED


class Inbound:
    """Envelopes in, acknowledgements, forwarding (see the module's header)."""

    delivery: DeliveryPart
    endings: EndingsPart
    security: SecurityPart

    def __init__(
        self, ledger: Ledger, conversations: Conversations, *, forwarding: bool = False, max_hops: int = DEFAULT_MAX_HOPS
    ) -> None:
        self.ledger = ledger
        self.conversations = conversations
        self.forwarding = forwarding
        self.max_hops = max_hops
        #: queue name -> its rows' location (:meth:`_location`)
        self._locations: dict[str, str] = {}
        #: rows an ``accept`` delivered to a queue without bounds and has yet to save (all of one location), and
        #: their bodies' bytes: saved before it returns (:meth:`_save_unsaved`)
        self._unsaved: list[MessageRow] = []
        self._unsaved_size = 0

    def _report(self, text: str) -> None:
        self.ledger.outbox.append(Report(text))

    # ------------------------------------------------------------------------------------------- envelopes in

    def accept(self, envelopes: list[Any], now: float) -> tuple[list[Envelope], dict[str, list[Envelope]]]:
        """Take a peer's message envelopes. Returns (acknowledgements to send back after the commit, envelopes to
        forward per next-hop address)."""
        acks: dict[tuple[str, bool], int] = {}
        forwards: dict[str, list[Envelope]] = {}
        i, n = 0, len(envelopes)
        try:
            while i < n:
                env = envelopes[i]
                if not well_formed(env):
                    self._report(f"a peer sent a malformed envelope: {str(env)[:120]}")
                    i += 1
                    continue
                conv_id, from_initiator = env[1], env[2]
                j = i + 1
                while j < n and same_run(envelopes[j], conv_id, from_initiator):
                    j += 1
                self._accept_run(envelopes, i, j, now, acks, forwards)
                i = j
        finally:
            if self._unsaved:
                self._save_unsaved()
        me = self.ledger.broker_instance
        return [[ACK, cid, not side, nxt, me] for (cid, side), nxt in acks.items()], forwards

    def _accept_run(
        self,
        envelopes: list[Any],
        start: int,
        stop: int,
        now: float,
        acks: dict[tuple[str, bool], int],
        forwards: dict[str, list[Envelope]],
    ) -> None:
        ledger = self.ledger
        first = envelopes[start]
        conv_id, from_initiator, seq0, to_service, to_instance = first[1], first[2], first[3], first[5], first[8]
        key = (conv_id, not from_initiator)
        handle = ledger.by_conversation.sides[not from_initiator].get(conv_id)  # its .get, without the call
        ep = ledger.endpoints.get(handle) if handle is not None else None
        if ep is None:
            if to_instance not in (None, ledger.broker_instance) or to_service not in ledger.catalog.services:
                for k in range(start, stop):
                    self._forward(envelopes[k], now, forwards)
                return
            if seq0 != 0:
                # its endpoint here ended and was retired long ago (or never existed): nothing to deliver to
                self._report(f"message {seq0} of conversation {conv_id} for {to_service!r} has no endpoint here; dropped")
                acks[key] = max(acks.get(key, 0), envelopes[stop - 1][3] + 1)
                return
            ep = self._new_remote_target(first, now)
            if ep is None:
                return  # dropped (dialog security), not acknowledged: the sender resends
            if ep.state is _CLOSED:
                acks[key] = ep.recv_seq  # refused with an Error; what follows in the run is swallowed below
        if ep.secured or (first[13] if stop - start == 1 else any(envelopes[x][13] for x in range(start, stop))):
            stop = self.security.open_run(ep, envelopes, start, stop)
        k = start
        while k < stop:
            env = envelopes[k]
            seq = env[3]
            if ep.state is _CLOSED:
                acks[key] = max(acks.get(key, 0), max(ep.recv_seq, envelopes[stop - 1][3] + 1))
                return  # retired or ending: swallow quietly
            if seq < ep.recv_seq:
                k += 1  # a duplicate: acknowledged again below
                continue
            if seq > ep.recv_seq:
                if env[9] != ERROR:
                    break  # a gap: an earlier message was lost; the sender resends from there
                # An Error past a gap: its sender ended the conversation with it (end(error=...)) and dropped
                # what was not yet acknowledged, so the gap will never fill. The Error is the last message the
                # conversation carries this way: deliver it now, and what it skipped is acknowledged with it.
                ep.recv_seq = seq
            taken = self._deliver_stretch(ep, envelopes, k, stop, now)
            if taken < 0:
                queue = ledger.catalog.services[ep.service].queue
                self._report(
                    f"message {seq} of conversation {conv_id} for {ep.service!r} was not taken: queue {queue!r} is"
                    " full (its max_messages or max_bytes); not acknowledged, so the sender keeps it and sends it"
                    " again; receive from the queue, or raise its bound"
                )
                break
            if taken == 0:
                self.delivery.deliver_remote(ep, env, now)
                taken = 1
            k += taken
        acks[key] = ep.recv_seq

    def _room(self, qdef: QueueDef, envelopes: list[Any], start: int, stop: int) -> int:
        """How many of ``envelopes[start:stop]`` fit in the bounds of queue ``qdef``. ``EndDialog`` and ``Error``
        always fit: they end the conversation, which frees its messages."""
        held, held_bytes = self.ledger.budget.in_queue(qdef.name)
        k = start
        while k < stop:
            env = envelopes[k]
            if env[9] not in (END_DIALOG, ERROR):
                held += 1
                held_bytes += len(env[10])
                if (qdef.max_messages is not None and held > qdef.max_messages) or (
                    qdef.max_bytes is not None and held_bytes > qdef.max_bytes
                ):
                    break
            k += 1
        return k - start

    def _deliver_stretch(self, ep: Endpoint, envelopes: list[Any], start: int, stop: int, now: float) -> int:
        """Deliver the longest in-order stretch from ``start`` of messages that need no check beyond their type
        (allowed by the contract, validation ``none``) and fit in the bounds of its queue, if it has any; returns
        how many (0: the first needs the careful path; -1: the queue has no room for it).
        The message that made the target's endpoint is one of them once its service is found to accept the
        contract (the check ``Delivery.deliver_remote`` makes of it): a peer that begins a conversation per message
        sends nothing else."""
        ledger = self.ledger
        catalog = ledger.catalog
        service = catalog.services.get(ep.service)
        qdef = catalog.queues.get(service.queue) if service is not None else None
        bounded = False
        if qdef is not None and qdef.bounded:
            bounded = True
            room = self._room(qdef, envelopes, start, stop)
            if room == 0:
                return -1
            stop = start + room
        contract = catalog.contracts.get(ep.contract)
        if contract is None or service is None:
            return 0
        if ep.recv_seq == 0 and not ep.is_initiator and (
            ep.service == DISPATCHER_SERVICE or ep.contract not in service.contracts
        ):
            return 0  # refused with an Error (or the node's own dynamic routing service's): the careful path
        allowed = contract.target_may_send if ep.is_initiator else contract.initiator_may_send  # the sender's
        types = catalog.message_types
        expect = ep.recv_seq
        end = start
        traced = False
        size = 0
        while end < stop:
            env = envelopes[end]
            mt = env[9]
            if env[3] != expect or mt not in allowed or types[mt].validation != "none":
                break
            if len(env) != 14:
                traced = True  # its 15th field: trace context (opened already if it was sealed)
            size += len(env[10])
            expect += 1
            end += 1
        count = end - start
        if count:
            queue_name = service.queue
            location = self._locations.get(queue_name) or self._location(queue_name)
            mid = ledger.next_message_id
            handle = ep.handle
            rows: list[MessageRow]
            if count == 1 and not traced:  # the one message of a new conversation, as a storm's peer sends them
                e = envelopes[start]
                rows = [(mid, location, handle, e[3], e[9], e[10], now, 0)]
            elif not traced:
                rows = [(mid + x, location, handle, e[3], e[9], e[10], now, 0) for x, e in enumerate(envelopes[start:end])]
            else:
                rows = [
                    (mid + x, location, handle, e[3], e[9], e[10], now, 0)
                    if len(e) == 14
                    else (mid + x, location, handle, e[3], e[9], e[10], now, 0, e[14])
                    for x, e in enumerate(envelopes[start:end])
                ]
                ledger.traced_queues.add(queue_name)
            ledger.next_message_id = mid + count
            if bounded:
                ledger.enqueue_run(queue_name, ep.group_id, rows, size)  # saved at once: its bound counts them
            else:
                unsaved = self._unsaved
                if unsaved and unsaved[0][ROW_LOCATION] is not location:
                    self._save_unsaved()
                    unsaved = self._unsaved
                unsaved += rows
                self._unsaved_size += size
                ledger.pending.append((queue_name, ep.group_id, False, rows))  # published once stored
            ep.recv_seq = expect
            ledger.touch(ep)
        return count

    def _save_unsaved(self) -> None:
        """Save the rows delivered to a queue without bounds since the last save (one location): one call for
        all the conversations of a frame, not a call (and the memory budget's count) per conversation."""
        self.ledger.save_rows(self._unsaved, self._unsaved_size)
        self._unsaved = []
        self._unsaved_size = 0

    def _location(self, queue_name: str) -> str:
        """The location of ``queue_name``'s rows (``q:NAME``), one string per queue: a string made per row would
        be hashed again wherever a row's location is looked up (the memory budget counts per location)."""
        if len(self._locations) >= MAX_LOCATIONS:
            self._locations.clear()  # queues dropped and made again by the thousand: start over
        location = self._locations[queue_name] = "q:" + queue_name
        return location

    def _new_remote_target(self, env: Envelope, now: float) -> Endpoint | None:
        """The first message of a conversation from another node makes its endpoint here; a secured one's key
        header is read and its initiator checked first. None: dropped (reported, not acknowledged)."""
        conv_id, from_initiator, from_service, to_service, enc = env[1], env[2], env[4], env[5], env[13]
        session_key: bytes | None = None
        identity = PUBLIC
        refusal: Refusal | None = None
        security = self.security
        if enc is False:
            pass  # a plain body: no key header to read (most conversations)
        elif isinstance(enc, list):
            try:
                session_key, identity, refusal = security.accept_key_header(env, now)
            except SecurityError as exc:
                security.count("first_dropped")
                self._report(
                    f"the first message of conversation {conv_id} from {from_service!r} to {to_service!r} failed"
                    f" dialog security: {exc.message}; dropped, not acknowledged"
                )
                return None
        elif enc:
            security.count("first_dropped")
            self._report(
                f"the first message of conversation {conv_id} from {from_service!r} to {to_service!r} is sealed"
                " but carries no session key; dropped, not acknowledged"
            )
            return None
        refusal = refusal or security.authorize_initiator(identity, to_service)
        ledger = self.ledger
        handle = ledger.new_id()
        secured = session_key is not None
        ep = Endpoint.new(
            handle,
            conv_id,
            not from_initiator,  # is_initiator
            to_service,  # service
            from_service,  # far_service
            env[6],  # contract
            handle,  # group_id: a group of its own, named by its handle
            float(env[11]),  # expires_at
            None,  # far_handle
            env[7],  # far_broker_instance
            _TARGET_START,
            secured,  # encryption
            secured,
            identity,  # far_identity
        )
        if session_key is not None:
            ep.session_key = session_key
        self.conversations.join(ep, now)
        if refusal is not None:
            security.count("refused")
            self._report(f"conversation {conv_id} from {from_service!r} to {to_service!r} refused: {refusal[1]}")
            ep.recv_seq = 1  # message 0 is taken, and answered with the Error
            self.endings.refuse_remote(ep, refusal[0], refusal[1], now)
        return ep

    def _forward(self, env: Envelope, now: float, forwards: dict[str, list[Envelope]]) -> None:
        to_service, to_instance, hops = env[5], env[8], env[12]
        if not self.forwarding:
            self._report(
                f"a message for service {to_service!r} (instance {to_instance or 'any'}) is not for this node, which"
                " does not forward; dropped"
            )
            return
        if hops + 1 > self.max_hops:
            self._report(f"a message for service {to_service!r} crossed {hops} nodes: a routing loop; dropped")
            return
        decision = choose(
            self.ledger.catalog.routes_for(to_service),
            service=to_service,
            broker_instance=to_instance,
            now=now,
            local_services=(),
            local_instance=self.ledger.broker_instance,
        )
        if decision.kind != "remote" or decision.address is None:
            self._report(f"cannot forward a message for service {to_service!r}: {decision.reason}; dropped")
            return
        forwarded = list(env)
        forwarded[12] = hops + 1
        forwards.setdefault(decision.address, []).append(forwarded)

    # ------------------------------------------------------------------------------------- acknowledgements

    def acknowledged(self, acks: list[Any], now: float) -> list[Envelope]:
        """Apply acknowledgements; returns those for conversations not on this node (to relay when forwarding).

        A frame's acknowledgements are many (one per conversation: 1,000 in a frame after a storm's release), so
        what can be done once per frame is: the rows they free leave the store and the memory budget in one run."""
        ledger = self.ledger
        tx = ledger.tx
        endpoints = ledger.endpoints
        initiators, targets = ledger.by_conversation.side(True), ledger.by_conversation.side(False)
        foreign: list[Envelope] = []
        acked: list[tuple[str, int, str]] = []
        closed: list[Endpoint] = []
        for ack in acks:
            if not well_formed_ack(ack):
                self._report(f"a peer sent a malformed acknowledgement: {str(ack)[:120]}")
                continue
            _, conv_id, from_initiator, next_seq, acker = ack
            handle = (initiators if from_initiator else targets).get(conv_id)
            ep = endpoints.get(handle) if handle is not None else None
            if ep is None:
                foreign.append(ack)
                continue
            acked.append((ep.handle, next_seq, ep.far_service))
            if ep.far_broker_instance is None and isinstance(acker, str):
                ep.far_broker_instance = acker  # sticky from the first acknowledgement on
                ledger.touch(ep)
            if ep.state is State.CLOSED:
                closed.append(ep)
        freed = tx.acknowledge_all(acked)  # the rows, one call for the frame
        if closed:
            unacked = tx.rows
            for ep in closed:
                if ep.handle not in unacked and endpoints.get(ep.handle) is ep:
                    self.conversations.retire(ep, now)
        ledger.forget_rows(freed)  # all of the transmission queue ("tx"): one run
        return foreign
