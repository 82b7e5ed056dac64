"""Connection slots over real TCP on loopback: the idle time-out, the per-address cap, the handshake bounds, and
the connections kept for administrators and peer nodes (docs/semantics.md, "Connections").

Every connection here comes from 127.0.0.1, so the per-address cap is set high wherever a test is not about it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

import aiobroker
from aiobroker import NodeConfig
from aiobroker.config import load_config
from aiobroker.errors import ConfigError, ConnectionLost, Overloaded
from aiobroker.wire.codec import FrameDecoder, encode_frame
from aiobroker.transport.tls import client_context
from test_auth import ALICE_TOKEN, BASE_OBJECTS, LINK_TOKEN, ROOT_TOKEN, depth, identity
from test_tls import issue, make_ca

pytestmark = pytest.mark.anyio

IDLE = 0.3  # a small idle_timeout, so that the tests wait a fraction of a second for it


def config(**extra: Any) -> NodeConfig:
    return NodeConfig(**{"store": "memory", "listen_port": 0, **extra})


async def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` (a function, or a coroutine function) under a deadline."""
    with anyio.move_on_after(timeout):
        while True:
            result = check()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            await anyio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Raw:
    """One connection spoken by hand: the frames it sent and got, and whether the node closed it."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.frames: list[Any] = []
        self.closed = False
        self.opened = time.monotonic()  #: before anything was sent: the node cannot have heard from it earlier

    async def read(self, timeout: float = 10.0) -> Any:
        """The next frame from the node (None if it closed the connection first)."""
        with anyio.fail_after(timeout):
            while not self.frames:
                try:
                    data = await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    self.closed = True
                    return None
                self.frames.extend(self.decoder.feed(data))
        return self.frames.pop(0)

    async def closed_with(self, timeout: float = 10.0) -> Any:
        """Read until the node closes the connection; its last frame (the REFUSED that said why)."""
        last = None
        while True:
            frame = await self.read(timeout)
            if frame is None:
                return last
            last = frame


@asynccontextmanager
async def raw(port: int, *, hello: bool = True, **info: Any) -> AsyncIterator[Raw]:
    """A connection to the node; with ``hello``, one that said HELLO as a client and got the node's answer."""
    stream = await anyio.connect_tcp("127.0.0.1", port)
    try:
        conn = Raw(stream)
        if hello:
            await stream.send(encode_frame([1, "aiobroker", 1, "client", info]))
            answer = await conn.read()
            assert answer is not None and answer[0] == 2, f"expected WELCOME, got {answer}"
        yield conn
    finally:
        await stream.aclose()


# --- idle connections -------------------------------------------------------------------------------------------


async def test_an_idle_connection_is_closed_after_the_idle_timeout_and_told_why() -> None:
    async with aiobroker.Node(config(idle_timeout=IDLE)) as node, raw(node.port) as conn:
        last = await conn.closed_with()
        quiet_for = time.monotonic() - conn.opened
        assert last is not None and last[:2] == [3, "idle"], last
        assert "nothing was sent or received on it for 0.3 s" in last[2] and "idle_timeout" in last[2]
        assert quiet_for >= IDLE, "closed before it had been idle for idle_timeout"
        await until(lambda: node.admission.established == 0, "the node to give the slot back")
        assert node.status()["node"]["admission"]["idle_closed"] == 1


async def test_a_client_whose_idle_connection_was_closed_gets_the_reason_in_words() -> None:
    async with aiobroker.Node(config(idle_timeout=IDLE)) as node, aiobroker.connect(node.url) as client:
        await client.status()  # a request: activity
        await until(lambda: node.admission.idle_closed == 1, "the node to close the idle client")
        with pytest.raises(ConnectionLost) as info:
            await client.status()
        assert "idle" in info.value.message and "idle_timeout" in info.value.message, info.value.message
        async with aiobroker.connect(node.url) as again:  # connecting again is all it takes
            assert (await again.status())["node"]["connections"] == 1


async def _idle_timeouts_passed(node: aiobroker.Node, times: int) -> None:
    """Wait, without a sleep, until idle_timeout has passed ``times`` times: each of ``times`` connections opened
    one after another, saying nothing, is closed for being idle."""
    for i in range(times):
        async with raw(node.port) as control:
            frame = await control.closed_with()
            assert frame is not None and frame[1] == "idle", (i, frame)


