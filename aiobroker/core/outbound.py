"""Outbound: where outgoing messages go, the transmission queue they wait in, and the envelopes links send.

Theory of operation
-------------------
:meth:`Outbound.route` decides, once per conversation and again when routes change, whether the far side is an
endpoint on this node (messages go straight into its queue, see ``delivery.py``), a remote node (the conversation
is attached to a link in the :class:`~aiobroker.core.transmission.TransmissionQueue`), or nowhere yet (DELAYED,
with the reason; dynamic routing asks where the service is). The decision itself is ``routing.choose``, the seven
steps of the route table. Remote and DELAYED messages are stored rows in the transmission queue until acknowledged.

:meth:`Outbound.reroute` decides again for the conversations with messages waiting when routes or services change
(a route made, a resolver's answer, a service created here): those whose far side is now on this node are delivered
at once, in order; those routed to another node join its link.

:meth:`Outbound.outgoing` turns a link's waiting rows into message envelopes (``envelopes.py``), sealing the bodies
of secured conversations as they leave (the stored rows on this end node stay plain).
"""

from __future__ import annotations

from typing import Any

from . import tx_bodies
from .catalog import BCN_SERVICE
from .conversation import Endpoint, State
from .conversations import Conversations
from .dispatcher import ROUTE
from .envelopes import MESSAGE, Envelope
from .ledger import TX, Ledger
from .parts import DeliveryPart, DynamicPart, SecurityPart
from .records import ROW_BODY, ROW_ENQUEUED_AT, ROW_SEQ, ROW_TYPE, MessageRow, row_trace
from .routing import Decision, choose


class RoutingPass:
    """What one :meth:`Outbound.reroute` shares between the conversations it routes (a resolver's answer releases a
    service's hundred at once, a storm a hundred thousand): each (service, instance)'s decision (a load-shared pick
    is still made per conversation), dialog security's plain answers (``DialogSecurity.secure``), and the
    conversations routed to each link, attached at the end of the pass in one step per link
    (``TransmissionQueue.attach_many``) rather than one call each."""

    __slots__ = ("decisions", "plain", "to_links")

    def __init__(self) -> None:
        self.decisions: dict[tuple[str, str | None], Decision] = {}
        self.plain: set[str] = set()
        #: link address → the conversations routed to it in this pass, in order (neither DELAYED nor on a link now)
        self.to_links: dict[str, list[str]] = {}


