"""Federation between nodes that are separate processes, on separate hosts (network namespaces) or on loopback.

Each node is ``python -m aiobroker serve --config FILE`` with its queues, services, routes and ``[federation]``
from the file and a SQLite store. ``tests/hosts.py`` runs them: in the ``netns`` variant every node runs inside its
host's namespace, and so do the clients (``tests/fed_driver.py``, whose JSON lines the test follows with
deadlines); a link failure is a real ``topo.cut``. In the ``loopback`` variant the same nodes listen on
127.0.0.1 on different ports and the drivers run here; a link failure is the receiving node stopped and started
again on its data.

What is asserted is what ``tests/test_crash.py`` asserts, per conversation across nodes: every message the producer
had acknowledged (stored at its own node) arrives at the far service exactly once and in order, nothing twice.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from hosts import STOP_TIMEOUT, VARIANTS, Hosts, stop_by_pid
from hosts import netns_or_loopback as netns_or_loopback  # the fixture `variant`
from node_process import wait_for

pytestmark = pytest.mark.slow

DRIVER = str(Path(__file__).with_name("fed_driver.py"))
NETNS_PORT = 4022  # every host is its own namespace: the same port on each
FEDERATION = {"ack_timeout": 2, "connect_timeout": 2, "handshake_timeout": 2}


# --------------------------------------------------------------------------------------------- helpers


@dataclass
class NodeSpec:
    """One node: where it runs, the service it has (if any) and its routes, service name → node name."""

    name: str
    host: str
    service: str | None = None
    queue: str | None = None
    accepts: bool = False
    forwarding: bool = False
    routes: dict[str, str] = field(default_factory=dict)
    port: int = 0

    def service_toml(self) -> str:
        """The node's queue and service (accepting DEFAULT or nothing), as config sections; empty without one."""
        if self.service is None:
            return ""
        assert self.queue is not None
        contracts = '["DEFAULT"]' if self.accepts else "[]"
        return "\n".join([
            "[[queue]]", f'name = "{self.queue}"', "",
            "[[service]]", f'name = "{self.service}"', f'queue = "{self.queue}"', f"contracts = {contracts}", "",
        ])  # fmt: skip