async def test_a_waiting_receive_and_a_held_lease_are_in_flight_so_never_idle() -> None:
    objects = (("queue", {"name": "q"}), ("service", {"name": "svc", "queue": "q", "contracts": ["DEFAULT"]}))
    async with aiobroker.Node(config(idle_timeout=IDLE, objects=objects)) as node:
        async with aiobroker.connect(node.url) as waiter, aiobroker.connect(node.url) as holder:
            async with aiobroker.connect(node.url) as sender:
                await (await sender.begin_dialog("svc", "svc")).send(body=b"held")
            batch = await holder.receive("q", timeout=0, lease_seconds=60)
            assert [m.body for m in batch] == [b"held"]
            got: list[bytes] = []

            async def receive_without_limit() -> None:
                async with await waiter.receive("q", timeout=None) as b:
                    got.extend(m.body for m in b)

            async with anyio.create_task_group() as tg:
                tg.start_soon(receive_without_limit)
                await until(lambda: node.status()["node"]["waiting_receives"] == 1, "the receive to wait")
                # both have been quiet for over twice the idle time-out now: idle, but for what is in flight
                await _idle_timeouts_passed(node, 2)
                async with aiobroker.connect(node.url) as sender:
                    await (await sender.begin_dialog("svc", "svc")).send(body=b"worth the wait")
            assert got == [b"worth the wait"]
            await batch.commit()  # the lease outlived the idle time-out, and its connection with it
            assert node.admission.idle_closed == 2  # the two control connections only


# --- the per-address cap ------------------------------------------------------------------------------------------


async def test_the_per_address_cap_refuses_with_words_and_an_administrator_still_gets_in() -> None:
    async with aiobroker.Node(
        config(authorization=True, objects=BASE_OBJECTS, max_connections_per_address=2)
    ) as node:
        async with aiobroker.connect(node.url), aiobroker.connect(node.url, token=ALICE_TOKEN) as alice:
            with pytest.raises(Overloaded) as info:
                async with aiobroker.connect(node.url):
                    pass
            message = info.value.message
            assert "127.0.0.1 has its maximum of 2 connections" in message and "max_connections_per_address" in message
            async with aiobroker.connect(node.url, token=ROOT_TOKEN) as root:  # same address, but an administrator
                assert (await root.status())["node"]["admission"]["refused"] == 1
            await alice.aclose()
            await until(lambda: node.admission.established == 1, "alice's slot to be given back")
            async with aiobroker.connect(node.url) as third:
                assert third.identity == "public"


async def test_connections_that_never_say_hello_are_bounded_per_address_and_closed_with_a_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("aiobroker.node.sessions.HANDSHAKE_TIMEOUT", 0.5)
    async with aiobroker.Node(config(max_connections_per_address=2)) as node:
        async with raw(node.port, hello=False) as first, raw(node.port, hello=False) as second:
            await until(lambda: node.admission.handshaking == 2, "both connections to be counted")
            async with raw(node.port, hello=False) as third:
                refused = await third.closed_with()
            assert refused is not None and refused[:2] == [3, "overloaded"], refused
            assert "in their handshake" in refused[2] and "max_connections_per_address" in refused[2]
            for silent in (first, second):
                frame = await silent.closed_with()
                assert frame == [3, "timeout", "no HELLO within 0.5 s of connecting; closed"], frame
        await until(lambda: node.admission.handshaking == 0, "the handshake slots to be given back")
        async with aiobroker.connect(node.url) as client:
            assert (await client.status())["node"]["admission"]["established"] == 1


# --- the connections kept for administrators and peer nodes ---------------------------------------------------------