class Outbound:
    """Routing decisions, the transmission queue and links, envelopes out (see the module's header)."""

    delivery: DeliveryPart
    dynamic: DynamicPart
    security: SecurityPart

    def __init__(self, ledger: Ledger, conversations: Conversations) -> None:
        self.ledger = ledger
        self.conversations = conversations

    # ----------------------------------------------------------------------------------------------- routing

    def decide(self, ep: Endpoint, now: float) -> Decision:
        catalog = self.ledger.catalog
        return choose(
            catalog.routes_for(ep.far_service),
            service=ep.far_service,
            broker_instance=ep.far_broker_instance,
            now=now,
            local_services=catalog.services,
            local_instance=self.ledger.broker_instance,
            dynamic=self.dynamic.resolver_name is not None or BCN_SERVICE in catalog.services,
            asks=self.dynamic.asks,
        )

    def route(self, ep: Endpoint, now: float, batch: RoutingPass | None = None) -> Endpoint | str | None:
        """The far endpoint (on this node), the link address (remote), or None (DELAYED: ``ep.delayed`` says why;
        or failed: the sender has its Error). ``batch``: many conversations are routed at once (:class:`RoutingPass`);
        one routed to a link then joins it when the pass ends."""
        if ep.far_handle is not None:
            return self.ledger.endpoints.get(ep.far_handle)
        address = self.ledger.tx.route_of.get(ep.handle)
        if address is not None:
            return address
        if ep.delayed is not None:
            return None
        return self.route_anew(ep, now, batch)

    def route_anew(self, ep: Endpoint, now: float, batch: RoutingPass | None = None) -> Endpoint | str | None:
        """:meth:`route` for a conversation whose far side is not on this node (yet), on no link and not DELAYED
        (``reroute`` has just made it so, and calls this for each of a release's conversations)."""
        ledger = self.ledger
        tx = ledger.tx
        if batch is None:
            decision = self.decide(ep, now)
            plain = None
        else:
            key = (ep.far_service, ep.far_broker_instance)
            cached = batch.decisions.get(key)
            if cached is None:
                decision = batch.decisions[key] = self.decide(ep, now)
            else:
                decision = cached if len(cached.pool) < 2 else cached.again(ep.far_service)
            plain = batch.plain
        kind = decision.kind
        if kind == "remote":
            address = decision.address
            assert address is not None
            if ep.secured is None and not self.security.secure(ep, now, plain):
                return None  # waiting for a binding (DELAYED), or failed (the sender has its Error)
            if decision.route is not None and decision.route.origin != "admin":
                self.dynamic.route_traffic.add(ep.far_service)  # a resolver's route in use: refresh it before expiry
            if ep.handle in tx.stripped:
                tx_bodies.wait_for_bodies(ledger, ep, address)  # the link takes it once they are back
                return None
            if batch is None:
                tx.attach(ep.handle, address, ep.far_service)
                return address
            routed = batch.to_links.get(address)
            if routed is None:
                routed = batch.to_links[address] = []
            routed.append(ep.handle)  # reroute has it out of DELAYED and off any link: it joins this one at the end
            return address
        if kind == "local":
            if ep.handle in tx.stripped:
                tx_bodies.wait_for_bodies(ledger, ep, None)  # routed again once its bodies are read back
                return None
            return self.delivery.new_far_endpoint(ep, now)
        tx.delay(ep.handle, ep.far_service)
        if kind == "resolve":
            # dialog security not decided yet: the binding it may need is asked for with the route (one round trip)
            ep.delayed = self.dynamic.ask(ROUTE, ep.far_service, now, binding_too=ep.secured is None)
        else:
            ep.delayed = decision.reason
        # No record written for the reason alone: loading decides every waiting conversation again and finds its
        # reason afresh (``loading.py``), so a reason stored would never be read; what else changed, the caller saves.
        return None

    def queue_outgoing(self, ep: Endpoint, messages: list[Any], now: float, size: int | None = None) -> None:
        """Number messages and keep them in the transmission queue (remote or DELAYED), stored, in order."""
        ledger = self.ledger
        seq = ep.send_seq
        mid = ledger.next_message_id
        handle = ep.handle
        rows: list[MessageRow] = (
            [(mid + i, TX, handle, seq + i, m[0], m[1], now, 0) for i, m in enumerate(messages)]
            if len(messages[0]) == 2  # no trace context (a traced batch is all triples: Delivery._check_traced)
            else [
                (mid + i, TX, handle, seq + i, m[0], m[1], now, 0, m[2])
                if m[2] is not None
                else (mid + i, TX, handle, seq + i, m[0], m[1], now, 0)
                for i, m in enumerate(messages)
            ]
        )
        ledger.next_message_id = mid + len(rows)
        ep.send_seq = seq + len(rows)
        ledger.tx.add_many(handle, rows, ep.far_service)
        ledger.save_rows(rows, size)

    def drop_outgoing(self, ep: Endpoint) -> int:
        """Forget an endpoint's unacknowledged messages (ended with an error, lifetime over)."""
        tx = self.ledger.tx
        stored = ep.handle in tx.stripped  # some bodies in the store only: not in memory, nor in the budget's count
        rows = tx.drop(ep.handle, ep.far_service)
        self.ledger.forget_rows(rows, in_store=tx_bodies.stored_size(rows) if stored else 0)
        ep.delayed = None
        self.dynamic.binding_waiters.discard(ep.handle)
        return len(rows)

    def reroute(
        self, now: float, services: set[str] | None = None, *, binding_waiters_only: bool = False,
        with_links: bool = False, handles: list[str] | None = None,
    ) -> int:
        """Routes or services changed: decide again for every conversation with messages waiting (only those to
        ``services`` when given; only those that wait for a binding with ``binding_waiters_only``: a binding
        request's outcome changes nothing for a conversation whose route is still unknown; with ``with_links``,
        those DELAYED on ``services`` and every conversation on a link; with ``handles``, those conversations: a
        conversation whose bodies are in the store only waits for them first, ``tx_bodies.py``). Messages whose far
        side is now on this node
        are delivered at once, in order; those routed to another node join its link. Returns how many messages
        moved on either way."""
        ledger = self.ledger
        tx = ledger.tx
        binding_waiters = self.dynamic.binding_waiters
        if binding_waiters_only and not binding_waiters:
            return 0  # nothing waits for a binding (a storm of plain conversations): no walk over those that wait
        moved = 0
        batch = RoutingPass()
        undelayed = False  # whether ``handles`` were all taken out of DELAYED already, in one step per service
        if handles is not None:
            pass  # these, whatever they waited for (their bodies, read back: ``tx_bodies.py``)
        elif services is None:
            handles = list(tx.rows)
        elif binding_waiters_only:
            handles = [h for s in services for h in tx.delayed.get(s, ()) if h in binding_waiters]
        else:  # only those DELAYED on these services: a conversation already on a link keeps it
            handles = [h for s in services for h in tx.undelay_all(s)]
            undelayed = True
            if with_links:
                handles += tx.on_links()
        endpoints = ledger.endpoints
        rows = tx.rows
        route_of = tx.route_of
        route = self.route_anew
        for handle in handles:
            ep = endpoints.get(handle)
            held = rows.get(handle)  # its rows: routing them changes nothing here (one lookup in 100,000, not two)
            if ep is None or ep.far_handle is not None or held is None:
                if undelayed and ep is not None:
                    tx.delay(handle, ep.far_service)  # left as it was (in DELAYED, with nothing to route)
                continue
            if handle in route_of:
                tx.detach(handle)
            if not undelayed:
                tx.undelay(handle, ep.far_service)
            binding_waiters.discard(handle)
            ep.delayed = None  # not stored: a reason is found afresh at load (see ``route``)
            target = route(ep, now, batch)
            if isinstance(target, str) or (target is None and handle in tx.reading):
                # on their way to another node now (or once their bodies are read back: ``tx_bodies.py``)
                moved += len(held) if type(held) is list else 1
            elif target is not None:
                moved += self._move_to_local(ep, target)
        for address, routed in batch.to_links.items():
            tx.attach_many(address, routed)
        return moved

    def _move_to_local(self, ep: Endpoint, far: Endpoint) -> int:
        ledger = self.ledger
        rows = ledger.tx.drop(ep.handle, ep.far_service)
        ledger.forget_rows(rows)
        moved = 0
        deliver = self.delivery.deliver
        for row in rows:
            if ep.state is State.ERROR:
                break  # a message failed the receiving side's checks; what follows it is dropped
            deliver(ep, far, row[ROW_SEQ], row[ROW_TYPE], row[ROW_BODY], row[ROW_ENQUEUED_AT], row_trace(row))
            moved += 1
        ledger.touch(ep)
        if ep.state is State.CLOSED:
            self.conversations.remove(ep)
        return moved

    # ------------------------------------------------------------------------------------------ envelopes out

    def outgoing(self, address: str, max_messages: int, max_bytes: int) -> list[Envelope]:
        """Messages for the link to ``address`` not yet sent on its current connection, as envelopes: at most
        ``max_messages``, within ``max_bytes`` (see ``TransmissionQueue.take_unsent``)."""
        ledger = self.ledger
        out: list[Envelope] = []
        me = ledger.broker_instance
        endpoints = ledger.endpoints
        for handle, row in ledger.tx.take_unsent(address, max_messages, ledger.durable_upto, max_bytes):
            ep = endpoints[handle]
            body: bytes = row[ROW_BODY]
            trace: str | bool | None = row[8] if len(row) > 8 else None
            sealed: Any = False
            if ep.secured:  # sealed as it leaves: the stored row on this end node stays plain
                cipher = self.security.cipher(ep)
                if type(trace) is str:  # the trace context travels inside the seal; the envelope says it is there
                    body = cipher.seal_traced(ep.is_initiator, row[ROW_SEQ], row[ROW_TYPE], body, trace)
                    trace = True
                else:
                    body = cipher.seal(ep.is_initiator, row[ROW_SEQ], row[ROW_TYPE], body)
                sealed = ep.key_header if ep.is_initiator and row[ROW_SEQ] == 0 else True
            env: Envelope = [
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
            if trace is not None:
                env.append(trace)  # the optional 15th field: absent without trace context (older peers' shape)
            out.append(env)
        return out

    # ---------------------------------------------------------------------------------------------- links

    def link_up(self, address: str, peer_instance: str | None) -> None:
        tx = self.ledger.tx
        link = tx.links.get(address)
        if link is not None:
            link.up(peer_instance)
            tx.ready_links.add(address)

    def link_failed(self, address: str, error: str, now: float) -> float | None:
        """A link's connection failed; returns when to try again. Its conversations are routed afresh then (a
        route may have changed, or another of equal rank may serve)."""
        link = self.ledger.tx.links.get(address)
        if link is None:
            return None
        return link.failed(error, now)

    def link_status(self, handle: str, now: float) -> str | None:
        """In words, what is happening to an endpoint's unacknowledged messages, at ``now``."""
        tx = self.ledger.tx
        if handle not in tx:
            return None
        ep = self.ledger.endpoints.get(handle)
        if ep is not None and ep.delayed:
            return f"delayed: {self.dynamic.delayed_words(ep, now)}"
        address = tx.route_of.get(handle)
        link = tx.links.get(address) if address else None
        if link is None:
            return "not yet tried"
        if link.connected:
            return f"sent to {address}, waiting for acknowledgement" if link.sent.get(handle) else f"queued for {address}"
        if link.idle:  # the far node closed the quiet connection; the link connects again for this
            return f"queued for {address}"
        if link.last_error:
            return f"retrying {address}: {link.last_error} (attempt {link.attempts})"
        return f"not yet tried ({address})"
