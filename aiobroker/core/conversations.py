"""Conversations: the endpoints' life, from begin to retirement, and the one way each changes state.

Theory of operation
-------------------
This part owns how an endpoint enters and leaves ``Ledger.endpoints``, and every change of its state:

- it joins (begun here, made for a far side on this node, arrived from a peer, loaded after a restart): every such
  place calls :meth:`Conversations.watch` once, which schedules its deadlines (lifetime, timer, retirement) and
  counts it;
- it changes state: only through :meth:`Conversations.transition`, which asks the state table
  (``conversation_states.py``) for the next state and raises ``ForbiddenTransition`` for a row the table does not
  have; its dialog security is decided only through :meth:`Conversations.set_secured`;
- it leaves: only through :meth:`Conversations.remove`; a closed endpoint whose far side is remote is first
  kept ``closed_retention`` seconds (:meth:`Conversations.retire`) to recognise late retransmissions.

Those three doors keep ``state_counts`` and ``secured_count`` exact, so ``status`` reads counters instead of
walking a node's conversations (``tests/test_core_status.py`` compares them with a walk after random mixes of
calls). States change a few times per conversation, never per message; but a node that takes every message on a
new conversation (a resolution storm's receiving node) counts one for each, so the counts are kept per state's
value (a string, whose hash is cached), not per ``State`` (an enum's ``__hash__`` is Python code, ~0.3 us).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConversationError, InvalidArgument, UnknownObject
from ..names import check_name
from .catalog import Service
from .conversation import MAX_LIFETIME, Endpoint, State
from .conversation_states import STARTS, Event, next_state
from .deadlines import DeadlineKind
from .ledger import Ledger

#: How long a closed endpoint with a remote far side is kept to recognise retransmissions (the seeds' system keeps
#: them for about half an hour).
DEFAULT_CLOSED_RETENTION = 1800.0

#: Lifetimes ending further away than this (50 years) get no deadline while the process runs (see
#: :meth:`Conversations.watch`).
LIFETIME_HORIZON = 50 * 365 * 86400.0


#: the state of an endpoint begun here, and ``State.CLOSED``: looked up once (a member read from its enum class goes
#: through the metaclass, and a lookup in ``STARTS`` hashes an enum, in Python), as every conversation reads them
_BEGUN = STARTS[Event.BEGIN]
_CLOSED = State.CLOSED

#: how many far service names :class:`Conversations` keeps to share (a bound: names are whatever clients send)
MAX_SHARED_NAMES = 100_000


class Conversations:
    """The endpoints' life and states (see the module's header)."""

    def __init__(self, ledger: Ledger, *, closed_retention: float = DEFAULT_CLOSED_RETENTION) -> None:
        self.ledger = ledger
        self.closed_retention = closed_retention
        #: how many endpoints are in each state, by the state's value (see the module's header; ``state_counts``)
        self._counts: dict[str, int] = {state._value_: 0 for state in State}
        #: how many endpoints are secured (dialog security's ``secured_conversations``)
        self.secured_count = 0
        #: far service names seen, each kept as one string shared by every conversation to it (a name decoded from
        #: a request is a new string each time: 100,000 conversations to 1,000 services held 100,000 copies)
        self._far_names: dict[str, str] = {}
        #: the default lifetime's end for conversations begun within one second: (that second, the end), one float
        #: shared by them all rather than one each (32 bytes of each of 100,000 DELAYED conversations; the default
        #: lifetime is 68 years, so a second less is nothing)
        self._default: tuple[int, float] = (0, 0.0)

    @property
    def state_counts(self) -> dict[State, int]:
        """How many endpoints are in each state (every state present, zero or not), for ``status``."""
        counts = self._counts
        return {state: counts[state._value_] for state in State}

    def _default_end(self, now: float) -> float:
        """When a conversation begun now without a lifetime ends: ``now + MAX_LIFETIME``, to the second."""
        second = int(now)
        if self._default[0] != second:
            self._default = (second, second + MAX_LIFETIME)
        return self._default[1]

    # ---------------------------------------------------------------------------------------------- lookup

    def endpoint(self, handle: Any) -> Endpoint:
        """This node's endpoint ``handle``; a clear error if it ended or never was."""
        ledger = self.ledger
        ep = ledger.endpoints.get(handle) if isinstance(handle, str) else None
        if ep is None:
            if handle in ledger.recently_closed:
                raise ConversationError(f"conversation {handle} has ended on this side")
            raise UnknownObject(f"conversation {handle!r} does not exist (it may have ended long ago)")
        return ep

    # ------------------------------------------------------------------------------------------------- begin

    def begin_dialog(
        self,
        *,
        from_service: str,
        to_service: str,
        contract: str,
        now: float,
        broker_instance: str | None = None,
        lifetime: float | None = None,
        encryption: bool = False,
        related_group: str | None = None,
    ) -> Endpoint:
        ledger = self.ledger
        service: Service = ledger.catalog.get("service", check_name("service", from_service))
        check_name("service", to_service)
        contract = ledger.catalog.get("contract", check_name("contract", contract)).name  # the catalog's string
        names = self._far_names
        to_service = names.get(to_service) or (
            names.setdefault(to_service, to_service) if len(names) < MAX_SHARED_NAMES else to_service)
        if lifetime is None:
            expires_at = self._default_end(now)
        elif not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or not 0 < lifetime <= MAX_LIFETIME:
            raise InvalidArgument(f"lifetime must be a number of seconds in (0, {MAX_LIFETIME:.0f}], got {lifetime!r}")
        else:
            expires_at = now + lifetime
        group = related_group
        if group is not None and not isinstance(group, str):
            raise InvalidArgument("related_group must be a conversation group id (a string)")
        handle = ledger.new_id()
        ep = Endpoint.new(
            handle,
            ledger.new_id(),  # conversation_id
            True,  # is_initiator
            service.name,
            to_service,  # far_service
            contract,
            group or handle,  # group_id: a group of its own is named by its handle (one string, docs/semantics.md)
            expires_at,
            None,  # far_handle
            broker_instance,  # far_broker_instance
            _BEGUN,
            bool(encryption),
            None,  # secured: decided when the far side is first found on another node
            None,  # far_identity
        )
        self.join(ep, now)
        return ep

    def join(self, ep: Endpoint, now: float | None = None) -> None:
        """A new endpoint joins: into ``endpoints``, saved, scheduled and counted."""
        self.ledger.add_endpoint(ep)
        self.watch(ep, now)

    def watch(self, ep: Endpoint, now: float | None = None) -> None:
        """An endpoint has just joined ``endpoints`` (begun, made for a far side here, arrived from a peer, or
        loaded): schedule its deadlines, and count it. Every place that adds an endpoint calls this, once.

        Given ``now``, a lifetime ending more than :data:`LIFETIME_HORIZON` away is not scheduled: a conversation
        begun without a lifetime ends in 68 years (the seeds' maximum), and a heap entry for it cost 73 bytes per
        conversation (a DELAYED storm holds 100,000) for a deadline no node process lives to see. Loading
        schedules every lifetime again at the next start."""
        self._counts[ep.state._value_] += 1
        if ep.secured:
            self.secured_count += 1
        deadlines = self.ledger.deadlines
        if ep.state is _CLOSED:
            if ep.timer_at is not None:  # a retired endpoint: the field holds when it goes for good
                deadlines.push(ep.timer_at, DeadlineKind.RETIRE, ep.handle)
            return
        if now is None or ep.expires_at - now <= LIFETIME_HORIZON:
            deadlines.push(ep.expires_at, DeadlineKind.LIFETIME, ep.handle)
        if ep.timer_at is not None:
            deadlines.push(ep.timer_at, DeadlineKind.TIMER, ep.handle)

    # ------------------------------------------------------------------------------------------------ change

    def transition(self, ep: Endpoint, event: Event) -> None:
        """Change an endpoint's state as the state table says ``event`` does (raising ForbiddenTransition if it has
        no such row), keeping the per-state counts. The only way the core changes a state."""
        state = next_state(ep.handle, ep.state, event)
        if self.ledger.endpoints.get(ep.handle) is ep:  # one no longer (or not yet) in ``endpoints`` is not counted
            counts = self._counts
            counts[ep.state._value_] -= 1
            counts[state._value_] += 1
        ep.state = state

    def set_secured(self, ep: Endpoint, secured: bool) -> None:
        """Decide an endpoint's dialog security, keeping ``secured_count``. The only way the core sets it."""
        if secured != (ep.secured is True) and self.ledger.endpoints.get(ep.handle) is ep:
            # (no int() or bool() calls: a release decides 100,000 at once, mostly from None to False, no change)
            self.secured_count += 1 if secured else -1
        ep.secured = secured

    def begin_timer(self, handle: str, seconds: float, now: float) -> None:
        ep = self.endpoint(handle)
        if ep.state is State.CLOSED:
            raise ConversationError(f"conversation {handle} has ended on this side; it takes no timer")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= MAX_LIFETIME:
            raise InvalidArgument(f"timer seconds must be a number from 0 to {MAX_LIFETIME:.0f}, got {seconds!r}")
        ep.timer_at = now + seconds
        self.ledger.touch(ep)
        self.ledger.deadlines.push(ep.timer_at, DeadlineKind.TIMER, ep.handle)

    # -------------------------------------------------------------------------------------------------- leave

    def retire(self, ep: Endpoint, now: float) -> None:
        """A closed endpoint with nothing left to send: gone now if its far side is on this node (or never heard
        of it); kept ``closed_retention`` seconds if remote, to recognise late retransmissions."""
        remote = ep.far_handle is None and (ep.send_seq > 0 or ep.recv_seq > 0)
        if not remote or self.closed_retention <= 0:
            self.remove(ep)
            return
        retire_at = now + self.closed_retention
        ep.timer_at = retire_at  # a closed endpoint has no timer: the field holds its retirement time
        self.ledger.touch(ep)
        self.ledger.deadlines.push(retire_at, DeadlineKind.RETIRE, ep.handle)

    def remove(self, ep: Endpoint) -> None:
        """The only way an endpoint leaves ``endpoints``."""
        ledger = self.ledger
        gone = ledger.endpoints.pop(ep.handle, None)
        if gone is not None:
            self._counts[gone.state._value_] -= 1
            if gone.secured:
                self.secured_count -= 1
        ledger.ciphers.pop(ep.handle, None)
        ledger.by_conversation.pop((ep.conversation_id, ep.is_initiator), None)
        ledger.tx.detach(ep.handle)
        if ledger.persist:
            ledger.dirty[ep.handle] = None
        ledger.remember_closed(ep.handle)
