"""Dialog security in the core: remote service bindings, the encryption choice table, session keys, and sealing
and opening message bodies between two end nodes (docs/security.md).

Theory of operation
-------------------
Dialog security is decided once per conversation, when routing first finds its far side on another node
(:meth:`DialogSecurity.secure`, called from ``Outbound.route``): with a binding for the far service the
conversation is *secured* (a session key is made, wrapped for the binding's certificate and signed by the local
identity); without one, the choice table decides: fail at once (``encryption=True``, no dynamic routing), go
plain, or wait DELAYED while the dispatcher asks for a binding (``MissingRemoteServiceBinding``, one request per
service in flight, a failed request remembered for ``binding_failure_cache`` seconds). Within one node nothing is
ever encrypted.

Bodies are sealed when a link takes them (``Outbound.outgoing``: the stored rows stay plain on this end node) and
opened when they arrive (``Inbound._accept_run``), before any check sees them. A message whose key header,
signature or body does not verify is dropped without an acknowledgement and reported: the sender resends, and an
honest copy gets through. A verified initiator who may not use the service is refused with an ``Error``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from ..durations import duration
from ..errors import SecurityError
from ..security.certs import check_current, credentials_from_der
from ..security.dialog import DialogCipher, new_session_key, sign_header, unwrap_key, verify_header, wrap_key
from ..tracecontext import valid_trace
from .conversation import Endpoint
from .conversations import Conversations
from .dialog_errors import BrokerErrorCode, Refusal
from .dispatcher import BINDING
from .effects import Report
from .identities import PUBLIC, Binding, require_signer
from .ledger import Ledger
from .parts import DynamicPart, EndingsPart

if TYPE_CHECKING:
    from aiobroker.resolver import BindingAnswer

class DialogSecurity:
    """Bindings, session keys, sealing and opening (see the module's header)."""

    dynamic: DynamicPart
    endings: EndingsPart

    def __init__(
        self,
        ledger: Ledger,
        conversations: Conversations,
        *,
        authorization: bool = False,
        resolver_answers_bindings: bool = False,
    ) -> None:
        self.ledger = ledger
        self.conversations = conversations
        #: check rights per identity (docs/security.md); off: everyone may do everything
        self.authorization = authorization
        #: the resolver (if any) answers MissingRemoteServiceBinding too (the shell sets it from the resolver)
        self.resolver_answers_bindings = resolver_answers_bindings
        #: what dialog security dropped or refused, by kind (``status``)
        self.counts: dict[str, int] = {}

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # ------------------------------------------------------------------------------------------- initiator

    def secure(self, ep: Endpoint, now: float, plain: set[str] | None = None) -> bool:
        """The far side is on another node and dialog security is not decided yet: decide it (the choice table
        in docs/security.md). True: go on (secured or plain). False: the conversation waits (DELAYED, in the
        transmission queue's delayed set, ``ep.delayed`` says why) or has failed (it has its Error).

        ``plain``: while many conversations are routed at once (a release), the services whose conversations
        without ``encryption`` were found to go plain: the table gives the next one the same answer, so it is not
        walked again for each of 100,000 conversations. It holds for one pass: a plain answer means no binding
        request can start for the service (the resolver answers none, or the last one failed and is remembered),
        and nothing in a pass makes a binding."""
        service = ep.far_service
        if plain is not None and not ep.encryption and service in plain:
            return self._go_plain(ep)
        binding = self.ledger.catalog.binding_for(service, now)
        if binding is not None:
            try:
                self._start_session(ep, binding, now)
            except SecurityError as exc:
                self.endings.fail(ep, BrokerErrorCode.SECURITY, exc.message, now)
                return False
            return True
        if not self.binding_requests:
            if ep.encryption:
                self.endings.fail(
                    ep,
                    BrokerErrorCode.SECURITY,
                    f"the conversation requires encryption, but there is no remote service binding for service"
                    f" {service!r} and no dynamic routing (a resolver or a route to the Broker Configuration Notice"
                    " service) to ask for one; create a binding (aiobroker create binding) or begin the dialog"
                    " with encryption=False",
                    now,
                )
                return False
            if plain is not None:
                plain.add(service)
            return self._go_plain(ep)
        d = self.dynamic.dispatcher
        if (BINDING, service) in d.in_flight or d.should_ask(BINDING, service, now):
            self._wait(ep, self.dynamic.ask(BINDING, service, now))
            return False
        # the last request ended without a binding, and is remembered until the node asks again
        if ep.encryption:
            self._wait(ep, self.dynamic.waiting_reason(BINDING, service, now))
            return False
        if plain is not None:
            plain.add(service)
        return self._go_plain(ep)

    def binding_wanted(self, service: str, now: float) -> bool:
        """Whether a conversation to ``service`` whose route is unknown will need a binding request once the route
        comes: there is no binding for the service, one can be asked for, and none is in flight or remembered as
        failed. Dynamic routing then asks for both at once (``DynamicRouting.ask``); the choice table still applies
        when the route comes (``secure``), to whatever the binding request gave by then."""
        if not self.binding_requests or self.ledger.catalog.binding_for(service, now) is not None:
            return False
        return self.dynamic.dispatcher.should_ask(BINDING, service, now)

    @property
    def binding_requests(self) -> bool:
        """Whether a missing binding can be asked for: the configured resolver answers binding requests, or (with
        no resolver) the Broker Configuration Notice service is reachable, as in the seeds."""
        if self.dynamic.resolver_name is not None:
            return self.resolver_answers_bindings
        return self.dynamic.dynamic_routing

    def _wait(self, ep: Endpoint, reason: str) -> None:
        self.ledger.tx.delay(ep.handle, ep.far_service)
        self.dynamic.binding_waiters.add(ep.handle)
        ep.delayed = reason  # not stored: loading decides it again (``Outbound.route``)

    def _go_plain(self, ep: Endpoint) -> bool:
        self.conversations.set_secured(ep, False)
        if ep.far_broker_instance is not None:
            self.ledger.touch(ep)
        # else the decision goes with the conversation's next record, at the latest its first acknowledgement's
        # (which learns the far broker instance): not a record of its own for each of a release's 100,000
        # conversations. Links never waited for this one (docs/semantics.md, dynamic routing: a node that stops
        # before it is written decides again), so a stop meanwhile is the same case, over a few more milliseconds.
        return True

    def _start_session(self, ep: Endpoint, binding: Binding, now: float) -> None:
        creds = binding.creds
        assert creds is not None  # a built binding always has parsed credentials
        check_current(creds, now, what=f"binding {binding.name!r} for service {binding.to_service!r}: certificate")
        key = new_session_key()
        wrapped = wrap_key(key, creds.certificate)
        header: list[Any] = [wrapped, None, None]
        if not binding.anonymous:
            name = binding.identity or self.ledger.catalog.node_identity
            signer = require_signer(self.ledger.catalog.identities.get(name) if name else None, name, f"binding {binding.name!r}")
            assert signer.creds is not None
            check_current(signer.creds, now, what=f"identity {signer.name!r}")
            header[1] = signer.creds.der
            header[2] = sign_header(
                signer.creds.private_key,
                conversation_id=ep.conversation_id,
                from_service=ep.service,
                to_service=ep.far_service,
                wrapped_key=wrapped,
            )
        self.conversations.set_secured(ep, True)
        ep.session_key = key
        ep.key_header = header
        self.ledger.touch(ep)

    def cipher(self, ep: Endpoint) -> DialogCipher:
        c = self.ledger.ciphers.get(ep.handle)
        if c is None:
            assert ep.session_key is not None
            c = self.ledger.ciphers[ep.handle] = DialogCipher(ep.session_key, ep.conversation_id)
        return c

    # ---------------------------------------------------------------------------------------------- target

    def accept_key_header(self, env: list[Any], now: float) -> tuple[bytes, str, Refusal | None]:
        """A secured conversation's first message: read its session key with the target service owner's key and
        check who sent it. Returns (session key, initiator identity, refusal or None). Raises SecurityError when
        the header cannot be trusted (the message is then dropped, not acknowledged)."""
        header, conv_id, from_service, to_service = env[13], env[1], env[4], env[5]
        if not (
            len(header) == 3
            and isinstance(header[0], bytes)
            and (header[1] is None or isinstance(header[1], bytes))
            and (header[2] is None or isinstance(header[2], bytes))
            and (header[1] is None) == (header[2] is None)
        ):
            raise SecurityError("its key header is malformed")
        wrapped, cert_der, signature = header
        owner = self.ledger.catalog.owner_of(to_service)
        if owner is None or owner.creds is None or owner.creds.private_key is None:
            raise SecurityError(
                f"service {to_service!r} has no owner identity with a private key here (and the node has no"
                " [security] identity), so it cannot read session keys; give the service an owner"
            )
        try:
            key = unwrap_key(wrapped, owner.creds.private_key)
        except SecurityError as exc:
            raise SecurityError(
                f"its session key cannot be read with the key of identity {owner.name!r}, the owner of"
                f" {to_service!r} ({exc.message}): the initiator's binding names another certificate, or the"
                " header was altered"
            ) from exc
        identity, refusal = PUBLIC, None
        if cert_der is not None:
            creds = credentials_from_der(cert_der, what="the initiator's certificate")
            verify_header(
                creds.certificate, signature, conversation_id=conv_id, from_service=from_service,
                to_service=to_service, wrapped_key=wrapped,
            )
            try:
                check_current(creds, now, what=f"the initiator's certificate ({creds.subject})")
            except SecurityError as exc:
                refusal = (BrokerErrorCode.SECURITY, exc.message)
            known = self.ledger.catalog.identity_by_fingerprint(creds.fingerprint)
            identity = known.name if known is not None else PUBLIC
        return key, identity, refusal

    def authorize_initiator(self, identity: str, to_service: str) -> Refusal | None:
        if self.authorization and not self.ledger.catalog.may(identity, "send", to_service):
            return (
                BrokerErrorCode.NOT_AUTHORIZED,
                f"identity {identity!r} may not send to service {to_service!r} on this node",
            )
        return None

    def open_run(self, ep: Endpoint, envelopes: list[Any], start: int, stop: int) -> int:
        """Open the sealed bodies of a run for ``ep`` in place (only those not yet delivered); returns where the
        run must stop: at the first message that fails (it and what follows are dropped, unacknowledged)."""
        secured = bool(ep.secured)
        cipher = self.cipher(ep) if secured else None
        from_initiator = not ep.is_initiator
        expect = ep.recv_seq
        for k in range(start, stop):
            env = envelopes[k]
            seq = env[3]
            if seq < expect:
                continue  # a duplicate: acknowledged again, never delivered
            sealed = env[13]
            if cipher is None:
                if sealed is False or sealed is None:
                    continue
                why = "it is sealed, but the conversation is not secured here"
            elif sealed is False or sealed is None:
                why = "it is plain, but the conversation is secured (a downgrade)"
            elif len(env) == 14:
                try:
                    env[10] = cipher.open(from_initiator, seq, env[9], env[10])
                    continue
                except SecurityError as exc:
                    why = exc.message
            elif env[14] is True:
                try:
                    body, trace = cipher.open_traced(from_initiator, seq, env[9], env[10])
                    if valid_trace(trace):
                        env[10], env[14] = body, trace
                        continue
                    why = "the trace context sealed with it is not W3C trace context"
                except SecurityError as exc:
                    why = exc.message
            else:  # this node seals trace context on a secured conversation: a plain one was added on the way
                why = "its trace context travels outside the seal on a secured conversation"
            self.count("dropped")
            self.ledger.outbox.append(Report(
                f"message {seq} of conversation {ep.conversation_id} from service {ep.far_service!r} failed"
                f" dialog security ({why}); dropped, not acknowledged"
            ))
            return k
        return stop

    # ----------------------------------------------------------------------------------------- answers

    def binding_resolved(self, service: str, answer: BindingAnswer, now: float) -> int:
        """A resolver's binding for ``service``: replace its earlier one, then release what waits. A binding
        that cannot be built (a certificate that does not parse, an unknown identity) fails the request."""
        origin = self.dynamic.resolver_name or "resolver"
        # named by a digest of the service, as resolver routes are: any service name gives a valid, short name
        name = f"{origin}/{hashlib.sha1(service.encode()).hexdigest()[:12]}"
        definition = {
            "name": name,
            "to_service": service,
            "certificate": answer.certificate,
            "identity": answer.identity,
            "anonymous": answer.anonymous,
            "origin": origin,
            "lifetime": answer.lifetime,
        }
        try:
            old = self.ledger.catalog.bindings.get(name)
            if old is not None:
                self.ledger.catalog.remove_binding(name)
            binding = self.ledger.catalog.build("binding", definition, now)
        except Exception as exc:  # BrokerError from the checks; say it in the request's outcome
            if old is not None:
                self.ledger.catalog.put_binding(old)
            text = f"the {origin} resolver's binding for {service!r} cannot be used: {getattr(exc, 'message', exc)}"
            self.ledger.outbox.append(Report(text))
            return self.dynamic.request_done(BINDING, service, now, ok=False, text=text)
        assert isinstance(binding, Binding)
        self.ledger.catalog.put_binding(binding)
        self.ledger.save_object("binding", binding, binding.name)
        source = f" from {answer.source}" if answer.source else ""
        text = f"binding{source} ({'anonymous' if answer.anonymous else 'signed'}), valid for {duration(answer.lifetime)}"
        return self.dynamic.request_done(BINDING, service, now, ok=True, text=text)

    def statistics(self) -> dict[str, Any]:
        return {
            "authorization": self.authorization,
            "node_identity": self.ledger.catalog.node_identity,
            "identities": len(self.ledger.catalog.identities),
            "bindings": len(self.ledger.catalog.bindings),
            "secured_conversations": self.conversations.secured_count,
            "messages_dropped": self.counts.get("dropped", 0),
            "first_messages_dropped": self.counts.get("first_dropped", 0),
            "refused": self.counts.get("refused", 0),
        }
