"""Who may hold one of the node's connections, and for how long.

Theory of operation
-------------------
Every accepted connection is counted by its remote address (the IP address, without the port) until it closes.

- **In its handshake** (before the node answers HELLO) a connection is bounded in time by the handshake time-out,
  and in number: at most ``max_connections + reserved_connections`` in all (as many as could be established), and
  ``max_connections_per_address`` from one address, may be in their handshake at once. Beyond either it is refused at once. Real clients finish the handshake in
  milliseconds, so these bounds only ever stop a flood of connections that say nothing.
- **At HELLO** the node knows who it is (a token's or certificate's identity, or a peer node), and admits it or
  refuses it with REFUSED ``overloaded`` saying which bound was reached:

  * an *ordinary* connection (any client whose identity lacks the ``admin`` right, ``public`` included) while
    fewer than ``max_connections`` connections are established and its address holds fewer than
    ``max_connections_per_address`` ordinary ones;
  * a *privileged* one (a client whose identity has ``admin``, or a peer node) while fewer than
    ``max_connections + reserved_connections`` are established, from any address. So a node full of anonymous
    connections still lets in its operator and the nodes it federates with.

- **Idle**: an established connection on which nothing was received and no write began for ``idle_timeout``
  seconds, and which has nothing in flight (the node asks: a waiting receive, a held lease), is sent REFUSED
  ``idle`` saying so, and closed. A connection whose write has been stuck that long (the far side reads nothing)
  is closed without the farewell, which could not reach it.

Counting is the node's own bookkeeping on the event loop: no locks, one dict entry per address with connections.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Final

import anyio
from anyio import CancelScope
from anyio.abc import TaskGroup

from ..errors import Overloaded
from ..transport.connection import FramedConnection
from ..wire.frames import Refused

log = logging.getLogger("aiobroker.admission")

#: The REFUSED code a node closes an idle connection with.
IDLE: Final = "idle"
#: Seconds the node gives the REFUSED ``idle`` frame to leave before it closes the connection anyway.
FAREWELL_TIMEOUT: Final = 5.0
#: Refused connections are logged at most once per this many seconds (a flood must not flood the log too); the
#: count in between is in the line, and in ``status``.
REFUSAL_LOG_INTERVAL: Final = 60.0

_HANDSHAKING, _ORDINARY, _PRIVILEGED, _GONE = "handshaking", "ordinary", "privileged", "gone"


class Ticket:
    """One connection's place in the count: its address and what it is counted as."""

    __slots__ = ("address", "kind")

    def __init__(self, address: str) -> None:
        self.address = address
        self.kind = _HANDSHAKING

    def __repr__(self) -> str:
        return f"<Ticket {self.address} {self.kind}>"


