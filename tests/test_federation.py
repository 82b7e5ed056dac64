"""Nodes carrying conversations between them over real TCP on loopback (several nodes in this process)."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from node_process import free_port

import aiobroker
from aiobroker import NodeConfig
from aiobroker.node import links
from aiobroker.core.transmission import ENVELOPE_OVERHEAD
from aiobroker.wire.codec import encode_frame
from aiobroker.wire.frames import PROTOCOL_VERSION, Refused, Welcome
from raw_peer import after_hello as peer_after_hello
from raw_peer import talk

pytestmark = pytest.mark.anyio

FAST = {"ack_timeout": 2.0, "connect_timeout": 2.0, "handshake_timeout": 2.0}


@asynccontextmanager
async def nodes(*configs: dict[str, Any]) -> AsyncIterator[list[tuple[aiobroker.Node, aiobroker.Client]]]:
    async with AsyncExitStack() as stack:
        out = []
        for extra in configs:
            node = await stack.enter_async_context(aiobroker.Node(NodeConfig(**{"store": "memory", "listen_port": 0, **FAST, **extra})))
            client = await stack.enter_async_context(aiobroker.connect(node.url))
            out.append((node, client))
        yield out


async def service(client: aiobroker.Client, name: str, accepts: bool = True) -> None:
    await client.create_queue(name.lower())
    await client.create_service(name, name.lower(), ["DEFAULT"] if accepts else [])


async def route(client: aiobroker.Client, name: str, service_name: str | None, address: str, **extra: Any) -> None:
    await client.create("route", {"name": name, "service_name": service_name, "address": address, **extra})


async def drain(client: aiobroker.Client, queue: str, expect: int, timeout: float = 20) -> list[aiobroker.Message]:
    got: list[aiobroker.Message] = []
    with anyio.fail_after(timeout):
        while len(got) < expect:
            batch = await client.receive(queue, max_messages=1000, timeout=timeout)
            got.extend(batch)
            await batch.commit()
    return got


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.05)  # polling another node's state, under a deadline


async def test_a_conversation_both_ways_between_two_nodes() -> None:
    async with nodes({}, {}) as [(a, ca), (b, cb)]:
        await service(ca, "svcA", accepts=False)
        await service(cb, "svcB")
        await route(ca, "to-b", "svcB", b.url)
        await route(cb, "to-a", "svcA", a.url)
        dialog = await ca.begin_dialog("svcA", "svcB")
        await dialog.send_many([("DEFAULT", b"%d" % i) for i in range(300)])
        got = await drain(cb, "svcb", 300)
        assert [int(m.body) for m in got] == list(range(300))
        assert [m.sequence_number for m in got] == list(range(300))
        assert got[0].far_service_name == "svcA" and not got[0].is_initiator
        reply = cb.dialog(got[0].conversation_handle)
        await reply.send("DEFAULT", b"thanks")
        await reply.end()
        back = await drain(ca, "svca", 2)
        assert [(m.body, m.is_end_dialog) for m in back] == [(b"thanks", False), (b"", True)]
        assert (await dialog.info())["far_service"] == "svcB"

        async def sender_queue_empty() -> bool:
            return (await ca.status())["transmission"]["messages"] == 0

        await until(sender_queue_empty, 10, "every message acknowledged")
        info = await dialog.info()
        assert info["state"] == "DI"


async def test_sticky_routing_follows_the_instance_that_acknowledged() -> None:
    async with nodes({}, {}) as [(_, ca), (b, cb)]:
        await service(ca, "svcA", accepts=False)
        await service(cb, "svcB")
        await route(ca, "to-b", "svcB", b.url)
        dialog = await ca.begin_dialog("svcA", "svcB")
        await dialog.send("DEFAULT", b"first")
        await drain(cb, "svcb", 1)

        async def acknowledged() -> bool:
            return (await dialog.info())["delayed"] is None and (await ca.status())["transmission"]["messages"] == 0

        await until(acknowledged, 10, "the first acknowledgement")
        assert cb.broker_instance is not None
        conversations = {c["handle"]: c for c in await ca.list_conversations()}
        assert conversations[dialog.handle]["far_broker_instance"] == cb.broker_instance


async def test_two_hops_through_a_forwarding_node() -> None:
    async with nodes({}, {"forwarding": True}, {}) as [(a, ca), (b, cb), (c, cc)]:
        await service(ca, "svcA", accepts=False)
        await service(cc, "svcC")
        await route(ca, "via-b", "svcC", b.url)
        await route(cb, "to-c", "svcC", c.url)
        await route(cb, "to-a", "svcA", a.url)
        await route(cc, "via-b", "svcA", b.url)
        dialog = await ca.begin_dialog("svcA", "svcC")
        await dialog.send_many([("DEFAULT", b"%d" % i) for i in range(200)])
        got = await drain(cc, "svcc", 200)
        assert [int(m.body) for m in got] == list(range(200))
        await cc.dialog(got[0].conversation_handle).send("DEFAULT", b"reply through b")
        assert [m.body for m in await drain(ca, "svca", 1)] == [b"reply through b"]

        async def all_acknowledged() -> bool:
            return (await ca.status())["transmission"]["messages"] == 0 and (await cc.status())["transmission"][
                "messages"
            ] == 0

        await until(all_acknowledged, 10, "acknowledgements relayed back through b")
        status_b = await cb.status()
        assert status_b["peers"]["forwarded"] >= 201
        assert status_b["conversations"] == 0, "a forwarding node keeps no conversation state"


BIG = 3 * 1024 * 1024  # under the 4 MiB max_message_size; six of them are over the 16 MiB max_frame_size


async def test_large_messages_leave_in_frames_the_far_node_accepts() -> None:
    async with nodes({}, {}) as [(a, ca), (b, cb)]:
        await service(ca, "svcA", accepts=False)
        await service(cb, "svcB")
        await route(cb, "to-a", "svcA", a.url)
        dialog = await ca.begin_dialog("svcA", "svcB")
        for i in range(8):  # no route yet: they wait together, 24 MiB
            await dialog.send("DEFAULT", bytes([i]) * BIG)
        await route(ca, "to-b", "svcB", b.url)
        got = await drain(cb, "svcb", 8)
        assert [(m.body[0], len(m.body)) for m in got] == [(i, BIG) for i in range(8)]
        peers = (await ca.status())["transmission"]["links"]
        assert [link["last_error"] for link in peers] == [None], "no frame was refused on the way"


async def test_frames_fit_the_far_nodes_smaller_frame_size() -> None:
    mib = 1024 * 1024
    async with nodes({"max_message_size": 2 * mib}, {"max_frame_size": 4 * mib, "max_message_size": 2 * mib}) as [
        (a, ca),
        (b, cb),
    ]:
        await service(ca, "svcA", accepts=False)
        await service(cb, "svcB")
        await route(cb, "to-a", "svcA", a.url)
        dialog = await ca.begin_dialog("svcA", "svcB")
        for i in range(6):  # 9 MiB: within a's frames, not within b's
            await dialog.send("DEFAULT", bytes([i]) * (3 * mib // 2))
        await route(ca, "to-b", "svcB", b.url)
        got = await drain(cb, "svcb", 6)
        assert [m.body[0] for m in got] == list(range(6))
        assert [link["last_error"] for link in (await ca.status())["transmission"]["links"]] == [None]


async def test_a_forwarders_backlog_leaves_in_frames_the_next_node_accepts() -> None:
    c_port = free_port()
    async with nodes({}, {"forwarding": True}) as [(_a, ca), (f, cf)]:
        await service(ca, "svcA", accepts=False)
        await route(ca, "via-f", "svcC", f.url)
        await route(cf, "to-c", "svcC", f"tcp://127.0.0.1:{c_port}")  # not listening yet: f holds what comes
        dialog = await ca.begin_dialog("svcA", "svcC")
        for i in range(8):
            await dialog.send("DEFAULT", bytes([i]) * BIG)

        async def f_holds_all() -> bool:
            return (await cf.status())["peers"]["forward_backlog"] >= 8

        await until(f_holds_all, 20, "the forwarder to hold all eight while the next node is down")
        async with nodes({"listen_port": c_port}) as [(_c, cc)]:
            await service(cc, "svcC")
            got = await drain(cc, "svcc", 8, timeout=30)
            assert [(m.body[0], len(m.body)) for m in got] == [(i, BIG) for i in range(8)]


async def test_a_peer_that_closes_the_link_with_a_reason_is_shown_with_that_reason() -> None:
    async def refusing_peer(stream: Any) -> None:  # welcomes the link, then closes it, saying why
        async with stream:
            await stream.receive()  # the HELLO
            await stream.send(encode_frame(Welcome(version=PROTOCOL_VERSION, broker_instance="far").to_wire()))
            await stream.receive()  # the first ENVELOPES
            await stream.send(encode_frame(Refused(code="protocol_error", message="frame too large").to_wire()))

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, refusing_peer)
            async with nodes({}) as [(_a, ca)]:
                await service(ca, "svcA", accepts=False)
                await route(ca, "to-far", "svcB", f"tcp://127.0.0.1:{port}")
                await (await ca.begin_dialog("svcA", "svcB")).send("DEFAULT", b"x")

                async def reason_shown() -> bool:
                    links = (await ca.status())["transmission"]["links"]
                    return bool(links) and "closed the link: frame too large" in (links[0]["last_error"] or "")

                await until(reason_shown, 10, "the link's last error to carry the peer's reason")
            tg.cancel_scope.cancel()


def envelope(n: int, size: int) -> list[Any]:
    return [20, f"c{n}", True, n, "svcA", "svcC", "DEFAULT", "a", "", "DEFAULT", bytes(size), 0.0, 1, False]


def test_a_forward_backlog_drops_its_oldest_past_its_byte_bound_and_gives_frames_within_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(links, "MAX_FORWARD_BACKLOG_BYTES", 10_000)
    backlog = links.ForwardBacklog()
    assert [backlog.add(envelope(n, 3_000)) for n in range(5)] == [0, 0, 0, 1, 1], "the fourth passes 10,000 bytes"
    assert (len(backlog), backlog.bytes) == (3, 9_000)
    frame: list[list[Any]] = []
    backlog.take_within(frame, 2 * (3_000 + ENVELOPE_OVERHEAD))
    assert [e[3] for e in frame] == [2, 3] and (len(backlog), backlog.bytes) == (1, 3_000)
    one: list[list[Any]] = []
    backlog.take_within(one, 10)  # over budget alone: goes alone
    assert [e[3] for e in one] == [4] and (len(backlog), backlog.bytes) == (0, 0)
    monkeypatch.setattr(links, "MAX_FORWARD_BACKLOG", 2)
    assert [backlog.add(envelope(n, 1)) for n in range(3)] == [0, 0, 1], "and past its count"


async def test_a_node_that_does_not_forward_drops_and_reports(caplog: pytest.LogCaptureFixture) -> None:
    async with nodes({}, {"forwarding": False}, {}) as [(_, ca), (b, cb), (c, cc)]:
        await service(ca, "svcA", accepts=False)
        await service(cc, "svcC")
        await route(ca, "via-b", "svcC", b.url)
        await route(cb, "to-c", "svcC", c.url)
        with caplog.at_level(logging.WARNING, logger="aiobroker.links"):
            dialog = await ca.begin_dialog("svcA", "svcC")
            await dialog.send("DEFAULT", b"not for b")
            with anyio.fail_after(10):
                while "does not forward; dropped" not in caplog.text:
                    await anyio.sleep(0.05)
        assert len(await cc.receive("svcc", timeout=0)) == 0
        assert (await ca.status())["transmission"]["messages"] == 1, "unacknowledged: it stays to be sent again"


async def test_a_routing_loop_is_cut_by_the_hop_limit_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    async with nodes({"forwarding": True, "max_hops": 4}, {"forwarding": True, "max_hops": 4}) as [(a, ca), (b, cb)]:
        await service(ca, "svcA", accepts=False)
        await route(ca, "loop-a", "svcX", b.url)
        await route(cb, "loop-b", "svcX", a.url)
        with caplog.at_level(logging.WARNING, logger="aiobroker.links"):
            dialog = await ca.begin_dialog("svcA", "svcX")
            await dialog.send("DEFAULT", b"round and round")
            with anyio.fail_after(10):
                while "a routing loop; dropped" not in caplog.text:
                    await anyio.sleep(0.05)
        # both nodes go on serving
        assert (await ca.status())["node"]["connections"] >= 1
        assert (await cb.status())["node"]["connections"] >= 1


async def test_a_route_to_nowhere_retries_with_the_reason_then_delivers_when_a_node_appears(tmp_path: Path) -> None:
    port = free_port()
    async with nodes({}) as [(_, ca)]:
        await service(ca, "svcA", accepts=False)
        await route(ca, "to-b", "svcB", f"tcp://127.0.0.1:{port}")
        dialog = await ca.begin_dialog("svcA", "svcB")
        await dialog.send_many([("DEFAULT", b"%d" % i) for i in range(10)])

        async def refused() -> bool:
            links = (await ca.status())["transmission"]["links"]
            return bool(links) and "retrying" in links[0]["state"] and links[0]["next_attempt"] is not None

        await until(refused, 10, "the link to report its failure")
        link = (await ca.status())["transmission"]["links"][0]
        assert "refused" in link["last_error"].lower(), link
        entries = (await ca.status())["transmission"]["entries"]
        assert entries and entries[0]["state"].startswith("retrying"), entries

        async with aiobroker.Node(NodeConfig(store="memory", listen_port=port, **FAST)) as b:
            async with aiobroker.connect(b.url) as cb:
                await service(cb, "svcB")
                got = await drain(cb, "svcb", 10, timeout=30)
                assert [int(m.body) for m in got] == list(range(10))


@pytest.mark.parametrize(
    ("after_hello", "expect"),
    [
        (b"\x00\x00\x00\x02\xc1\xc1", "not valid msgpack"),
        (encode_frame([20, "not a list", []]), "ENVELOPES is [20"),
        (encode_frame([10, 1, "status", {}]), "a peer sends ENVELOPES frames"),
    ],
)
async def test_a_peer_speaking_garbage_is_cut_off_and_the_node_serves_on(after_hello: bytes, expect: str) -> None:
    async with nodes({}, {}) as [(_, ca), (b, cb)]:
        await service(ca, "svcA", accepts=False)
        await service(cb, "svcB")
        await route(ca, "to-b", "svcB", b.url)
        frames = await anyio.to_thread.run_sync(functools.partial(peer_after_hello, b.port, after_hello, role="peer"))
        assert frames[0][0] == 2, frames  # welcomed as a peer
        assert frames[-1][0] == 3 and expect in frames[-1][2], frames
        dialog = await ca.begin_dialog("svcA", "svcB")
        await dialog.send("DEFAULT", b"still served")
        assert [m.body for m in await drain(cb, "svcb", 1)] == [b"still served"]


async def test_a_peer_that_refuses_on_its_own_connection_is_let_go_and_the_node_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with nodes({}, {}) as [(_, ca), (b, cb)]:
        await service(ca, "svcA", accepts=False)
        await service(cb, "svcB")
        await route(ca, "to-b", "svcB", b.url)
        refusal = encode_frame(Refused(code="protocol_error", message="going away").to_wire())
        frames = await anyio.to_thread.run_sync(functools.partial(peer_after_hello, b.port, refusal, role="peer"))
        assert frames[0][0] == 2, frames  # welcomed as a peer; then its REFUSED ends only its own connection
        dialog = await ca.begin_dialog("svcA", "svcB")
        await dialog.send("DEFAULT", b"still served")
        assert [m.body for m in await drain(cb, "svcb", 1)] == [b"still served"]
        assert any("closed its connection: going away" in r.getMessage() for r in caplog.records)


async def test_a_peer_with_an_older_protocol_is_refused_with_a_reason() -> None:
    async with nodes({}) as [(a, _)]:
        frames = await anyio.to_thread.run_sync(talk, a.port, encode_frame([1, "aiobroker", 0, "peer", {}]))
        assert frames[-1][0] == 3 and "protocol version 0 is not spoken here" in frames[-1][2]


async def test_malformed_envelopes_are_reported_and_the_rest_delivered(caplog: pytest.LogCaptureFixture) -> None:
    async with nodes({}) as [(b, cb)]:
        await service(cb, "svcB")
        good = [0, "conv-1", True, 0, "far", "svcB", "DEFAULT", "inst-x", None, "DEFAULT", b"ok", 4e9, 0, False]
        bad = [0, "conv-2", True, "zero"]
        with caplog.at_level(logging.WARNING, logger="aiobroker.links"):
            frames = await anyio.to_thread.run_sync(
                functools.partial(peer_after_hello, b.port, encode_frame([20, [bad, good], []]), role="peer", timeout=1.0)
            )
        assert [m.body for m in await drain(cb, "svcb", 1)] == [b"ok"]
        assert "malformed envelope" in caplog.text
        acks = [f for f in frames if f[0] == 20]
        assert acks and acks[0][2] == [[1, "conv-1", True, 1, cb.broker_instance]], "the good one is acknowledged"


async def test_a_resolver_answer_releases_messages_to_another_node_with_the_memory_store(tmp_path: Path) -> None:
    # a memory store writes nothing for the answer: the links must still be woken to send what it released
    async with nodes({}) as [(b, cb)]:
        await service(cb, "svcB")
        services = tmp_path / "services.toml"
        services.write_text(f'[services.svcB]\ntargets = [{{ address = "{b.url}" }}]\n')
        async with nodes({"resolver": {"kind": "static_file", "path": str(services)}}) as [(_, ca)]:
            await service(ca, "svcA", accepts=False)
            dialog = await ca.begin_dialog("svcA", "svcB")
            await dialog.send_many([("DEFAULT", b"%d" % i) for i in range(20)])
            got = await drain(cb, "svcb", 20)
            assert [int(m.body) for m in got] == list(range(20))
