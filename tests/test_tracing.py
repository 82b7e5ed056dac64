"""Traces across nodes: W3C trace context from sender to receiver through a forwarder, real node processes.

The client's spans go to the OpenTelemetry SDK's in-memory exporter in this process; each node process writes its
spans to a file of its own (``AIOBROKER_OTEL_SPANS_FILE``), which the test reads. The client and CLI surfaces refuse
a malformed ``traceparent`` with the expected format, and without OpenTelemetry the context is still carried.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from node_process import NodeProcess, free_port
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

import aiobroker
from aiobroker.errors import InvalidArgument
from aiobroker.tracing import SPANS_FILE_ENV, process_span

pytestmark = pytest.mark.anyio

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FORMAT = "expected 00-<32 lowercase hex: trace id>-<16 lowercase hex: span id>-<2 lowercase hex: flags>"
DEADLINE = 30.0


def _reset_global_provider() -> None:
    """What opentelemetry's own test utilities do between tests: the global TracerProvider may be set again."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]


@pytest.fixture
def client_spans() -> Iterator[InMemorySpanExporter]:
    """An SDK TracerProvider, set globally for this test only, exporting to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_global_provider()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_global_provider()


def node_spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def hex_id(value: int, width: int) -> str:
    return f"0x{value:0{width}x}"


def forwarder_config(tmp_path: Path) -> Path:
    config = tmp_path / "f.toml"
    config.write_text("[federation]\nforwarding = true\n")
    return config


async def wire_up(a: NodeProcess, f: NodeProcess, b_url: str) -> None:
    """a (svcA) -> f (forwarding) -> b (svcB), and back the same way."""
    async with aiobroker.connect(a.url) as ca, aiobroker.connect(f.url) as cf:
        await ca.create_queue("qa")
        await ca.create_service("svcA", "qa")
        await ca.create_route("to-b", f.url, service_name="svcB")
        await cf.create_route("to-b", b_url, service_name="svcB")
        await cf.create_route("to-a", a.url, service_name="svcA")


async def make_target(b: NodeProcess, f_url: str) -> None:
    async with aiobroker.connect(b.url) as cb:
        await cb.create_queue("qb")
        await cb.create_service("svcB", "qb", ["DEFAULT"])
        await cb.create_route("to-a", f_url, service_name="svcA")


async def test_one_trace_shows_a_message_from_its_sender_through_the_forwarder_to_its_receiver(
    tmp_path: Path, client_spans: InMemorySpanExporter
) -> None:
    files = {name: tmp_path / f"{name}-spans.jsonl" for name in ("a", "f", "b")}
    b = NodeProcess(tmp_path / "b", env={SPANS_FILE_ENV: str(files["b"])}).start()
    f = NodeProcess(
        tmp_path / "f", extra=["--config", str(forwarder_config(tmp_path))], env={SPANS_FILE_ENV: str(files["f"])}
    ).start()
    a = NodeProcess(tmp_path / "a", env={SPANS_FILE_ENV: str(files["a"])}).start()
    try:
        await make_target(b, f.url)
        await wire_up(a, f, b.url)
        async with aiobroker.connect(a.url) as ca, aiobroker.connect(b.url) as cb:
            with trace.get_tracer("test").start_as_current_span("checkout") as root:
                dialog = await ca.begin_dialog("svcA", "svcB")
                await dialog.send("DEFAULT", b"one order")
            with anyio.fail_after(DEADLINE):
                batch = await cb.receive("qb", timeout=DEADLINE)
            (message,) = batch.messages
            with process_span(message):
                pass
            await batch.commit()
    finally:
        for node in (a, f, b):
            node.stop()

    trace_id = root.get_span_context().trace_id
    spans: dict[str, ReadableSpan] = {s.name: s for s in client_spans.get_finished_spans()}
    send = spans["send svcB"]
    assert send.kind is trace.SpanKind.PRODUCER and send.parent is not None
    assert send.parent.span_id == root.get_span_context().span_id, "the send span is a child of the caller's span"
    assert send.context is not None and send.context.trace_id == trace_id
    send_id = send.context.span_id
    flags = int(send.context.trace_flags)
    assert message.traceparent == f"00-{trace_id:032x}-{send_id:016x}-{flags:02x}", "it carries the send's context"
    assert send.attributes is not None and dict(send.attributes) == {
        "messaging.system": "aiobroker",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "svcB",
        "messaging.message.conversation_id": dialog.conversation_id,
    }
    receive = spans["receive qb"]
    assert receive.kind is trace.SpanKind.CONSUMER
    assert [(link.context.trace_id, link.context.span_id) for link in receive.links] == [(trace_id, send_id)]
    process = spans["process svcB"]
    assert process.kind is trace.SpanKind.CONSUMER and process.parent is not None
    assert (process.parent.trace_id, process.parent.span_id) == (trace_id, send_id)

    expected = {"a": ("send svcB", "PRODUCER", "send"), "f": ("forward svcB", "PRODUCER", "send"),
                "b": ("receive svcB", "CONSUMER", "receive")}  # fmt: skip
    instances = set()
    for name, (span_name, kind, operation) in expected.items():
        found = [s for s in node_spans(files[name]) if s["context"]["trace_id"] == hex_id(trace_id, 32)]
        assert [s["name"] for s in found] == [span_name], f"node {name}: {node_spans(files[name])}"
        (span,) = found
        assert span["kind"] == f"SpanKind.{kind}"
        assert span["parent_id"] == hex_id(send_id, 16), f"node {name}'s span is not a child of the message's context"
        attributes = span["attributes"]
        assert attributes["messaging.system"] == "aiobroker"
        assert attributes["messaging.operation.type"] == operation
        assert attributes["messaging.destination.name"] == "svcB"
        assert attributes["messaging.message.conversation_id"] == dialog.conversation_id
        instances.add(attributes["aiobroker.node.instance"])
    assert len(instances) == 3, "three nodes, each naming itself"


async def test_trace_context_survives_a_kill_of_the_forwarder_and_the_sender_while_messages_wait(
    tmp_path: Path,
) -> None:
    """A -> F -> B with B down: the messages wait (in A's store, and in F's memory); F and A are killed with
    SIGKILL and restarted, B comes up, and every message arrives with its own trace context as it was sent."""
    b = NodeProcess(tmp_path / "b", port=free_port())
    f = NodeProcess(tmp_path / "f", extra=["--config", str(forwarder_config(tmp_path))]).start()
    b.start()
    await make_target(b, f.url)
    assert b.stop() == 0, b.output()
    a = NodeProcess(tmp_path / "a").start()
    contexts = [
        (f"00-{i + 1:032x}-{i + 0xA0:016x}-01", f"vendor{i}=value-{i}" if i % 2 else None) for i in range(4)
    ]
    try:
        await wire_up(a, f, b.url)
        async with aiobroker.connect(a.url) as ca:
            dialog = await ca.begin_dialog("svcA", "svcB")
            for i, (parent, state) in enumerate(contexts):
                await dialog.send("DEFAULT", b"%d" % i, traceparent=parent, tracestate=state)
            await dialog.send("DEFAULT", b"untraced")

        async def forward_backlog() -> int:
            async with aiobroker.connect(f.url) as cf:
                return int((await cf.status())["peers"]["forward_backlog"])

        with anyio.fail_after(DEADLINE):
            while await forward_backlog() < 5:
                await anyio.sleep(0.05)  # polling the forwarder's status under a deadline
        f.kill()
        a.kill()
        f.start()
        a.start()
        b.start()
        got: list[aiobroker.Message] = []
        async with aiobroker.connect(b.url) as cb:
            with anyio.fail_after(DEADLINE):
                while len(got) < 5:
                    batch = await cb.receive("qb", max_messages=10, timeout=DEADLINE)
                    got.extend(batch)
                    await batch.commit()
        assert [m.body for m in got] == [b"0", b"1", b"2", b"3", b"untraced"]
        assert [(m.traceparent, m.tracestate) for m in got] == [*contexts, (None, None)]
    finally:
        for node in (a, f, b):
            node.stop()


# --------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path / "data").start()
    try:
        yield n
    finally:
        assert n.stop() == 0, n.output()


async def _services(url: str) -> None:
    async with aiobroker.connect(url) as client:
        await client.create_queue("qa")
        await client.create_service("svcA", "qa")
        await client.create_queue("qb")
        await client.create_service("svcB", "qb", ["DEFAULT"])


async def test_the_client_refuses_a_malformed_traceparent_and_the_node_refuses_one_sent_raw(node: NodeProcess) -> None:
    await _services(node.url)
    async with aiobroker.connect(node.url) as client:
        dialog = await client.begin_dialog("svcA", "svcB")
        with pytest.raises(InvalidArgument, match="is not a W3C traceparent: " + FORMAT.replace("(", r"\(")):
            await dialog.send("DEFAULT", b"x", traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7")
        with pytest.raises(InvalidArgument, match="tracestate needs a traceparent"):
            await dialog.send("DEFAULT", b"x", tracestate="rojo=1")
        with pytest.raises(InvalidArgument, match="over the 256 this broker carries"):
            await dialog.send("DEFAULT", b"x", traceparent=PARENT, tracestate="k=" + "v" * 300)
        # past the client's own check: the node says the same
        with pytest.raises(InvalidArgument, match="is not a W3C traceparent"):
            await client.request("send", {"handle": dialog.handle, "messages": [["DEFAULT", b"x", "00-junk"]]})
        with pytest.raises(InvalidArgument, match=r"\[message_type, body, trace_context\] triple"):
            await client.request("send", {"handle": dialog.handle, "messages": [["DEFAULT", b"x", PARENT, "more"]]})
        assert (await dialog.info())["send_seq"] == 0, "nothing was sent"
        assert not await client.receive("qb", timeout=0)


def cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiobroker", *args, "--address", url],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
        stdin=subprocess.DEVNULL,
    )


async def test_the_cli_sends_a_trace_context_shows_it_on_receive_and_refuses_a_malformed_one(
    node: NodeProcess,
) -> None:
    await _services(node.url)
    bad = cli("send", "--from", "svcA", "--to", "svcB", "--body", "x", "--traceparent", "00-xyz", url=node.url)
    assert bad.returncode != 0 and bad.stdout == ""
    assert FORMAT in bad.stderr and "00-xyz" in bad.stderr, bad.stderr
    async with aiobroker.connect(node.url) as client:
        assert await client.list_conversations() == [], "no conversation was begun for a refused send"
    sent = cli(
        "send", "--from", "svcA", "--to", "svcB", "--body", "traced",
        "--traceparent", PARENT, "--tracestate", "rojo=00f067aa0ba902b7", url=node.url,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    received = cli("receive", "qb", "--json", "--timeout", "10", url=node.url)
    assert received.returncode == 0, received.stderr
    (line,) = received.stdout.splitlines()
    message = json.loads(line)
    assert (message["body"], message["traceparent"], message["tracestate"]) == (
        "traced",
        PARENT,
        "rojo=00f067aa0ba902b7",
    )


# -------------------------------------------------------------------------------------- without the extra

_WITHOUT_OTEL = textwrap.dedent(
    """
    import sys
    sys.modules["opentelemetry"] = None  # as if the otel extra were not installed: importing it fails
    import anyio, aiobroker
    from aiobroker import tracing

    async def main():
        assert not tracing.ENABLED and not tracing.recording()
        async with aiobroker.Node(aiobroker.NodeConfig(store="memory", listen_port=0)) as node:
            async with aiobroker.connect(node.url) as client:
                await client.create_queue("qa")
                await client.create_service("svcA", "qa")
                await client.create_queue("qb")
                await client.create_service("svcB", "qb", ["DEFAULT"])
                dialog = await client.begin_dialog("svcA", "svcB")
                await dialog.send("DEFAULT", b"x", traceparent=sys.argv[1], tracestate="k=v")
                await dialog.send("DEFAULT", b"y")
                batch = await client.receive("qb", max_messages=10, timeout=5)
                print([(m.traceparent, m.tracestate) for m in batch])
        assert "opentelemetry.trace" not in sys.modules

    anyio.run(main)
    """
)


def test_without_opentelemetry_the_context_is_still_carried_and_no_span_is_made() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OTEL, PARENT],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
        env={**os.environ, SPANS_FILE_ENV: ""},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr([(PARENT, "k=v"), (None, None)])

