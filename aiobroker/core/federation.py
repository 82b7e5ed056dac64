"""Where outgoing messages go, and what comes in from other nodes: the core's side of federation.

Theory of operation
-------------------
:meth:`Federation.route` decides, once per conversation and again when routes change, whether the far side is an
endpoint on this node (messages go straight into its queue, see ``broker.py``), a remote node (the conversation is
attached to a link in the :class:`~aiobroker.core.transmission.TransmissionQueue`), or nowhere yet (DELAYED, with
the reason). Remote and delayed messages are stored rows in the transmission queue until acknowledged.

Between nodes travel *envelopes* (see ``docs/protocol.md``)::

    message: [0, conversation_id, from_initiator, seq, from_service, to_service, contract,
              from_instance, to_instance, message_type, body, expires_at, hops, sealed]

``sealed`` is False (a plain body), True (sealed with the conversation's session key), or the key header
``[wrapped_key, initiator_certificate, signature]`` on a secured conversation's first message (docs/security.md).
    ack:     [1, conversation_id, from_initiator, next_seq, acker_instance]

:meth:`accept` takes the envelopes a peer sent: each message is delivered in order to its local endpoint (the
target's endpoint is made by message 0), duplicates are dropped, a gap is dropped unacknowledged; it returns the
acknowledgements to send back once the store has what was delivered (the shell sends them after the commit), and
what to forward when this node forwards. :meth:`acknowledged` applies acknowledgements: the acknowledged rows
leave the transmission queue and the store; the first one fixes the far broker instance (sticky routing).

An endpoint whose far side is remote stays, closed, for ``closed_retention`` seconds after it ended and its last
message was acknowledged, so a late retransmission of its first message cannot begin the conversation twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import SecurityError
from .catalog import BCN_SERVICE, ERROR, Catalog
from .conversation import Endpoint, State
from .conversation_states import STARTS, Event
from .dispatcher import ROUTE
from .effects import Effect, Report
from .identities import PUBLIC
from .records import ROW_BODY, ROW_ENQUEUED_AT, ROW_ID, ROW_SEQ, ROW_TYPE, MessageRow, WriteBatch
from .routing import Decision, choose
from .transmission import TransmissionQueue

if TYPE_CHECKING:
    from ..security.dialog import DialogCipher
    from .dialog_security import Refusal

TX = "tx"
MESSAGE, ACK = 0, 1
#: A forwarded message that has crossed this many nodes is dropped and reported: it is in a routing loop.
DEFAULT_MAX_HOPS = 16
#: How long a closed endpoint with a remote far side is kept to recognise retransmissions (the seeds' system keeps
#: them for about half an hour).
DEFAULT_CLOSED_RETENTION = 1800.0

Envelope = list[Any]


class Federation:
    """Mixed into :class:`~aiobroker.core.broker.BrokerCore`; uses its state (declared here for the type checker)."""

    broker_instance: str
    persist: bool
    catalog: Catalog
    endpoints: dict[str, Endpoint]
    tx: TransmissionQueue
    changes: WriteBatch
    new_id: Callable[[], str]
    forwarding: bool
    max_hops: int
    closed_retention: float
    by_conversation: dict[tuple[str, bool], str]
    outbox: deque[Effect]
    binding_waiters: set[str]
    security_counts: dict[str, int]
    pending: list[Any]
    durable_upto: int
    _next_message_id: int

    resolver_name: str | None
    route_traffic: set[str]

    if TYPE_CHECKING:  # provided by BrokerCore and DynamicRouting; declared only for the type checker, since a
        # stub here would shadow the real method later in the MRO

        def _touch(self, ep: Endpoint) -> None: ...
        def _save_row(self, row: MessageRow) -> None: ...
        def _forget_row(self, message_id: int) -> None: ...
        def _watch(self, ep: Endpoint) -> None: ...
        def _remove(self, ep: Endpoint) -> None: ...
        def _fail(self, ep: Endpoint, code: int, description: str, now: float) -> None: ...
        def _new_far_endpoint(self, ep: Endpoint, now: float) -> Endpoint | None: ...
        def _deliver(self, src: Endpoint, far: Endpoint, seq: int, message_type: str, body: bytes, now: float) -> None: ...
        def _deliver_remote(self, ep: Endpoint, env: Envelope, now: float) -> None: ...
        def _retire(self, ep: Endpoint, now: float) -> None: ...
        def ask(self, kind: str, service: str, now: float) -> str: ...
        @property
        def asks(self) -> str: ...
        def delayed_words(self, ep: Endpoint, now: float) -> str | None: ...
        def secure(self, ep: Endpoint, now: float) -> bool: ...
        def cipher(self, ep: Endpoint) -> DialogCipher: ...
        def accept_key_header(self, env: list[Any], now: float) -> tuple[bytes, str, Refusal | None]: ...
        def authorize_initiator(self, identity: str, to_service: str) -> Refusal | None: ...
        def open_run(self, ep: Endpoint, envelopes: list[Any], start: int, stop: int, peer_hint: str = "") -> int: ...
        def _refuse_remote(self, ep: Endpoint, code: int, description: str, now: float) -> None: ...

    # ----------------------------------------------------------------------------------------------- routing

    def decide(self, ep: Endpoint, now: float) -> Decision:
        return choose(
            self.catalog.routes_for(ep.far_service),
            service=ep.far_service,
            broker_instance=ep.far_broker_instance,
            now=now,
            local_services=self.catalog.services,
            local_instance=self.broker_instance,
            dynamic=self.resolver_name is not None or BCN_SERVICE in self.catalog.services,
            asks=self.asks,
        )

    def route(
        self, ep: Endpoint, now: float, decisions: dict[tuple[str, str | None], Decision] | None = None
    ) -> Endpoint | str | None:
        """The far endpoint (on this node), the link address (remote), or None (DELAYED: ``ep.delayed`` says why;
        or failed: the sender has its Error). ``decisions`` caches the choice per (service, instance) while many
        conversations are routed at once (a load-shared pick is still made per conversation)."""
        if ep.far_handle is not None:
            return self.endpoints.get(ep.far_handle)
        address = self.tx.route_of.get(ep.handle)
        if address is not None:
            return address
        if ep.delayed is not None:
            return None
        if decisions is None:
            decision = self.decide(ep, now)
        else:
            key = (ep.far_service, ep.far_broker_instance)
            cached = decisions.get(key)
            if cached is None:
                decision = decisions[key] = self.decide(ep, now)
            else:
                decision = cached.again(ep.far_service)
        if decision.kind == "local":
            return self._new_far_endpoint(ep, now)
        if decision.kind == "remote":
            assert decision.address is not None
            if ep.secured is None and not self.secure(ep, now):
                return None  # waiting for a binding (DELAYED), or failed (the sender has its Error)
            self.tx.attach(ep.handle, decision.address)
            if decision.route is not None and decision.route.origin != "admin":
                self.route_traffic.add(ep.far_service)  # a resolver's route in use: refresh it before expiry
            return decision.address
        self.tx.delay(ep.handle, ep.far_service)
        if decision.kind == "resolve":
            ep.delayed = self.ask(ROUTE, ep.far_service, now)
        else:
            ep.delayed = decision.reason
        self._touch(ep)
        return None

    def queue_outgoing(self, ep: Endpoint, messages: list[Any], now: float) -> None:
        """Number messages and keep them in the transmission queue (remote or DELAYED), stored, in order."""
        seq = ep.send_seq
        mid = self._next_message_id
        handle = ep.handle
        rows: list[MessageRow] = [(mid + i, TX, handle, seq + i, m[0], m[1], now, 0) for i, m in enumerate(messages)]
        self._next_message_id = mid + len(rows)
        ep.send_seq = seq + len(rows)
        self.tx.add_many(handle, rows)
        if self.persist:
            stored = self.changes.messages
            for row in rows:
                stored[row[ROW_ID]] = row

    def drop_outgoing(self, ep: Endpoint) -> int:
        """Forget an endpoint's unacknowledged messages (ended with an error, lifetime over)."""
        rows = self.tx.drop(ep.handle)
        for row in rows:
            self._forget_row(row[ROW_ID])
        ep.delayed = None
        self.binding_waiters.discard(ep.handle)
        return len(rows)

    def reroute(self, now: float, services: set[str] | None = None) -> int:
        """Routes or services changed: decide again for every conversation with messages waiting (only those to
        ``services`` when given). Messages whose far side is now on this node are delivered at once, in order;
        those routed to another node join its link. Returns how many messages moved on either way."""
        moved = 0
        decisions: dict[tuple[str, str | None], Decision] = {}
        if services is None:
            handles = list(self.tx.rows)
        else:  # only those DELAYED on these services: a conversation already on a link keeps it
            handles = [h for s in services for h in self.tx.delayed.get(s, ())]
        for handle in handles:
            ep = self.endpoints.get(handle)
            if ep is None or ep.far_handle is not None or handle not in self.tx.rows:
                continue
            self.tx.detach(handle)
            self.tx.undelay(handle)
            self.binding_waiters.discard(handle)
            if ep.delayed is not None:
                ep.delayed = None
                self._touch(ep)
            target = self.route(ep, now, decisions)
            if isinstance(target, Endpoint):
                moved += self._move_to_local(ep, target)
            elif target is not None:
                moved += len(self.tx.rows.get(handle, ()))  # on their way to another node now
        return moved

    def _move_to_local(self, ep: Endpoint, far: Endpoint) -> int:
        rows = self.tx.drop(ep.handle)
        for row in rows:
            self._forget_row(row[ROW_ID])
        moved = 0
        for row in rows:
            if ep.state is State.ERROR:
                break  # a message failed the receiving side's checks; what follows it is dropped
            self._deliver(ep, far, row[ROW_SEQ], row[ROW_TYPE], row[ROW_BODY], row[ROW_ENQUEUED_AT])
            moved += 1
        self._touch(ep)
        if ep.state is State.CLOSED:
            self._remove(ep)
        return moved

    # ------------------------------------------------------------------------------------------ envelopes out

    def outgoing(self, address: str, max_messages: int, max_bytes: int) -> list[Envelope]:
        """Messages for the link to ``address`` not yet sent on its current connection, as envelopes: at most
        ``max_messages``, within ``max_bytes`` (see ``TransmissionQueue.take_unsent``)."""
        out: list[Envelope] = []
        me = self.broker_instance
        for handle, row in self.tx.take_unsent(address, max_messages, self.durable_upto, max_bytes):
            ep = self.endpoints[handle]
            body: bytes = row[ROW_BODY]
            sealed: Any = False
            if ep.secured:  # sealed as it leaves: the stored row on this end node stays plain
                body = self.cipher(ep).seal(ep.is_initiator, row[ROW_SEQ], row[ROW_TYPE], body)
                sealed = ep.key_header if ep.is_initiator and row[ROW_SEQ] == 0 else True
            out.append(
                [
                    MESSAGE,
                    ep.conversation_id,
                    ep.is_initiator,
                    row[ROW_SEQ],
                    ep.service,
                    ep.far_service,
                    ep.contract,
                    me,
                    ep.far_broker_instance,
                    row[ROW_TYPE],
                    body,
                    ep.expires_at,
                    0,
                    sealed,
                ]
            )
        return out

    # ------------------------------------------------------------------------------------------- envelopes in

    def accept(self, envelopes: list[Any], now: float) -> tuple[list[Envelope], dict[str, list[Envelope]]]:
        """Take a peer's message envelopes. Returns (acknowledgements to send back after the commit, envelopes to
        forward per next-hop address). Anything malformed or refused is put in the outbox as a ``Report``.

        The hot path: consecutive envelopes of one conversation and direction (a *run*) are looked up once, and
        the in-order stretch of ordinary messages in it is delivered as one run of rows."""
        acks: dict[tuple[str, bool], int] = {}
        forwards: dict[str, list[Envelope]] = {}
        i, n = 0, len(envelopes)
        while i < n:
            env = envelopes[i]
            if not _well_formed(env):
                self.outbox.append(Report(f"a peer sent a malformed envelope: {str(env)[:120]}"))
                i += 1
                continue
            conv_id, from_initiator = env[1], env[2]
            j = i + 1
            while j < n and _same_run(envelopes[j], conv_id, from_initiator):
                j += 1
            self._accept_run(envelopes, i, j, now, acks, forwards)
            i = j
        me = self.broker_instance
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
        first = envelopes[start]
        conv_id, from_initiator, seq0, to_service, to_instance = first[1], first[2], first[3], first[5], first[8]
        key = (conv_id, not from_initiator)
        handle = self.by_conversation.get(key)
        ep = self.endpoints.get(handle) if handle is not None else None
        if ep is None:
            if to_instance not in (None, self.broker_instance) or to_service not in self.catalog.services:
                for k in range(start, stop):
                    self._forward(envelopes[k], now, forwards)
                return
            if seq0 != 0:
                # its endpoint here ended and was retired long ago (or never existed): nothing to deliver to
                self.outbox.append(Report(
                    f"message {seq0} of conversation {conv_id} for {to_service!r} has no endpoint here; dropped"
                ))
                acks[key] = max(acks.get(key, 0), envelopes[stop - 1][3] + 1)
                return
            ep = self._new_remote_target(first, now)
            if ep is None:
                return  # dropped (dialog security), not acknowledged: the sender resends
            if ep.state is State.CLOSED:
                acks[key] = ep.recv_seq  # refused with an Error; what follows in the run is swallowed below
        if ep.secured or any(envelopes[x][13] for x in range(start, stop)):
            stop = self.open_run(ep, envelopes, start, stop)
        k = start
        while k < stop:
            env = envelopes[k]
            seq = env[3]
            if ep.state is State.CLOSED:
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
            if taken == 0:
                self._deliver_remote(ep, env, now)
                taken = 1
            k += taken
        acks[key] = ep.recv_seq

    def _deliver_stretch(self, ep: Endpoint, envelopes: list[Any], start: int, stop: int, now: float) -> int:
        """Deliver the longest in-order stretch from ``start`` of messages that need no check beyond their type
        (allowed by the contract, validation ``none``); returns how many (0: the first needs the careful path)."""
        if ep.recv_seq == 0 and not ep.is_initiator:
            return 0  # the message that makes the target's endpoint: the contract acceptance check comes first
        contract = self.catalog.contracts.get(ep.contract)
        if contract is None:
            return 0
        allowed = contract.may_send(not ep.is_initiator)
        types = self.catalog.message_types
        expect = ep.recv_seq
        end = start
        while end < stop:
            env = envelopes[end]
            mt = env[9]
            if env[3] != expect or mt not in allowed or types[mt].validation != "none":
                break
            expect += 1
            end += 1
        count = end - start
        if count:
            queue_name = self.catalog.services[ep.service].queue
            location = "q:" + queue_name
            mid = self._next_message_id
            handle = ep.handle
            rows: list[MessageRow] = [
                (mid + x, location, handle, e[3], e[9], e[10], now, 0)
                for x, e in enumerate(envelopes[start:end])
            ]
            self._next_message_id = mid + count
            if self.persist:
                stored = self.changes.messages
                for row in rows:
                    stored[row[ROW_ID]] = row
            self.pending.append((queue_name, ep.group_id, False, rows))
            ep.recv_seq = expect
            self._touch(ep)
        return count

    def _new_remote_target(self, env: Envelope, now: float) -> Endpoint | None:
        """The first message of a conversation from another node makes its endpoint here; a secured one's key
        header is read and its initiator checked first. None: dropped (reported, not acknowledged)."""
        _, conv_id, from_initiator, _seq, from_service, to_service, contract, from_instance, _ti, _t, _b, expires_at, _h, enc = env
        session_key: bytes | None = None
        identity = PUBLIC
        refusal: Refusal | None = None
        if isinstance(enc, list):
            try:
                session_key, identity, refusal = self.accept_key_header(env, now)
            except SecurityError as exc:
                self.security_counts["first_dropped"] = self.security_counts.get("first_dropped", 0) + 1
                self.outbox.append(Report(
                    f"the first message of conversation {conv_id} from {from_service!r} to {to_service!r} failed"
                    f" dialog security: {exc.message}; dropped, not acknowledged"
                ))
                return None
        elif enc:
            self.security_counts["first_dropped"] = self.security_counts.get("first_dropped", 0) + 1
            self.outbox.append(Report(
                f"the first message of conversation {conv_id} from {from_service!r} to {to_service!r} is sealed"
                " but carries no session key; dropped, not acknowledged"
            ))
            return None
        refusal = refusal or self.authorize_initiator(identity, to_service)
        ep = Endpoint(
            handle=self.new_id(),
            conversation_id=conv_id,
            is_initiator=not from_initiator,
            service=to_service,
            far_service=from_service,
            contract=contract,
            group_id=self.new_id(),
            expires_at=float(expires_at),
            far_broker_instance=from_instance,
            state=STARTS[Event.RECEIVE_FIRST],
            encryption=session_key is not None,
            secured=session_key is not None,
            session_key=session_key,
            far_identity=identity,
        )
        self.endpoints[ep.handle] = ep
        self.by_conversation[(conv_id, ep.is_initiator)] = ep.handle
        self._touch(ep)
        self._watch(ep)
        if refusal is not None:
            self.security_counts["refused"] = self.security_counts.get("refused", 0) + 1
            self.outbox.append(Report(f"conversation {conv_id} from {from_service!r} to {to_service!r} refused: {refusal[1]}"))
            ep.recv_seq = 1  # message 0 is taken, and answered with the Error
            self._refuse_remote(ep, refusal[0], refusal[1], now)
        return ep

    def _forward(self, env: Envelope, now: float, forwards: dict[str, list[Envelope]]) -> None:
        to_service, to_instance, hops = env[5], env[8], env[12]
        if not self.forwarding:
            self.outbox.append(Report(
                f"a message for service {to_service!r} (instance {to_instance or 'any'}) is not for this node, which"
                " does not forward; dropped"
            ))
            return
        if hops + 1 > self.max_hops:
            self.outbox.append(Report(
                f"a message for service {to_service!r} crossed {hops} nodes: a routing loop; dropped"
            ))
            return
        decision = choose(
            self.catalog.routes_for(to_service),
            service=to_service,
            broker_instance=to_instance,
            now=now,
            local_services=(),
            local_instance=self.broker_instance,
        )
        if decision.kind != "remote" or decision.address is None:
            self.outbox.append(Report(f"cannot forward a message for service {to_service!r}: {decision.reason}; dropped"))
            return
        forwarded = list(env)
        forwarded[12] = hops + 1
        forwards.setdefault(decision.address, []).append(forwarded)

    def acknowledged(self, acks: list[Any], now: float) -> list[Envelope]:
        """Apply acknowledgements; returns those for conversations not on this node (to relay when forwarding)."""
        foreign: list[Envelope] = []
        for ack in acks:
            if not (isinstance(ack, list) and len(ack) == 5 and type(ack[3]) is int and isinstance(ack[1], str)):
                self.outbox.append(Report(f"a peer sent a malformed acknowledgement: {str(ack)[:120]}"))
                continue
            _, conv_id, from_initiator, next_seq, acker = ack
            handle = self.by_conversation.get((conv_id, bool(from_initiator)))
            ep = self.endpoints.get(handle) if handle is not None else None
            if ep is None:
                foreign.append(ack)
                continue
            done = self.tx.acknowledge(ep.handle, next_seq)
            for row in done:
                self._forget_row(row[ROW_ID])
            if ep.far_broker_instance is None and isinstance(acker, str):
                ep.far_broker_instance = acker  # sticky from the first acknowledgement on
                self._touch(ep)
            if ep.state is State.CLOSED and ep.handle not in self.tx:
                self._retire(ep, now)
        return foreign

    # ---------------------------------------------------------------------------------------------- links

    def link_up(self, address: str, peer_instance: str | None) -> None:
        link = self.tx.links.get(address)
        if link is not None:
            link.up(peer_instance)
            self.tx.ready_links.add(address)

    def link_failed(self, address: str, error: str, now: float) -> float | None:
        """A link's connection failed; returns when to try again. Its conversations are routed afresh then (a
        route may have changed, or another of equal rank may serve)."""
        link = self.tx.links.get(address)
        if link is None:
            return None
        return link.failed(error, now)

    def link_status(self, handle: str, now: float) -> str | None:
        """In words, what is happening to an endpoint's unacknowledged messages, at ``now``."""
        if handle not in self.tx:
            return None
        ep = self.endpoints.get(handle)
        if ep is not None and ep.delayed:
            return f"delayed: {self.delayed_words(ep, now)}"
        address = self.tx.route_of.get(handle)
        link = self.tx.links.get(address) if address else None
        if link is None:
            return "not yet tried"
        if link.connected:
            return f"sent to {address}, waiting for acknowledgement" if link.sent.get(handle) else f"queued for {address}"
        if link.idle:  # the far node closed the quiet connection; the link connects again for this
            return f"queued for {address}"
        if link.last_error:
            return f"retrying {address}: {link.last_error} (attempt {link.attempts})"
        return f"not yet tried ({address})"


def _same_run(env: Any, conv_id: str, from_initiator: bool) -> bool:
    """Whether ``env`` continues a run: the same conversation and direction, and well formed where it matters
    for delivery into an existing endpoint (the other header fields are the first envelope's business)."""
    return (
        type(env) is list
        and len(env) == 14
        and env[1] == conv_id
        and env[2] is from_initiator
        and env[0] == MESSAGE
        and type(env[3]) is int
        and type(env[9]) is str
        and type(env[10]) is bytes
    )


def _well_formed(env: Any) -> bool:
    return (
        isinstance(env, list)
        and len(env) == 14
        and env[0] == MESSAGE
        and isinstance(env[1], str)
        and isinstance(env[2], bool)
        and type(env[3]) is int
        and env[3] >= 0
        and isinstance(env[4], str)
        and isinstance(env[5], str)
        and isinstance(env[6], str)
        and isinstance(env[7], str)
        and (env[8] is None or isinstance(env[8], str))
        and isinstance(env[9], str)
        and isinstance(env[10], bytes)
        and isinstance(env[11], (int, float))
        and type(env[12]) is int
    )


__all__ = ["Federation", "Envelope", "MESSAGE", "ACK"]