async def test_a_node_full_of_anonymous_connections_still_admits_an_administrator_and_a_peer_link(
    caplog: pytest.LogCaptureFixture,
) -> None:
    target_objects = (
        *BASE_OBJECTS,
        identity("neighbour", tokens=(LINK_TOKEN,), peer=True),
        identity("public", send=["svcB"]),  # plain dialogs' initiators are public: let them use svcB
    )
    target_config = config(
        authorization=True, objects=target_objects, max_connections=3, reserved_connections=2,
        max_connections_per_address=100,
    )  # fmt: skip
    async with aiobroker.Node(target_config) as target:
        async with raw(target.port), raw(target.port), raw(target.port):  # public, all three
            with caplog.at_level(logging.WARNING, logger="aiobroker.admission"):
                with pytest.raises(Overloaded, match="maximum of 3 connections; try later"):
                    async with aiobroker.connect(target.url):
                        pass
            assert "refused 1 connection(s)" in caplog.text  # the operator learns the node is full
            async with aiobroker.connect(target.url, token=ROOT_TOKEN) as root:
                assert root.identity == "root"
                sender_config = config(
                    link_token=LINK_TOKEN, ack_timeout=0.5,
                    objects=(
                        ("queue", {"name": "qS"}),
                        ("service", {"name": "svcS", "queue": "qS"}),
                        ("route", {"name": "to-b", "service_name": "svcB", "address": target.url}),
                    ),
                )  # fmt: skip
                async with aiobroker.Node(sender_config) as friend, aiobroker.connect(friend.url) as client:
                    dialog = await client.begin_dialog("svcS", "svcB")
                    await dialog.send(body=b"through the reserve")

                    async def arrived() -> bool:
                        return await depth(root, "qB") == 1

                    await until(arrived, "the peer's message to arrive")
                    admission = (await root.status())["node"]["admission"]
                    assert (admission["established"], admission["privileged"]) == (5, 2)
                    with pytest.raises(Overloaded, match="maximum of 5 connections"):  # the reserve is full too
                        async with aiobroker.connect(target.url, token=ROOT_TOKEN):
                            pass


async def test_over_tls_an_administrator_by_certificate_gets_a_reserved_connection_and_idles_out_in_words(
    tmp_path: Path,
) -> None:
    """The reserve knows an administrator by its TLS client certificate as well as by a token; the connections that
    fill the node hold waiting receives, so they are in flight and never idle, while the quiet administrator's
    connection is closed with the reason, through TLS."""
    ca = make_ca(tmp_path, "ca")
    node_cert, node_key = issue(tmp_path, ca, "node")
    ops_cert, ops_key = issue(tmp_path, ca, "ops")
    other_cert, other_key = issue(tmp_path, ca, "other")
    objects = (*BASE_OBJECTS, identity("ops", certificate=ops_cert.read_text(), admin=True))
    node_config = config(
        authorization=True, objects=objects, tls_cert=node_cert, tls_key=node_key, tls_ca=ca[2],
        max_connections=2, reserved_connections=1, idle_timeout=IDLE,
    )  # fmt: skip

    def tls(cert: Path, key: Path) -> Any:
        return client_context(ca=ca[2], cert=cert, key=key)

    async with aiobroker.Node(node_config) as node:
        async with (
            aiobroker.connect(node.url, ssl_context=tls(other_cert, other_key), token=ALICE_TOKEN) as first,
            aiobroker.connect(node.url, ssl_context=tls(other_cert, other_key), token=ALICE_TOKEN) as second,
            anyio.create_task_group() as tg,
        ):
            for alice in (first, second):
                tg.start_soon(functools.partial(alice.receive, "qA", timeout=None))
            await until(lambda: node.status()["node"]["waiting_receives"] == 2, "both receives to wait")
            with pytest.raises(Overloaded, match="maximum of 2 connections"):
                async with aiobroker.connect(node.url, ssl_context=tls(other_cert, other_key), token=ALICE_TOKEN):
                    pass
            async with aiobroker.connect(node.url, ssl_context=tls(ops_cert, ops_key)) as ops:
                assert ops.identity == "ops"
                await until(lambda: node.admission.idle_closed == 1, "the quiet administrator to be closed")
                with pytest.raises(ConnectionLost, match="idle_timeout"):
                    await ops.status()
            assert node.admission.established == 2, "the waiting receivers are still connected"
            tg.cancel_scope.cancel()


# --- peer links -----------------------------------------------------------------------------------------------------


