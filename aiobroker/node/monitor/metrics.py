"""``/metrics``: the node's numbers in Prometheus' text format, through ``prometheus-client``.

One :class:`NodeCollector` per node, registered in a registry of its own (never the library's global one), so that
several nodes in one process each show their own. It reads when scraped: the counters the shell keeps as things
happen (:mod:`aiobroker.node.counters`), and the gauges (queue depths, DELAYED messages, link states) from the node
as they are at that moment (:mod:`aiobroker.node.monitor.readings`). Nothing is computed per message.

Names follow Prometheus' conventions: the ``aiobroker_`` prefix, ``_total`` on counters, seconds and bytes as
units, and labels whose values are bounded: queue, service (at most 200, the rest as ``(others)``), resolver,
peer (next-hop address), and small fixed sets (state, reason, kind). docs/monitoring.md lists every metric.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..counters import Histogram
from . import readings
from .host import Monitored

LINK_STATES = ("connected", "idle", "retrying", "not_tried")


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _histogram(
    family: HistogramMetricFamily, labels: list[str], histogram: Histogram
) -> HistogramMetricFamily:
    family.add_metric(labels, histogram.cumulative(), histogram.sum)
    return family


class NodeCollector(Collector):
    def __init__(self, node: Monitored) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        reason = node.not_ready()
        yield _gauge("aiobroker_ready", "1 when the node serves clients (as /readyz says), else 0", reason is None)
        c = node.counters
        yield _gauge("aiobroker_event_loop_lag_seconds", "How late the event loop ran a timer, last measured",
                     c.loop_lag_seconds)
        yield _gauge("aiobroker_event_loop_lag_max_seconds", "The worst event-loop lag since start",
                     c.loop_lag_max_seconds)
        if node.core is None or node.writer is None:  # not started yet: no core, no store to read
            return
        yield from self._messages()
        yield from self._queues()
        yield from self._memory()
        yield from self._routing()
        yield from self._links()
        yield from self._store()
        yield from self._connections()

    # ------------------------------------------------------------------------------------------------ families

    def _messages(self) -> Iterator[Metric]:
        c = self.node.counters
        yield _counter("aiobroker_messages_sent_total", "Messages clients sent", c.sent)
        yield _counter("aiobroker_messages_received_total", "Messages handed to receivers", c.received)
        yield _counter("aiobroker_messages_committed_total", "Received messages whose receive was committed",
                       c.committed)
        yield _counter("aiobroker_messages_rolled_back_total", "Received messages whose receive was rolled back",
                       c.rolled_back)
        yield _counter("aiobroker_messages_acknowledged_total",
                       "This node's messages that peer nodes acknowledged (stored there)", c.acknowledged)
        yield _counter("aiobroker_messages_retransmitted_total",
                       "Messages sent on a link that go again because it failed before their acknowledgement",
                       c.retransmitted)
        yield _counter("aiobroker_messages_forwarded_total", "Messages this node passed on for other nodes",
                       self.node.links.forwarded)
        by_state = GaugeMetricFamily("aiobroker_conversations", "Conversation endpoints on this node, by state",
                                     labels=["state"])
        for state, n in readings.conversations_by_state(self.node.core).items():
            by_state.add_metric([state], n)
        yield by_state
        security = self.node.core.security_statistics()
        failures = CounterMetricFamily("aiobroker_dialog_security_failures_total",
                                       "Messages dropped or conversations refused by dialog security, by kind",
                                       labels=["kind"])
        for kind, key in (("dropped", "messages_dropped"), ("first_dropped", "first_messages_dropped"),
                          ("refused", "refused")):
            failures.add_metric([kind], security.get(key, 0))
        yield failures

    def _queues(self) -> Iterator[Metric]:
        node = self.node
        depth = GaugeMetricFamily("aiobroker_queue_messages",
                                  "Messages in a queue: waiting (not handed out) or locked (handed out, not committed)",
                                  labels=["queue", "state"])
        age = GaugeMetricFamily("aiobroker_queue_oldest_message_age_seconds",
                                "How long the oldest waiting message of a queue has waited", labels=["queue"])
        enabled = GaugeMetricFamily("aiobroker_queue_enabled", "1 when a queue's status is on", labels=["queue"])
        stored = GaugeMetricFamily("aiobroker_queue_in_store_only_messages",
                                   "Of a queue's waiting messages, those past its window, in the store only (read back"
                                   " as receivers drain it)", labels=["queue"])
        for q in readings.queues(node.core, node.clock()):
            stored.add_metric([q.name], q.statistics.get("in_store_only", 0))
            depth.add_metric([q.name, "waiting"], q.waiting)
            depth.add_metric([q.name, "locked"], q.locked)
            age.add_metric([q.name], q.oldest_age)
            enabled.add_metric([q.name], q.enabled)
        yield depth
        yield age
        yield enabled
        yield stored
        tx_messages, tx_conversations = readings.transmission_length(node.core)
        yield _gauge("aiobroker_transmission_queue_messages",
                     "Messages waiting to be acknowledged by (or sent to) another node", tx_messages)
        yield _gauge("aiobroker_transmission_queue_conversations",
                     "Conversations with messages in the transmission queue", tx_conversations)

    def _memory(self) -> Iterator[Metric]:
        budget = self.node.core.budget
        yield _gauge("aiobroker_memory_held_bytes",
                     "What the node holds for messages (bodies and a fixed cost per message) in queues and the"
                     " transmission queue, as counted against max_memory", budget.held)
        yield _gauge("aiobroker_memory_budget_bytes", "The node's memory budget for messages ([limits] max_memory)",
                     budget.max_memory)
        yield _gauge("aiobroker_memory_overloaded",
                     "1 while the node is over its memory budget: sends are refused and peer links take nothing new",
                     budget.over)
        yield _counter("aiobroker_memory_refused_sends_total",
                       "Client sends refused (Overloaded) because the node was over its memory budget", budget.refused)
        yield _counter("aiobroker_memory_refused_peer_frames_total",
                       "Frames of messages from peer nodes refused (resent later) because the node was over its"
                       " memory budget", self.node.counters.peer_frames_refused)

    def _routing(self) -> Iterator[Metric]:
        node = self.node
        labels = ["service", "reason"]
        messages = GaugeMetricFamily("aiobroker_delayed_messages",
                                     "DELAYED messages (no route yet) per far service and why they wait", labels=labels)
        conversations = GaugeMetricFamily("aiobroker_delayed_conversations",
                                          "DELAYED conversations per far service and why they wait", labels=labels)
        for (service, kind), (n_messages, n_conversations) in readings.delayed(node.core).items():
            messages.add_metric([service, kind], n_messages)
            conversations.add_metric([service, kind], n_conversations)
        yield messages
        yield conversations
        yield _gauge("aiobroker_resolver_requests_in_flight", "Dynamic routing's questions asked and not yet answered",
                     readings.requests_in_flight(node.core))
        requests = CounterMetricFamily("aiobroker_resolver_requests_total", "Questions asked of a resolver",
                                       labels=["resolver"])
        answers = CounterMetricFamily("aiobroker_resolver_answers_total", "Questions a resolver answered",
                                      labels=["resolver"])
        failures = CounterMetricFamily("aiobroker_resolver_failures_total",
                                       "Questions a resolver did not answer, by kind: not_found, error, timeout, broken",
                                       labels=["resolver", "kind"])
        latency = HistogramMetricFamily("aiobroker_resolver_latency_seconds",
                                        "Time from asking a resolver to its answer or failure", labels=["resolver"])
        for name, counts in node.counters.resolvers.items():
            requests.add_metric([name], counts.requests)
            answers.add_metric([name], counts.answers)
            for kind, n in counts.failures.items():
                failures.add_metric([name, kind], n)
            _histogram(latency, [name], counts.latency)
        yield requests
        yield answers
        yield failures
        yield latency

    def _links(self) -> Iterator[Metric]:
        node = self.node
        c = node.counters
        state = GaugeMetricFamily("aiobroker_link_state", "1 for a link's state now (connected, idle, retrying,"
                                  " not_tried), 0 for the others", labels=["peer", "state"])
        attempts = GaugeMetricFamily("aiobroker_link_failed_attempts",
                                     "A link's failed connection attempts in a row (0 once it connects)", labels=["peer"])
        in_flight = GaugeMetricFamily("aiobroker_link_messages_in_flight",
                                      "Messages sent on a link's connection and not yet acknowledged", labels=["peer"])
        rtt = GaugeMetricFamily("aiobroker_link_ack_seconds",
                                "The last wait from a send on a link to the acknowledgement that answered it",
                                labels=["peer"])
        failures = CounterMetricFamily("aiobroker_link_failures_total",
                                       "A link's connections that failed, timed out or were refused", labels=["peer"])
        for link in readings.links(node.core):
            for s in LINK_STATES:
                state.add_metric([link.address, s], s == link.state)
            attempts.add_metric([link.address], link.attempts)
            in_flight.add_metric([link.address], link.in_flight)
        for address, seconds in c.link_ack_seconds.items():
            rtt.add_metric([address], seconds)
        for address, n in c.link_failures.items():
            failures.add_metric([address], n)
        yield state
        yield attempts
        yield in_flight
        yield rtt
        yield failures

    def _store(self) -> Iterator[Metric]:
        c = self.node.counters
        writer = self.node.writer
        yield _histogram(
            HistogramMetricFamily("aiobroker_store_write_seconds", "Time one store write (a batch of rows) took"),
            [], c.store_write_seconds,
        )
        yield _histogram(
            HistogramMetricFamily("aiobroker_store_batch_rows", "Rows (messages and changes) in one store write"),
            [], c.store_batch_rows,
        )
        yield _counter("aiobroker_store_rows_written_total", "Rows the store wrote", writer.rows_written)

    def _connections(self) -> Iterator[Metric]:
        node = self.node
        admission = node.admission.statistics()
        connections = GaugeMetricFamily("aiobroker_connections",
                                        "Connections now: client, peer_in (a peer node connected here), peer_out (this"
                                        " node's links, connected), handshaking", labels=["kind"])
        connections.add_metric(["client"], len(node.sessions))
        connections.add_metric(["peer_in"], node.counters.inbound_peers)
        connections.add_metric(["peer_out"], sum(1 for link in readings.links(node.core) if link.state == "connected"))
        connections.add_metric(["handshaking"], admission["handshaking"])
        yield connections
        yield _counter("aiobroker_connections_refused_total",
                       "Connections refused at admission (limits, per-address limits, handshake refused)",
                       admission["refused"])
        yield _counter("aiobroker_connections_idle_closed_total", "Connections closed for being idle (idle_timeout)",
                       admission["idle_closed"])
        yield _gauge("aiobroker_receive_leases", "Received batches held, not yet committed or rolled back",
                     readings.leases_held(node.core))


def metrics_registry(node: Monitored) -> CollectorRegistry:
    """A registry of the node's own, holding its collector only."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in Prometheus' text format (version 0.0.4)."""
    return generate_latest(registry)
