"""What the core reports about itself: the ``status`` numbers, the transmission queue in words, and the facts about
each conversation a receiver is handed with its messages.

Theory of operation
-------------------
``status`` may be asked for at any time on a node holding a great many conversations, so :meth:`Status.statistics`
reads counters rather than walking every endpoint: the endpoints per state and the secured ones
(``Conversations.state_counts`` and ``secured_count``, kept exact by the three doors an endpoint passes, see
``conversations.py``), each queue's messages, locked and retained ones, the transmission queue's messages, the
catalog's objects, dynamic routing's and dialog security's counts, each kept where its rows come and go, in the
module that owns them. What still walks: each link's line (its conversations, for its unacknowledged messages), the
first 100 transmission entries, and the ``delayed`` section, which walks the DELAYED conversations for the reason
each waits. ``tests/test_core_status.py`` checks every counter against a walk after each step of a random mix of
calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .conversations import Conversations
from .ledger import Ledger
from .parts import DynamicPart, OutboundPart, ReceivingPart, SecurityPart
from .records import ROW_HANDLE, ROW_SEQ, MessageRow


class Status:
    """The ``status`` report (see the module's header)."""

    outbound: OutboundPart
    dynamic: DynamicPart
    security: SecurityPart
    receiving: ReceivingPart

    def __init__(self, ledger: Ledger, conversations: Conversations) -> None:
        self.ledger = ledger
        self.conversations = conversations

    # --------------------------------------------------------------------------------------------- reporting

    def conversations_of(self, rows: Iterable[MessageRow]) -> dict[str, list[Any]]:
        """Per-conversation facts for a batch of received messages, sent once per batch, not per message."""
        out: dict[str, list[Any]] = {}
        endpoints = self.ledger.endpoints
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

    def compact_facts(self, rows: Iterable[MessageRow]) -> list[Any]:
        """:meth:`conversations_of` in the form a client may ask for (docs/protocol.md): one flat list of six items
        per conversation, in the order of its first row: its service, far service, contract, group id (None: its
        handle, as a conversation in a group of its own), is_initiator, and conversation id; a conversation that
        ended meanwhile has None for all six. A batch of a thousand one-message conversations decodes in half the
        time the map takes (no map, no list and no handle per conversation), and is made faster too."""
        facts: list[Any] = []
        seen: set[str] = set()
        endpoints = self.ledger.endpoints
        for row in rows:
            handle = row[ROW_HANDLE]
            if handle in seen:
                continue
            seen.add(handle)
            ep = endpoints.get(handle)
            if ep is None:
                facts += (None, None, None, None, None, None)
                continue
            group = ep.group_id
            facts += (ep.service, ep.far_service, ep.contract, None if group == handle else group, ep.is_initiator,
                      ep.conversation_id)
        return facts

    def transmission_entries(self, now: float, limit: int = 100) -> list[dict[str, Any]]:
        """The transmission queue per conversation, oldest first, with its state in words (for ``status``)."""
        out: list[dict[str, Any]] = []
        tx = self.ledger.tx
        for handle in tx.rows:
            if len(out) >= limit:
                break
            rows = tx.rows_of(handle)
            ep = self.ledger.endpoints.get(handle)
            address = self.ledger.tx.route_of.get(handle)
            link = self.ledger.tx.links.get(address) if address else None
            out.append(
                {
                    "handle": handle,
                    "far_service": ep.far_service if ep else None,
                    "messages": len(rows),
                    "first_seq": rows[0][ROW_SEQ] if rows else None,
                    "state": self.outbound.link_status(handle, now),
                    "address": address,
                    "last_error": link.last_error if link else None,
                    "next_attempt": link.next_attempt if link else None,
                }
            )
        return out

    def statistics(self, now: float = 0.0) -> dict[str, Any]:
        # states with no endpoint are left out, as a count by walking the endpoints would leave them out
        by_state = {state.value: n for state, n in self.conversations.state_counts.items() if n}
        # walks the DELAYED conversations only (their messages are counted per service by the transmission queue)
        delayed = {
            service: {
                "conversations": len(handles),
                "messages": self.ledger.tx.delayed_count.get(service, 0),
                # when the node asks again is computed at ``now`` (dynamic_routing.services has the instant itself)
                "reason": next((self.dynamic.delayed_words(self.ledger.endpoints[h], now) for h in handles if h in self.ledger.endpoints), None),
            }
            for service, handles in self.ledger.tx.delayed.items()
        }
        return {
            "broker_instance": self.ledger.broker_instance,
            "conversations": len(self.ledger.endpoints),
            "conversations_by_state": by_state,
            "queues": [q.statistics() for q in self.ledger.queues.values()],
            "delayed": delayed,
            "transmission": {**self.ledger.tx.statistics(), "entries": self.transmission_entries(now)},
            "leases": len(self.receiving.leases),
            "memory": self.ledger.budget.statistics(),
            "objects": self.ledger.catalog.statistics(),
            "dynamic_routing": self.dynamic.dynamic_statistics(now),
            "security": self.security.statistics(),
        }
