"""What the shell counts as work passes through it: plain integers, for ``/metrics`` (:mod:`aiobroker.node.monitor`).

Each site that sees a thing happen adds to one field here, once per request or per batch, never per message in a
loop: a send adds its count, a commit its lease's size, a store write its latency to a histogram. Nothing here
walks anything; the gauges (queue depths, DELAYED counts, link states) are read from the node when scraped.

The counters start at zero with the process (Prometheus' convention: a counter that goes back to zero marks a
restart, which ``rate()`` handles).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

#: seconds: store writes (inline ones take ~0.1 ms, fsyncs milliseconds) and resolver answers (up to time-outs)
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: rows per store write
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class Histogram:
    """Observations counted into fixed buckets (upper bounds, as Prometheus' ``le``), with their sum."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count of observations <= le), ..., ("+Inf", count)]``, as the exposition format wants them."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((repr(float(bound)), running))
        out.append(("+Inf", self.count))
        return out


class ResolverCounts:
    """One resolver's questions and how they ended."""

    __slots__ = ("requests", "answers", "failures", "latency")

    def __init__(self) -> None:
        self.requests = 0
        self.answers = 0
        #: by kind: not_found, error, timeout, broken (the resolver broke its contract)
        self.failures: dict[str, int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)


class Counters:
    """The node's counters. One object per node, so that several nodes in one process never mix their numbers."""

    __slots__ = (
        "sent", "received", "committed", "rolled_back", "acknowledged", "retransmitted", "link_failures",
        "link_ack_seconds", "inbound_peers", "resolvers", "store_write_seconds", "store_batch_rows",
        "loop_lag_seconds", "loop_lag_max_seconds", "peer_frames_refused",
    )  # fmt: skip

    def __init__(self) -> None:
        self.sent = 0  #: messages clients sent (accepted by the core)
        self.received = 0  #: messages handed to receivers
        self.committed = 0  #: received messages whose lease was committed
        self.rolled_back = 0  #: received messages whose lease was rolled back
        self.acknowledged = 0  #: this node's messages peer nodes acknowledged (they left the transmission queue)
        #: messages sent on a link that go again because it failed or timed out before their acknowledgement
        self.retransmitted = 0
        self.link_failures: dict[str, int] = {}  #: per next-hop address: connections failed or refused
        #: per next-hop address: the last wait from a send to the acknowledgement that answered it
        self.link_ack_seconds: dict[str, float] = {}
        self.inbound_peers = 0  #: peer nodes connected to this one now
        #: frames of envelopes a peer sent while the node was over its memory budget: refused, the peer resends
        self.peer_frames_refused = 0
        self.resolvers: dict[str, ResolverCounts] = {}
        self.store_write_seconds = Histogram(LATENCY_BUCKETS)
        self.store_batch_rows = Histogram(BATCH_BUCKETS)
        self.loop_lag_seconds = 0.0  #: how late the event loop ran a timer, last measured
        self.loop_lag_max_seconds = 0.0  #: the worst since start

    def resolver(self, name: str) -> ResolverCounts:
        counts = self.resolvers.get(name)
        if counts is None:
            counts = self.resolvers[name] = ResolverCounts()
        return counts
