"""Nodes carrying conversations between them over real TCP on loopback (several nodes in this process)."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from node_process import free_port

import aiobroker
from aiobroker import NodeConfig
from aiobroker.wire.codec import encode_frame
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