class Driver:
    """A ``fed_driver.py`` process whose stdout lines (JSON) are read by a thread and taken with deadlines."""

    def __init__(self, name: str, proc: subprocess.Popen[str], stderr: IO[bytes], stderr_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.stderr = stderr
        self.stderr_path = stderr_path
        self.records: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._eof = False
        self._thread = threading.Thread(target=self._pump, name=f"driver {name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self._lines.put(line)
        except (OSError, ValueError):
            pass  # the pipe was closed under us at teardown
        finally:
            self._lines.put(None)

    def _take(self, timeout: float) -> dict[str, Any] | None:
        """The next record within ``timeout`` (None if none came); AssertionError at end of output."""
        if self._eof:
            raise AssertionError(f"driver {self.name} ended (exit {self.proc.poll()}):\n{self.errors()}")
        try:
            line = self._lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if line is None:
            self._eof = True
            raise AssertionError(f"driver {self.name} ended (exit {self.proc.wait(timeout=10)}):\n{self.errors()}")
        try:
            record: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"driver {self.name} printed a line that is not JSON: {line!r}") from None
        self.records.append(record)
        return record

    def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """Read records until one satisfies ``predicate``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for record in self.records:
            if predicate(record):
                return record
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for driver {self.name}: {what}")
            taken = self._take(remaining)
            if taken is not None and predicate(taken):
                return taken

    def progress(self) -> None:
        """Read whatever records are already there, without waiting."""
        while not self._eof and self._take(0) is not None:
            pass

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for the summary and the process's exit; returns the summary."""
        summary = self.until(lambda r: "summary" in r, timeout, "its summary")["summary"]
        code = self.proc.wait(timeout=timeout)
        assert code == 0, f"driver {self.name} exited with {code}:\n{self.errors()}"
        return summary  # type: ignore[no-any-return]

    @property
    def total_acked(self) -> int:
        self.progress()
        per_conv: dict[int, int] = {}
        for r in self.records:
            if "acked" in r:
                per_conv[r["conv"]] = r["acked"]
        return sum(per_conv.values())

    def errors(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        return f"--- driver {self.name} stderr ---\n{self.errors()}"

    def stop(self) -> None:
        """SIGTERM by pid if still running, SIGKILL at the deadline; close the pipes."""
        stop_by_pid(self.proc)
        self._thread.join(timeout=STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


class Cluster(Hosts):
    """:class:`hosts.Hosts` with nodes described by :class:`NodeSpec` and ``fed_driver.py`` clients on them."""

    def __init__(self, variant: str, tmp_path: Path, hosts: list[str], links: list[tuple[str, str]]) -> None:
        super().__init__(variant, tmp_path, hosts, links)
        self.specs: dict[str, NodeSpec] = {}

    def address(self, node: str, seen_from: str) -> str:
        """``tcp://host:port`` of ``node`` as a client or node on host ``seen_from`` dials it."""
        spec = self.specs[node]
        return f"tcp://{self.ip(spec.host, towards=seen_from)}:{spec.port}"

    def url(self, node: str) -> str:
        """Where a driver on the node's own host reaches it."""
        return self.address(node, self.specs[node].host)

    # -- nodes ----------------------------------------------------------------------------------------------

    def add(self, spec: NodeSpec) -> None:
        spec.port = self.port(NETNS_PORT)
        self.specs[spec.name] = spec

    def start(self, name: str) -> None:
        """Start node ``name`` (the first time from its spec, later again on its data) and wait until it listens."""
        server = self.servers.get(name)
        if server is None:
            spec = self.specs[name]
            routes = {service: self.address(node, spec.host) for service, node in spec.routes.items()}
            server = self.node(
                name, spec.host, spec.port, federation=FEDERATION, forwarding=spec.forwarding, routes=routes,
                extra_toml=spec.service_toml(),
            )  # fmt: skip
        else:
            server.start()
        server.wait_listening()

    def kill(self, name: str) -> None:
        self.servers[name].kill()

    def stop(self, name: str) -> None:
        code = self.servers[name].stop()
        assert code == 0, f"node {name} exited with {code} on SIGTERM:\n{self.servers[name].output()}"

    # -- link failures --------------------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        assert self.topo is not None
        self.topo.cut(a, b)

    def restore(self, a: str, b: str) -> None:
        assert self.topo is not None
        self.topo.restore(a, b)

    # -- drivers --------------------------------------------------------------------------------------------

    def driver(self, name: str, host: str, *args: str) -> Driver:
        argv = [sys.executable, DRIVER, *args]
        stderr_path = self.tmp_path / f"driver-{len(self.clients)}-{name}.err"
        stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed by Driver.stop
        proc = self.popen(host, argv, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        drv = Driver(name, proc, stderr, stderr_path)
        self.stop_on_exit(drv)
        return drv

    def produce(self, node: str, to_service: str, *, count: int, batch: int, conversations: int = 1,
                interval: float = 0.0) -> Driver:  # fmt: skip
        spec = self.specs[node]
        assert spec.service is not None
        return self.driver(
            f"produce@{node}", spec.host, "produce", "--url", self.url(node), "--from", spec.service,
            "--to", to_service, "--count", str(count), "--batch", str(batch),
            "--conversations", str(conversations), "--interval", str(interval),
        )  # fmt: skip

    def consume(self, node: str, *, count: int, timeout: float, reply: str | None = None) -> Driver:
        spec = self.specs[node]
        assert spec.queue is not None
        extra = ["--reply", reply] if reply is not None else []
        return self.driver(
            f"consume@{node}", spec.host, "consume", "--url", self.url(node), "--queue", spec.queue,
            "--count", str(count), "--timeout", str(timeout), *extra,
        )  # fmt: skip

    def status(self, node: str) -> dict[str, Any]:
        argv = [sys.executable, DRIVER, "--limit", "15", "status", "--url", self.url(node)]
        out = self.check_output(self.specs[node].host, argv, timeout=20, what=f"status of node {node}")
        result: dict[str, Any] = json.loads(out)
        return result

    def transmission_empty(self, node: str) -> bool:
        return bool(self.status(node)["transmission"]["messages"] == 0)

    def link_failed(self, node: str) -> bool:
        """Whether a link of ``node`` has failed at least once (its last error stays after it reconnects)."""
        links = self.status(node)["transmission"]["links"]
        return any(link["last_error"] for link in links)


def received_by_conversation(consumer: Driver) -> dict[str, list[tuple[int, str, str]]]:
    """conversation id → [(sequence number, message type, body)] in the order received."""
    got: dict[str, list[tuple[int, str, str]]] = {}
    for record in consumer.records:
        for conversation_id, seq, message_type, body in record.get("batch", ()):
            got.setdefault(conversation_id, []).append((seq, message_type, body))
    return got


def assert_exactly_once_in_order(producer_summary: dict[str, Any], consumer: Driver) -> None:
    """Per conversation: the bodies are 0..n-1 in order, each once, sequence numbers too, and n covers every
    acknowledged send (here every send: the producer's own node never failed, so all were acknowledged)."""
    received = received_by_conversation(consumer)
    conversations = producer_summary["conversations"]
    assert set(received) <= {c["conversation_id"] for c in conversations}, "messages of unknown conversations"
    for i, conv in enumerate(conversations):
        got = received.get(conv["conversation_id"], [])
        assert all(t == "DEFAULT" for _, t, _ in got), f"conversation {i}: unexpected message types"
        numbers = [int(body) for _, _, body in got]
        dupes = len(numbers) - len(set(numbers))
        assert dupes == 0, f"conversation {i}: {dupes} message(s) received twice"
        assert numbers == list(range(len(numbers))), f"conversation {i}: out of order or with gaps"
        assert [seq for seq, _, _ in got] == numbers, f"conversation {i}: sequence numbers disagree with the bodies"
        assert len(numbers) >= conv["acked"], (
            f"conversation {i}: lost acknowledged sends ({len(numbers)} < {conv['acked']})"
        )
        assert conv["acked"] == conv["sent"], f"conversation {i}: a send failed at the producer's own node"
        assert len(numbers) == conv["sent"], f"conversation {i}: {len(numbers)} of {conv['sent']} sent arrived"


# --------------------------------------------------------------------------------------------- scenarios


def line_through_b(c: Cluster) -> None:
    """a - b - c, B forwarding, A and C with a service each; C, B, A started in that order."""
    c.add(NodeSpec("A", "a", service="svcA", queue="qa", routes={"svcC": "B"}))
    c.add(NodeSpec("B", "b", forwarding=True, routes={"svcC": "C", "svcA": "A"}))
    c.add(NodeSpec("C", "c", service="svcC", queue="qc", accepts=True, routes={"svcA": "B"}))
    for name in ("C", "B", "A"):
        c.start(name)


TWO_HOP_COUNT = 2000


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_two_hops_through_a_forwarding_node(variant: str, tmp_path: Path) -> None:
    """a - b - c, b's kernel does not forward: the broker on b passes A's messages to C and C's reply back."""
    with Cluster(variant, tmp_path, ["a", "b", "c"], [("a", "b"), ("b", "c")]) as c:
        c.assert_kernel_does_not_forward("b")
        line_through_b(c)
        producer = c.produce("A", "svcC", count=TWO_HOP_COUNT, batch=100)
        sent = producer.finish(timeout=30)
        wait_for(lambda: c.transmission_empty("A"), 30, "C's acknowledgements to reach A through B")
        consumer = c.consume("C", count=TWO_HOP_COUNT, timeout=20, reply="reply through b")
        summary = consumer.finish(timeout=30)
        assert_exactly_once_in_order(sent, consumer)
        assert summary["replied"] == [sent["conversations"][0]["conversation_id"]]

        replies = c.consume("A", count=1, timeout=20)
        replies.finish(timeout=30)
        got = received_by_conversation(replies)
        assert got == {sent["conversations"][0]["conversation_id"]: [(0, "DEFAULT", "reply through b")]}
        wait_for(lambda: c.transmission_empty("C"), 20, "A's acknowledgement of the reply to reach C through B")
        status_b = c.status("B")
        assert status_b["peers"]["forwarded"] >= TWO_HOP_COUNT + 1
        assert status_b["conversations"] == 0, "a forwarding node keeps no conversation state"


STREAM_COUNT = 600  # per conversation
STREAM_CONVERSATIONS = 2
STREAM_BATCH = 10
STREAM_INTERVAL = 0.01
FAIL_AFTER = 300  # acknowledged sends (both conversations) before the link is cut or the node killed
MORE_DURING_FAILURE = 100  # sends the producer must have acknowledged while the far side was unreachable


def two_hosts(c: Cluster) -> None:
    """a - b: A streams to svcB on B."""
    c.add(NodeSpec("A", "a", service="svcA", queue="qa", routes={"svcB": "B"}))
    c.add(NodeSpec("B", "b", service="svcB", queue="qb", accepts=True, routes={"svcA": "A"}))
    c.start("B")
    c.start("A")


def stream(c: Cluster, to_service: str) -> Driver:
    return c.produce(
        "A", to_service, count=STREAM_COUNT, batch=STREAM_BATCH, conversations=STREAM_CONVERSATIONS,
        interval=STREAM_INTERVAL,
    )  # fmt: skip


def deliver_everything(c: Cluster, producer: Driver, receiver: str) -> None:
    """The producer finishes; A's transmission queue empties; the receiver holds each sent message once, in
    order."""
    sent = producer.finish(timeout=60)
    wait_for(lambda: c.transmission_empty("A"), 45, f"everything to be acknowledged by {receiver}")
    total = sum(conv["sent"] for conv in sent["conversations"])
    consumer = c.consume(receiver, count=total, timeout=20)
    consumer.finish(timeout=30)
    assert_exactly_once_in_order(sent, consumer)


# direct: a - b, the a-b link is cut. forwarded: a - b - c, B forwarding, the b-c link is cut (A's own link stays
# up; A hears nothing back and resends through B after its ack_timeout).
PATHS = {
    "direct": (["a", "b"], [("a", "b")], "B", ("a", "b")),
    "forwarded": (["a", "b", "c"], [("a", "b"), ("b", "c")], "C", ("b", "c")),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_a_link_cut_mid_stream_and_restored_loses_and_duplicates_nothing(
    variant: str, path: str, tmp_path: Path
) -> None:
    hosts, links, receiver, cut = PATHS[path]
    with Cluster(variant, tmp_path, hosts, links) as c:
        if path == "direct":
            two_hosts(c)
        else:
            line_through_b(c)
        producer = stream(c, c.specs[receiver].service or "")
        producer.until(lambda r: r.get("total", 0) >= FAIL_AFTER, 30, f"{FAIL_AFTER} acknowledged sends")
        if variant == "netns":
            c.cut(*cut)
        else:
            c.stop(receiver)  # SIGTERM by pid: gone from the network until it starts again on its data
        at_failure = producer.total_acked
        assert at_failure < STREAM_COUNT * STREAM_CONVERSATIONS, "the failure must land mid-stream"
        # sends go on being accepted (stored at A, waiting in its transmission queue) while the far side is away
        producer.until(
            lambda r: r.get("total", 0) >= at_failure + MORE_DURING_FAILURE, 20, "sends acknowledged during the cut"
        )
        wait_for(lambda: c.link_failed("A"), 20, "A to notice that its messages are not acknowledged")
        assert not c.transmission_empty("A")
        if variant == "netns":
            c.restore(*cut)
        else:
            c.start(receiver)
        deliver_everything(c, producer, receiver)


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_the_receiving_node_killed_and_restarted_loses_and_duplicates_nothing(variant: str, tmp_path: Path) -> None:
    with Cluster(variant, tmp_path, ["a", "b"], [("a", "b")]) as c:
        two_hosts(c)
        producer = stream(c, "svcB")
        producer.until(lambda r: r.get("total", 0) >= FAIL_AFTER, 30, f"{FAIL_AFTER} acknowledged sends")
        c.kill("B")  # SIGKILL by pid
        at_kill = producer.total_acked
        assert at_kill < STREAM_COUNT * STREAM_CONVERSATIONS, "the kill must land mid-stream"
        wait_for(lambda: c.link_failed("A"), 20, "A to notice that B is gone")
        c.start("B")  # same data dir, same address and port
        deliver_everything(c, producer, "B")
        restored = [line for line in c.servers["B"].output().splitlines() if "listening on" in line][-1]
        assert "restored 0 conversation(s)" not in restored, f"B kept nothing across the kill: {restored}"
