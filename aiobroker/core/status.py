"""What the core reports about itself: the ``status`` numbers, the transmission queue in words, and the facts about
each conversation a receiver is handed with its messages.

Theory of operation
-------------------
``status`` may be asked for at any time on a node holding a great many conversations, so :meth:`Status.statistics`
reads counters rather than walking every endpoint. The one count kept here is endpoints per state
(``_state_counts``), and how many are secured (``secured_count``). They stay exact because an endpoint's count
changes in only three places, all in this core:

- it joins ``endpoints`` (begun, made for a far side on this node, arrived from a peer, or loaded after a restart):
  every such place calls ``BrokerCore._watch``, which calls :meth:`Status._count_joined`;
- it changes state: every state change goes through :meth:`Status._transition`, which asks the state table
  (``conversation_states.py``) for the next state (``broker.py`` is the only module that changes an endpoint's
  state; a new ``ep.state = ...`` elsewhere would make the counts drift, which
  ``tests/test_core_status.py`` would catch by comparing them with a walk); likewise its dialog security is decided
  through :meth:`Status._set_secured`;
- it leaves ``endpoints``: only ``BrokerCore._remove`` removes one, and calls :meth:`Status._count_left`.

States change a few times per conversation, never per message, so the counting costs the hot path nothing.

This module owns the reporting and that counter; the numbers of the other parts come from their own
``statistics`` (queues, the transmission queue, the catalog, dynamic routing, dialog security), which keep their
message counts the same way: the transmission queue its messages (``message_count``), each queue its locked and
retained ones (``locked``, ``retained_count``), each changed where the rows come and go, in the module that owns
them. What still walks: each link's line (its conversations, for its unacknowledged messages), the first 100
transmission entries, and the ``delayed`` section, which walks the DELAYED conversations for the reason each waits.
``tests/test_core_status.py`` checks every counter against a walk after each step of a random mix of calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .catalog import Catalog
from .conversation import Endpoint, State
from .conversation_states import Event, next_state
from .queues import Lease, MessageQueue
from .records import ROW_HANDLE, ROW_SEQ, MessageRow
from .transmission import TransmissionQueue


class Status:
    """Mixed into :class:`~aiobroker.core.broker.BrokerCore`; uses its state (declared for the type checker)."""

    broker_instance: str
    catalog: Catalog
    endpoints: dict[str, Endpoint]
    queues: dict[str, MessageQueue]
    tx: TransmissionQueue
    leases: dict[int, Lease]
    #: how many of ``endpoints`` are in each state (every state present, zero or not): ``statistics`` reads this
    #: instead of walking the endpoints
    _state_counts: dict[State, int]
    #: how many of ``endpoints`` are secured (dialog security's ``secured_conversations``)
    secured_count: int

    if TYPE_CHECKING:  # provided by Federation, DynamicRouting and DialogSecurity; declared for the type checker
        # only (a stub here would shadow the real method later in the MRO)

        def link_status(self, handle: str, now: float) -> str | None: ...
        def delayed_words(self, ep: Endpoint, now: float) -> str | None: ...
        def dynamic_statistics(self, now: float) -> dict[str, Any]: ...
        def security_statistics(self) -> dict[str, Any]: ...

    # ------------------------------------------------------------------------------------ counting endpoints

    def _count_joined(self, ep: Endpoint) -> None:
        """``ep`` was just put in ``endpoints``."""
        self._state_counts[ep.state] += 1
        if ep.secured:
            self.secured_count += 1

    def _count_left(self, ep: Endpoint) -> None:
        """``ep`` was just taken out of ``endpoints``."""
        self._state_counts[ep.state] -= 1
        if ep.secured:
            self.secured_count -= 1

    def _set_secured(self, ep: Endpoint, secured: bool) -> None:
        """Decide an endpoint's dialog security, keeping ``secured_count``. The only way the core sets it."""
        if self.endpoints.get(ep.handle) is ep:
            self.secured_count += int(secured) - int(bool(ep.secured))
        ep.secured = secured

    def _transition(self, ep: Endpoint, event: Event) -> None:
        """Change an endpoint's state as the state table says ``event`` does (raising ForbiddenTransition if it has
        no such row), keeping the per-state counts. The only way the core changes a state."""
        state = next_state(ep.handle, ep.state, event)
        if self.endpoints.get(ep.handle) is ep:  # one no longer (or not yet) in ``endpoints`` is not counted
            counts = self._state_counts
            counts[ep.state] -= 1
            counts[state] += 1
        ep.state = state

    # --------------------------------------------------------------------------------------------- reporting

    def conversations_of(self, rows: Iterable[MessageRow]) -> dict[str, list[Any]]:
        """Per-conversation facts for a batch of received messages, sent once per batch, not per message."""
        out: dict[str, list[Any]] = {}
        endpoints = self.endpoints
        for row in rows:
            handle = row[ROW_HANDLE]
            if handle not in out:
                ep = endpoints.get(handle)
                if ep is not None:
                    out[handle] = [
                        ep.service,
                        ep.far_service,
                        ep.contract,
                        ep.group_id,
                        ep.is_initiator,
                        ep.conversation_id,
                    ]
        return out

    def transmission_entries(self, now: float, limit: int = 100) -> list[dict[str, Any]]:
        """The transmission queue per conversation, oldest first, with its state in words (for ``status``)."""
        out: list[dict[str, Any]] = []
        for handle, rows in self.tx.rows.items():
            if len(out) >= limit:
                break
            ep = self.endpoints.get(handle)
            address = self.tx.route_of.get(handle)
            link = self.tx.links.get(address) if address else None
            out.append(
                {
                    "handle": handle,
                    "far_service": ep.far_service if ep else None,
                    "messages": len(rows),
                    "first_seq": rows[0][ROW_SEQ] if rows else None,
                    "state": self.link_status(handle, now),
                    "address": address,
                    "last_error": link.last_error if link else None,
                    "next_attempt": link.next_attempt if link else None,
                }
            )
        return out

    def statistics(self, now: float = 0.0) -> dict[str, Any]:
        # states with no endpoint are left out, as a count by walking the endpoints would leave them out
        by_state = {state.value: n for state, n in self._state_counts.items() if n}
        # walks the DELAYED conversations only (their messages are counted per service by the transmission queue)
        delayed = {
            service: {
                "conversations": len(handles),
                "messages": self.tx.delayed_count.get(service, 0),
                # when the node asks again is computed at ``now`` (dynamic_routing.services has the instant itself)
                "reason": next((self.delayed_words(self.endpoints[h], now) for h in handles if h in self.endpoints), None),
            }
            for service, handles in self.tx.delayed.items()
        }
        return {
            "broker_instance": self.broker_instance,
            "conversations": len(self.endpoints),
            "conversations_by_state": by_state,
            "queues": [q.statistics() for q in self.queues.values()],
            "delayed": delayed,
            "transmission": {**self.tx.statistics(), "entries": self.transmission_entries(now)},
            "leases": len(self.leases),
            "objects": self.catalog.statistics(),
            "dynamic_routing": self.dynamic_statistics(now),
            "security": self.security_statistics(),
        }