class Admission:
    """The node's connection slots: handshakes, ordinary and privileged connections, per address; idle closing."""

    def __init__(
        self,
        *,
        max_connections: int,
        reserved_connections: int,
        max_connections_per_address: int,
        idle_timeout: float,
    ) -> None:
        self.max_connections = max_connections
        self.reserved_connections = reserved_connections
        self.max_per_address = max_connections_per_address
        self.idle_timeout = idle_timeout  #: 0: never close a connection for being idle
        self.handshaking = 0
        self.established = 0
        self.privileged = 0
        self._handshaking_from: dict[str, int] = {}
        self._ordinary_from: dict[str, int] = {}
        self.refused = 0
        self.idle_closed = 0
        self._unlogged = 0
        self._logged_at = -REFUSAL_LOG_INTERVAL

    # ------------------------------------------------------------------------------------------------ counting

    def arrive(self, address: str) -> Ticket:
        """A connection was accepted; its ticket, or Overloaded (refuse it at once) if too many are handshaking."""
        if self.handshaking >= self.max_connections + self.reserved_connections:
            raise self._refuse(
                f"the node has {self.handshaking} connections in their handshake, its maximum (max_connections"
                " plus reserved_connections); try again in a few seconds"
            )
        from_there = self._handshaking_from.get(address, 0)
        if from_there >= self.max_per_address:
            raise self._refuse(
                f"{address} has {from_there} connections in their handshake, the maximum per address"
                " (max_connections_per_address); finish those first"
            )
        self.handshaking += 1
        self._handshaking_from[address] = from_there + 1
        return Ticket(address)

    def admit(self, ticket: Ticket, *, privileged: bool) -> None:
        """HELLO is answered: count the connection as established, or raise Overloaded saying which bound."""
        assert ticket.kind == _HANDSHAKING, ticket
        if privileged:
            most = self.max_connections + self.reserved_connections
            if self.established >= most:
                raise self._refuse(
                    f"the node has its maximum of {most} connections (max_connections {self.max_connections} and"
                    f" reserved_connections {self.reserved_connections}, kept for administrators and peer nodes);"
                    " try later"
                )
        else:
            if self.established >= self.max_connections:
                raise self._refuse(
                    f"the node has its maximum of {self.max_connections} connections; try later (the"
                    f" {self.reserved_connections} reserved_connections beyond it are kept for administrators and"
                    " peer nodes)"
                )
            from_there = self._ordinary_from.get(ticket.address, 0)
            if from_there >= self.max_per_address:
                raise self._refuse(
                    f"{ticket.address} has its maximum of {self.max_per_address} connections to this node"
                    " (max_connections_per_address); close some, or share one connection among more requests"
                )
        self._forget_handshake(ticket)
        self.established += 1
        if privileged:
            ticket.kind = _PRIVILEGED
            self.privileged += 1
        else:
            ticket.kind = _ORDINARY
            self._ordinary_from[ticket.address] = self._ordinary_from.get(ticket.address, 0) + 1

    def leave(self, ticket: Ticket) -> None:
        """The connection closed (or was refused): give back its slot. Safe to call more than once."""
        if ticket.kind == _HANDSHAKING:
            self._forget_handshake(ticket)
        elif ticket.kind == _ORDINARY:
            self.established -= 1
            _decrement(self._ordinary_from, ticket.address)
        elif ticket.kind == _PRIVILEGED:
            self.established -= 1
            self.privileged -= 1
        ticket.kind = _GONE

    def _forget_handshake(self, ticket: Ticket) -> None:
        self.handshaking -= 1
        _decrement(self._handshaking_from, ticket.address)

    def _refuse(self, reason: str) -> Overloaded:
        self.refused += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "refused %d connection(s) since the last such line; the latest: %s", self._unlogged, reason
            )
            self._unlogged = 0
            self._logged_at = now
        return Overloaded(reason)

    # ------------------------------------------------------------------------------------------------ idleness

    def watch_idle(self, tg: TaskGroup, conn: FramedConnection, in_flight: Callable[[], bool], who: str) -> None:
        """Start, in the connection's task group, the task that closes it once idle (nothing with idle_timeout 0)."""
        if self.idle_timeout > 0:
            tg.start_soon(self._close_when_idle, conn, in_flight, tg.cancel_scope, who, name=f"idle watch {who}")

    async def _close_when_idle(
        self, conn: FramedConnection, in_flight: Callable[[], bool], scope: CancelScope, who: str
    ) -> None:
        timeout = self.idle_timeout
        looked = -math.inf  # when it was last found busy: idleness counts from then at the earliest
        while True:
            wait = max(conn.last_active, looked) + timeout - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            if in_flight() or (conn.output_waiting and not conn.writing):
                looked = time.monotonic()  # a waiting receive, a lease, a reply about to leave: look again later
                continue
            break
        self.idle_closed += 1
        if conn.writing:
            log.info(
                "closed %s: a write to it made no progress for %g s (idle_timeout)", who, timeout, extra={"peer": conn.peer}
            )
        else:
            log.info(
                "closed %s: idle for %g s with nothing in flight (idle_timeout)", who, timeout, extra={"peer": conn.peer}
            )
            conn.close()  # the writer stops; nothing else may write now
            with anyio.move_on_after(FAREWELL_TIMEOUT):
                await conn.send_last(
                    Refused(
                        code=IDLE,
                        message=(
                            f"the node closed this connection: nothing was sent or received on it for {timeout:g} s"
                            " and nothing was in flight (no request, no waiting receive, no lease) ([limits]"
                            " idle_timeout); connect again when there is something to do"
                        ),
                    )
                )
        scope.cancel()

    # -------------------------------------------------------------------------------------------------- status

    def statistics(self) -> dict[str, int]:
        return {
            "established": self.established,
            "privileged": self.privileged,
            "handshaking": self.handshaking,
            "addresses": len(self._ordinary_from),
            "refused": self.refused,
            "idle_closed": self.idle_closed,
        }

    def __repr__(self) -> str:
        return (
            f"<Admission {self.established}/{self.max_connections}+{self.reserved_connections} established"
            f" ({self.privileged} privileged), {self.handshaking} handshaking>"
        )


def _decrement(counts: dict[str, int], address: str) -> None:
    left = counts.get(address, 0) - 1
    if left > 0:
        counts[address] = left
    else:
        counts.pop(address, None)