async def test_an_idle_peer_link_is_closed_and_connects_again_at_once_when_it_has_work() -> None:
    """The far node closes a quiet link; the near one notes it without an error, and its next message goes at once
    (no back-off) on a new connection; everything is acknowledged, so nothing was lost or left waiting."""
    receiver_objects = (("queue", {"name": "qb"}), ("service", {"name": "svcB", "queue": "qb", "contracts": ["DEFAULT"]}))
    async with aiobroker.Node(config(idle_timeout=IDLE, objects=receiver_objects)) as far:
        sender_objects = (
            ("queue", {"name": "qa"}),
            ("service", {"name": "svcA", "queue": "qa"}),
            ("route", {"name": "to-b", "service_name": "svcB", "address": far.url}),
        )
        async with aiobroker.Node(config(objects=sender_objects)) as near, aiobroker.connect(near.url) as client:
            dialog = await client.begin_dialog("svcA", "svcB")
            await dialog.send(body=b"one")

            def link() -> dict[str, Any]:
                links = near.status()["transmission"]["links"]
                assert len(links) == 1, links
                return dict(links[0])

            await until(lambda: link()["state"].startswith("idle"), "the far node to close the quiet link")
            # no failure recorded, so no back-off: a failed link has a last_error and a next_attempt
            assert link()["last_error"] is None and link()["next_attempt"] is None, link()
            assert near.status()["transmission"]["messages"] == 0, "'one' was acknowledged before the close"
            await dialog.send(body=b"two")
            await until(lambda: near.status()["transmission"]["messages"] == 0, "'two' to be acknowledged")
            assert link()["state"].startswith("connected") and link()["last_error"] is None, link()
        async with aiobroker.connect(far.url) as reader:
            got = []
            while batch := await reader.receive("qb", max_messages=10, timeout=0):
                got.extend(m.body for m in batch)
                await batch.commit()
            assert got == [b"one", b"two"]


# --- configuration --------------------------------------------------------------------------------------------------


def test_the_settings_have_defaults_and_are_checked(tmp_path: Path) -> None:
    default = NodeConfig()
    assert (default.max_connections, default.reserved_connections, default.max_connections_per_address) == (
        1000, 50, 100,
    )  # fmt: skip
    assert default.idle_timeout == 600.0
    path = tmp_path / "node.toml"
    path.write_text("[limits]\nidle_timeout = 0\nreserved_connections = 0\nmax_connections_per_address = 5\n")
    loaded = load_config(path)
    assert (loaded.idle_timeout, loaded.reserved_connections, loaded.max_connections_per_address) == (0.0, 0, 5)
    for text, words in (
        ("idle_timeout = -1", "[limits] idle_timeout: must be a number of seconds >= 0"),
        ("max_connections_per_address = 0", "[limits] max_connections_per_address: must be an integer >= 1"),
        ("reserved_connections = -1", "[limits] reserved_connections: must be an integer >= 0"),
    ):
        path.write_text(f"[limits]\n{text}\n")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert words in info.value.message, info.value.message


def test_the_count_gives_every_slot_back_whichever_way_a_connection_ends() -> None:
    """The bookkeeping alone: ordinary slots per address, the reserve, and a ticket left twice counts once."""
    from aiobroker.node.admission import Admission

    slots = Admission(max_connections=2, reserved_connections=1, max_connections_per_address=1, idle_timeout=0)
    a1 = slots.arrive("10.0.0.1")
    with pytest.raises(Overloaded, match="10.0.0.1 has 1 connections in their handshake"):
        slots.arrive("10.0.0.1")
    slots.admit(a1, privileged=False)
    a2 = slots.arrive("10.0.0.1")
    with pytest.raises(Overloaded, match="10.0.0.1 has its maximum of 1 connections"):
        slots.admit(a2, privileged=False)
    b1, c1 = slots.arrive("10.0.0.2"), slots.arrive("10.0.0.3")
    slots.admit(b1, privileged=False)
    with pytest.raises(Overloaded, match="maximum of 2 connections; try later"):
        slots.admit(c1, privileged=False)
    slots.admit(a2, privileged=True)  # the reserve, from an address at its cap
    assert (slots.established, slots.privileged, slots.handshaking) == (3, 1, 1)
    for ticket in (a1, b1, a2, c1, a1):  # a1 twice
        slots.leave(ticket)
    assert slots.statistics() == {
        "established": 0, "privileged": 0, "handshaking": 0, "addresses": 0, "refused": 3, "idle_closed": 0,
    }  # fmt: skip
