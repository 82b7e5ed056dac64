"""The HTTP monitoring listener (docs/monitoring.md), spoken to over real HTTP on loopback: nodes in this process
driven by aiobroker's client over the wire, and ``aiobroker serve`` processes where the behaviour is about a
process (the --http flag, the printed URL, a store another node holds)."""

from __future__ import annotations

import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import httpx
import pytest
from node_process import NodeProcess, free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

import aiobroker
from aiobroker import NodeConfig
from aiobroker.config import DEFAULT_HTTP_PORT, load_config
from aiobroker.errors import ConfigError
from aiobroker.transport.connection import FramedConnection
from aiobroker.wire.frames import PROTOCOL_VERSION, Welcome

pytestmark = pytest.mark.anyio

TOKEN = "operator-token-0123456789"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[aiobroker.Node]:
    config = NodeConfig(store="sqlite", data_dir=tmp_path / "data", listen_port=0, http_port=0)
    async with aiobroker.Node(config) as n:
        yield n


async def get(node: aiobroker.Node, path: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    assert node.http_url is not None
    async with httpx.AsyncClient(base_url=node.http_url, timeout=10) as http:
        return await http.get(path, headers=headers)


async def scrape(node: aiobroker.Node, token: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed with prometheus_client's own parser: ``{(name, labels): value}``."""
    r = await get(node, "/metrics", token)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def pair(client: aiobroker.Client) -> aiobroker.Dialog:
    await client.create_queue("qi")
    await client.create_queue("qt")
    await client.create_service("init", "qi")
    await client.create_service("target", "qt", ["DEFAULT"])
    return await client.begin_dialog("init", "target")


# --- the listener -------------------------------------------------------------------------------------------


async def test_a_node_made_in_python_has_no_http_listener_unless_asked(tmp_path: Path) -> None:
    async with aiobroker.Node(NodeConfig(store="memory", listen_port=0)) as n:
        assert n.http_url is None


async def test_the_probes_answer_and_the_url_is_the_bound_port(node: aiobroker.Node) -> None:
    assert node.http_url is not None and not node.http_url.endswith(":0")
    r = await get(node, "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "serving"}
    r = await get(node, "/readyz")
    assert r.status_code == 200 and r.json() == {"ready": True}


async def test_a_taken_http_address_fails_the_start_naming_it_and_what_to_do(tmp_path: Path) -> None:
    async with aiobroker.Node(NodeConfig(store="memory", listen_port=0, http_port=0)) as first:
        assert first.http_url is not None
        port = int(first.http_url.rsplit(":", 1)[1])
        second = aiobroker.Node(NodeConfig(store="sqlite", data_dir=tmp_path / "d", listen_port=0, http_port=port))
        with pytest.raises(ConfigError, match=f"cannot listen for HTTP on 127.0.0.1:{port}") as info:
            await second.start()
        assert "--http HOST:PORT" in info.value.message and "--http off" in info.value.message
        assert not (tmp_path / "d").exists(), "the failed start touched the store"


async def test_readyz_says_stopping_while_the_node_stops(tmp_path: Path) -> None:
    """The listener outlives the broker's tasks: while the node writes what is pending and closes its store,
    /readyz answers 503 with the reason."""
    node = aiobroker.Node(NodeConfig(store="memory", listen_port=0, http_port=0))
    seen: list[httpx.Response] = []
    started, stopped = anyio.Event(), anyio.Event()

    async def run() -> None:  # start and stop in one task, as a node's task groups require
        await node.start()
        started.set()
        await node.stop()
        stopped.set()

    close = node.store.close
    release = anyio.Event()
    entered = anyio.Event()

    def slow_close() -> None:  # the store's close, held until the probe has looked (the close runs in a thread)
        anyio.from_thread.run_sync(entered.set)
        anyio.from_thread.run(release.wait)
        close()

    node.store.close = slow_close  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(10):
            await started.wait()
            url = node.http_url
            await entered.wait()
        async with httpx.AsyncClient(base_url=str(url), timeout=10) as http:
            seen.append(await http.get("/readyz"))
            seen.append(await http.get("/healthz"))
        release.set()
    assert stopped.is_set()
    assert seen[0].status_code == 503 and seen[0].json() == {"ready": False, "reason": "stopping"}
    assert seen[1].status_code == 200
    with pytest.raises(httpx.ConnectError):  # and then it is gone
        async with httpx.AsyncClient(base_url=str(url), timeout=10) as http:
            await http.get("/healthz")


# --- /api ---------------------------------------------------------------------------------------------------


async def test_the_api_gives_what_the_wire_gives(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await pair(client)
        await dialog.send("DEFAULT", b"x")
        wire_status = await client.status()
        api_status = (await get(node, "/api/status")).json()
        assert set(api_status) == set(wire_status)
        assert api_status["queues"] == wire_status["queues"]
        assert api_status["conversations_by_state"] == wire_status["conversations_by_state"]
        assert (await get(node, "/api/list/queue")).json() == await client.list("queue")
        assert (await get(node, "/api/list/service")).json() == await client.list("service")
        wire_diagnose = await client.diagnose("//far/Orders")
        api_diagnose = (await get(node, "/api/diagnose///far/Orders")).json()
        assert api_diagnose["service"] == "//far/Orders"
        assert api_diagnose["steps"] == wire_diagnose["steps"] and api_diagnose["decision"] == wire_diagnose["decision"]
        assert (await get(node, "/api/diagnose/%2F%2Ffar%2FOrders")).json()["service"] == "//far/Orders"
        one = (await get(node, f"/api/conversations/{dialog.handle}")).json()
        assert one == await dialog.info()
        queues = {q["name"]: q for q in (await get(node, "/api/queues")).json()}
        assert queues["qt"]["waiting"] == 1 and queues["qt"]["oldest_age_seconds"] >= 0
        assert api_status["node"]["http"] == wire_status["node"]["http"] == node.http_url
        index = (await get(node, "/api")).json()
        assert index["listen"] == node.url and "/api/conversations" in index["endpoints"]
        assert (await get(node, "/api/links")).json()["links"] == []
        assert (await get(node, "/api/resolving")).json()["in_flight"] == []


async def test_api_errors_say_what_was_wrong(node: aiobroker.Node) -> None:
    r = await get(node, "/api/list/queues")
    assert r.status_code == 400 and "queue" in r.json()["message"]
    r = await get(node, "/api/conversations/no-such-handle")
    assert r.status_code == 404 and r.json()["error"] == "unknown_object"
    r = await get(node, "/api/conversations?limit=0")
    assert r.status_code == 400 and "limit must be from 1 to 1000" in r.json()["message"]
    r = await get(node, "/api/conversations?delayed=maybe")
    assert r.status_code == 400 and "delayed must be true or false" in r.json()["message"]
    r = await get(node, "/api/conversations?servce=x")
    assert r.status_code == 400 and "unknown parameter 'servce'" in r.json()["message"]
    r = await get(node, "/api/conversations?after=garbage")
    assert r.status_code == 400 and "not a cursor" in r.json()["message"]


async def test_conversations_page_by_cursor_and_filter(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        first = await pair(client)
        await client.create_queue("qo")
        await client.create_service("other", "qo")
        handles: list[str] = [first.handle]
        for i in range(250):
            d = await client.begin_dialog("init" if i % 5 else "other", "target" if i % 5 else "//nowhere/Svc")
            if not i % 5:
                await d.send("DEFAULT", b"no route: DELAYED")
            handles.append(d.handle)
        await client.begin_dialog("init", "target")  # one more, so that pages do not end evenly
        seen: list[str] = []
        after = ""
        for _ in range(10):
            page = (await get(node, f"/api/conversations?limit=60&after={after}")).json()
            seen.extend(c["handle"] for c in page["conversations"])
            if page["next"] is None:
                break
            after = page["next"]
        assert page["total"] == 252 and len(seen) == len(set(seen)) == 252
        assert seen[:251] == handles

        delayed = (await get(node, "/api/conversations?delayed=true&limit=1000")).json()["conversations"]
        assert [c["handle"] for c in delayed] == handles[1::5]
        assert all(isinstance(c["delayed"], str) and c["delayed"] for c in delayed)  # the reason, in words
        by_service = (await get(node, "/api/conversations?service=other&limit=1000")).json()["conversations"]
        assert [c["handle"] for c in by_service] == handles[1::5]
        not_delayed = (await get(node, "/api/conversations?delayed=false&service=init&limit=1000")).json()
        assert len(not_delayed["conversations"]) == 202 and not_delayed["next"] is None
        conversing = (await get(node, "/api/conversations?state=conversing&limit=1000")).json()["conversations"]
        assert sorted(c["handle"] for c in conversing) == sorted(handles[1::5])  # sent once: conversing
        so = (await get(node, "/api/conversations?state=SO&limit=1000")).json()
        assert len(so["conversations"]) == 252 - 50


@pytest.mark.slow
async def test_a_page_of_100000_conversations_answers_in_milliseconds() -> None:
    """The cursor finds its place without a walk in Python: the last page of 100,000 costs about the first."""
    async with aiobroker.Node(NodeConfig(store="memory", listen_port=0, http_port=0)) as node:
        async with aiobroker.connect(node.url) as client:
            await pair(client)
        core = node.core  # 100,000 conversations made directly in the core: the wire is not what is measured here
        for _ in range(100_000 - 1):  # and the one pair() began
            core.begin_dialog(from_service="init", to_service="target", contract="DEFAULT", now=node.clock())
        node.after_core()
        handles = list(core.endpoints)
        assert len(handles) == 100_000
        async with httpx.AsyncClient(base_url=str(node.http_url), timeout=10) as http:

            async def timed(path: str) -> tuple[float, dict[str, Any]]:
                started = time.perf_counter()
                r = await http.get(path)
                assert r.status_code == 200, r.text
                return time.perf_counter() - started, r.json()

            first = [await timed("/api/conversations?limit=100") for _ in range(5)]
            cursor = f"{99_800}.{handles[99_800]}"
            deep = [await timed(f"/api/conversations?limit=100&after={cursor}") for _ in range(5)]
        assert [c["handle"] for c in deep[0][1]["conversations"]] == handles[99_801:99_901]
        assert deep[0][1]["next"] == f"{99_900}.{handles[99_900]}"
        took = statistics.median(t for t, _ in deep)
        assert took < 0.05, f"a deep page took {took * 1000:.1f} ms (first page {statistics.median(t for t, _ in first) * 1000:.1f} ms)"


# --- /metrics -----------------------------------------------------------------------------------------------


async def test_message_counters_move_by_exactly_what_flows(node: aiobroker.Node) -> None:
    n = 37
    async with aiobroker.connect(node.url) as client:
        dialog = await pair(client)
        before = await scrape(node)
        await dialog.send_many([("DEFAULT", b"%d" % i) for i in range(n)])
        after_send = await scrape(node)
        assert value(after_send, "aiobroker_messages_sent_total") - value(before, "aiobroker_messages_sent_total") == n
        assert value(after_send, "aiobroker_queue_messages", queue="qt", state="waiting") == n
        writes = value(after_send, "aiobroker_store_write_seconds_count")
        assert writes > value(before, "aiobroker_store_write_seconds_count")
        assert value(after_send, "aiobroker_store_batch_rows_sum") >= n

        batch = await client.receive("qt", max_messages=5, timeout=5)
        assert len(batch) == 5
        await batch.rollback()
        got = 0
        while got < n:
            batch = await client.receive("qt", max_messages=100, timeout=5)
            got += len(batch)
            await batch.commit()
        after = await scrape(node)

    def moved(name: str) -> float:
        return value(after, name) - value(before, name)

    assert moved("aiobroker_messages_received_total") == n + 5
    assert moved("aiobroker_messages_rolled_back_total") == 5
    assert moved("aiobroker_messages_committed_total") == n
    assert value(after, "aiobroker_queue_messages", queue="qt", state="waiting") == 0
    assert value(after, "aiobroker_ready") == 1
    assert value(after, "aiobroker_conversations", state="conversing") == 2  # both sides, on this node


async def test_queue_age_and_delayed_messages_per_service_and_reason(tmp_path: Path) -> None:
    now = [1_000_000.0]
    config = NodeConfig(store="memory", listen_port=0, http_port=0)
    async with aiobroker.Node(config, clock=lambda: now[0]) as node:
        async with aiobroker.connect(node.url) as client:
            dialog = await pair(client)
            await dialog.send("DEFAULT", b"waits")
            await client.create_queue("qo")
            await client.create_service("other", "qo")
            far = await client.begin_dialog("other", "//far/Orders")
            await far.send_many([("DEFAULT", b"1"), ("DEFAULT", b"2"), ("DEFAULT", b"3")])
        now[0] += 42.0
        samples = await scrape(node)
    assert value(samples, "aiobroker_queue_oldest_message_age_seconds", queue="qt") == 42.0
    assert value(samples, "aiobroker_queue_oldest_message_age_seconds", queue="qo") == 0.0
    assert value(samples, "aiobroker_delayed_messages", service="//far/Orders", reason="no_route") == 3
    assert value(samples, "aiobroker_delayed_conversations", service="//far/Orders", reason="no_route") == 1
    assert value(samples, "aiobroker_transmission_queue_messages") == 3


async def test_event_loop_lag_shows_a_blocked_loop_and_connections_count_clients() -> None:
    async with aiobroker.Node(NodeConfig(store="memory", listen_port=0, http_port=0)) as node:
        assert value(await scrape(node), "aiobroker_connections", kind="client") == 0
        async with aiobroker.connect(node.url), aiobroker.connect(node.url):
            assert value(await scrape(node), "aiobroker_connections", kind="client") == 2
        # block the event loop the node runs on (this test's) for longer than the watch's half second, so that its
        # timer falls due inside the block and runs at least 0.3 s late
        time.sleep(0.8)

        async def lagged() -> float | None:
            lag = value(await scrape(node), "aiobroker_event_loop_lag_max_seconds")
            return lag if lag >= 0.3 else None

        with anyio.fail_after(5):
            while (lag := await lagged()) is None:
                await anyio.sleep(0.05)  # polled under a deadline until the watch has measured
        assert lag < 5


async def test_two_nodes_in_one_process_each_show_their_own_numbers() -> None:
    config = NodeConfig(store="memory", listen_port=0, http_port=0)
    async with aiobroker.Node(config) as a, aiobroker.Node(config) as b:
        async with aiobroker.connect(a.url) as client:
            dialog = await pair(client)
            await dialog.send_many([("DEFAULT", b"x")] * 3)
        assert value(await scrape(a), "aiobroker_messages_sent_total") == 3
        assert value(await scrape(b), "aiobroker_messages_sent_total") == 0


async def test_a_link_shows_its_state_acknowledgements_and_round_trip() -> None:
    config = NodeConfig(store="memory", listen_port=0, http_port=0)
    n = 25
    async with aiobroker.Node(config) as a, aiobroker.Node(config) as b:
        async with aiobroker.connect(a.url) as ca, aiobroker.connect(b.url) as cb:
            await ca.create_queue("qa")
            await ca.create_service("svcA", "qa")
            await cb.create_queue("qb")
            await cb.create_service("svcB", "qb", ["DEFAULT"])
            await ca.create("route", {"name": "to-b", "service_name": "svcB", "address": b.url})
            dialog = await ca.begin_dialog("svcA", "svcB")
            await dialog.send_many([("DEFAULT", b"%d" % i) for i in range(n)])
            peer = b.url

            async def acknowledged() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
                samples = await scrape(a)
                return samples if value(samples, "aiobroker_messages_acknowledged_total") == n else None

            with anyio.fail_after(20):
                while (samples := await acknowledged()) is None:
                    await anyio.sleep(0.05)  # polling the other node's progress, under a deadline
            assert value(samples, "aiobroker_link_state", peer=peer, state="connected") == 1
            assert value(samples, "aiobroker_link_state", peer=peer, state="retrying") == 0
            assert value(samples, "aiobroker_link_ack_seconds", peer=peer) >= 0
            assert value(samples, "aiobroker_transmission_queue_messages") == 0
            assert value(samples, "aiobroker_connections", kind="peer_out") == 1
            assert value(await scrape(b), "aiobroker_connections", kind="peer_in") == 1
            links = (await get(a, "/api/links")).json()["links"]
            assert [(lk["address"], lk["state_kind"]) for lk in links] == [(peer, "connected")]


async def test_messages_a_silent_peer_never_acknowledges_count_as_retransmitted() -> None:
    """A peer that takes the link and its messages and never acknowledges them: after ack_timeout the link fails,
    and what was sent on it is counted once per time it has to go again."""
    received: list[int] = []

    async def silent_peer(stream: Any) -> None:
        conn = FramedConnection(stream, max_frame_size=16 * 1024 * 1024, peer="test")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.writer)
                await conn.receive_one()  # HELLO
                conn.send_frame(Welcome(version=PROTOCOL_VERSION, broker_instance="silent", info={}))
                try:
                    while True:
                        received.extend(len(f.messages) for f in await conn.receive_frames())
                except Exception:  # noqa: BLE001 - the node gave up on this connection: that is the point
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await conn.aclose()

    n = 7
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    config = NodeConfig(store="memory", listen_port=0, http_port=0, ack_timeout=0.3)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, silent_peer)
        async with aiobroker.Node(config) as node, aiobroker.connect(node.url) as client:
            await client.create_queue("qa")
            await client.create_service("svcA", "qa")
            await client.create("route", {"name": "silent", "service_name": "svcS", "address": f"tcp://127.0.0.1:{port}"})
            await (await client.begin_dialog("svcA", "svcS")).send_many([("DEFAULT", b"x")] * n)

            async def retransmitted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
                samples = await scrape(node)
                return samples if value(samples, "aiobroker_messages_retransmitted_total") >= n else None

            with anyio.fail_after(20):
                while (samples := await retransmitted()) is None:
                    await anyio.sleep(0.05)  # polling the link's progress, under a deadline
            failures = value(samples, "aiobroker_link_failures_total", peer=f"tcp://127.0.0.1:{port}")
            assert failures >= 1
            assert value(samples, "aiobroker_messages_retransmitted_total") == n * failures
            assert value(samples, "aiobroker_messages_acknowledged_total") == 0
            assert value(samples, "aiobroker_transmission_queue_messages") == n
        tg.cancel_scope.cancel()
    assert sum(received) >= n


async def test_a_resolver_shows_its_requests_answers_failures_and_latency(tmp_path: Path) -> None:
    """static_file answers one service (with an address nothing listens on) and not the other: one answer, one
    not_found; the answered service's link then fails and retries."""
    routes = tmp_path / "routes.toml"
    routes.write_text('[services."//far/Known"]\ntargets = [{ address = "tcp://127.0.0.1:9" }]\n')
    config = NodeConfig(store="memory", listen_port=0, http_port=0, connect_timeout=1.0,
                        resolver={"kind": "static_file", "path": str(routes)})  # fmt: skip
    async with aiobroker.Node(config) as node, aiobroker.connect(node.url) as client:
        await client.create_queue("qa")
        await client.create_service("svcA", "qa")
        for far in ("//far/Known", "//far/Unknown"):
            await (await client.begin_dialog("svcA", far)).send("DEFAULT", b"x")

        async def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
            samples = await scrape(node)
            failures = samples.get(("aiobroker_link_failures_total", (("peer", "tcp://127.0.0.1:9"),)), 0)
            return samples if failures >= 1 else None

        with anyio.fail_after(20):
            while (samples := await settled()) is None:
                await anyio.sleep(0.05)  # polling the node's progress, under a deadline
        resolver = {"resolver": "static_file"}
        # the unknown service is asked again after its back-off (2 s, doubling): once or more by now
        requests = value(samples, "aiobroker_resolver_requests_total", **resolver)
        not_found = value(samples, "aiobroker_resolver_failures_total", kind="not_found", **resolver)
        assert value(samples, "aiobroker_resolver_answers_total", **resolver) == 1
        assert not_found >= 1 and requests == 1 + not_found
        assert value(samples, "aiobroker_resolver_latency_seconds_count", **resolver) == requests
        assert value(samples, "aiobroker_delayed_messages", service="//far/Unknown", reason="retry_wait") == 1
        assert value(samples, "aiobroker_link_state", peer="tcp://127.0.0.1:9", state="retrying") == 1
        assert value(samples, "aiobroker_link_failed_attempts", peer="tcp://127.0.0.1:9") >= 1
        resolving = (await get(node, "/api/resolving")).json()
        assert resolving["resolver"] == "static_file"
        counts = resolving["resolvers"]["static_file"]
        assert counts["answers"] == 1 and counts["requests"] == 1 + counts["failures"]["not_found"] >= requests
        assert resolving["delayed"] == [{"service": "//far/Unknown", "reason": "retry_wait", "messages": 1,
                                         "conversations": 1}]  # fmt: skip
        links = (await get(node, "/api/links")).json()["links"]
        assert links[0]["state_kind"] == "retrying" and links[0]["failures"] >= 1 and links[0]["last_error"]


async def test_over_tls_the_listener_speaks_https_with_the_nodes_certificate(tmp_path: Path) -> None:
    from test_tls import issue, make_ca

    ca = make_ca(tmp_path, "monitor-ca")
    cert, key = issue(tmp_path, ca, "node")
    config = NodeConfig(store="memory", listen_port=0, http_port=0, tls_cert=cert, tls_key=key)
    async with aiobroker.Node(config) as node:
        url = str(node.http_url)
        assert url.startswith("https://127.0.0.1:")
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca[2])), timeout=10) as http:
            assert (await http.get(f"{url}/readyz")).json() == {"ready": True}
            assert "aiobroker_ready 1.0" in (await http.get(f"{url}/metrics")).text
        async with httpx.AsyncClient(timeout=10) as http:
            with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
                await http.get(url.replace("https://", "http://") + "/healthz")


# --- rights -------------------------------------------------------------------------------------------------


def guarded(**extra: Any) -> NodeConfig:
    objects = (("identity", {"name": "operator", "tokens": [TOKEN], "admin": True}),)
    return NodeConfig(store="memory", listen_port=0, http_port=0, authorization=True, objects=objects, **extra)


async def test_with_authorization_the_api_needs_a_token_and_says_how_to_give_one() -> None:
    async with aiobroker.Node(guarded()) as node:
        r = await get(node, "/api/status")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer TOKEN" in r.json()["message"]
        r = await get(node, "/api/status", token="wrong-token-0123456789")
        assert r.status_code == 401 and "matches no identity" in r.json()["message"]
        r = await get(node, "/api/conversations", token=TOKEN)
        assert r.status_code == 200
        r = await get(node, "/api/status", token=TOKEN)
        assert r.status_code == 200 and r.json()["security"]["authorization"] is True
        r = await get(node, "/metrics")
        assert r.status_code == 401 and "metrics_open" in r.json()["message"]
        assert "aiobroker_messages_sent_total" in (await get(node, "/metrics", token=TOKEN)).text
        assert (await get(node, "/api")).status_code == 401
        for probe in ("/healthz", "/readyz"):  # probes carry no token
            assert (await get(node, probe)).status_code == 200


async def test_metrics_open_lets_a_scraper_in_without_a_token() -> None:
    async with aiobroker.Node(guarded(http_metrics_open=True)) as node:
        assert (await get(node, "/metrics")).status_code == 200
        assert (await get(node, "/api/status")).status_code == 401


# --- aiobroker serve ----------------------------------------------------------------------------------------


def http_get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5)


@pytest.mark.slow
async def test_serve_with_http_prints_the_url_and_counts_what_its_clients_send(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", http="127.0.0.1:0").start()
    try:
        url = node.http_url()
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert http_get(f"{url}/readyz").json() == {"ready": True}
        async with aiobroker.connect(node.url) as client:
            dialog = await pair(client)
            await dialog.send_many([("DEFAULT", b"m")] * 11)
        families = {f.name: f for f in text_string_to_metric_families(http_get(f"{url}/metrics").text)}
        assert families["aiobroker_messages_sent"].samples[0].value == 11  # the parser drops _total from the name
        assert families["aiobroker_messages_sent"].type == "counter"
    finally:
        assert node.stop() == 0, node.output()
    assert "Traceback" not in node.output()


def test_http_listen_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[http]\nlisten = "off"\n')
    assert load_config(config, defaults={"http_port": 4080}).http_port is None
    config.write_text('[http]\nlisten = "[::1]:0"\nmetrics_open = true\n')
    loaded = load_config(config)
    assert (loaded.http_host, loaded.http_port, loaded.http_metrics_open, loaded.http_optional) == ("::1", 0, True, False)
    assert loaded.http_listen == "[::1]:0"
    config.write_text('[http]\nlisten = "4080"\n')
    with pytest.raises(ConfigError, match=r'\[http\] listen: bad listen address .* or "off" for no HTTP listener'):
        load_config(config)


def test_serve_with_a_bad_http_address_says_which_flag(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "aiobroker", "serve", "--http", "nowhere", "--store", "memory"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert r.returncode != 0 and "--http: bad listen address 'nowhere'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_serve_starts_without_http_when_its_default_port_is_taken(tmp_path: Path) -> None:
    """The default address is the one optional: held here (or by anyone else) the node starts, and says how to give
    it a port of its own."""
    with socket.socket() as holder:
        # Held by this test, not merely "held by someone": another process (a benchmark's node on the default
        # port) may let it go between our look and the node's bind, and the node would then have it. Wait for it.
        def bound() -> bool:
            try:
                holder.bind(("127.0.0.1", DEFAULT_HTTP_PORT))
            except OSError:
                return False
            return True

        wait_for(bound, 60, f"port {DEFAULT_HTTP_PORT}, held by another process, to be free for this test to hold")
        holder.listen()
        node = NodeProcess(tmp_path / "data", http="").start()  # no --http flag at all: serve's default
        try:
            line = wait_for(lambda: [ln for ln in node.output().splitlines() if "no HTTP monitoring" in ln], 20,
                            "the warning")  # fmt: skip
            assert f"cannot listen on 127.0.0.1:{DEFAULT_HTTP_PORT}" in line[0] and "--http HOST:PORT" in line[0]
        finally:
            assert node.stop() == 0, node.output()


@pytest.mark.slow
def test_serve_http_off_says_so_at_start(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data", http="off").start()
    try:
        line = wait_for(lambda: [ln for ln in node.output().splitlines() if "listening on" in ln], 20, "the start-up line")
        assert "no HTTP monitoring" in line[0] and "monitoring on" not in line[0]
    finally:
        assert node.stop() == 0, node.output()


@pytest.mark.slow
def test_readyz_is_503_while_the_store_is_held_by_another_node_then_200(tmp_path: Path) -> None:
    """``[node] store_wait``: a node whose data directory another node still holds waits for it; meanwhile the
    process serves (/healthz 200) and is not ready (/readyz 503, saying why), and once the other lets go, it is."""
    data = tmp_path / "data"
    holder = NodeProcess(data).start()
    config = tmp_path / "node.toml"
    config.write_text("[node]\nstore_wait = 60\n")
    http_port = free_port()
    waiter = NodeProcess(data, http=f"127.0.0.1:{http_port}", extra=["--config", str(config)])
    try:
        waiter.launch()  # not start(): it accepts no client until it has the store
        base = f"http://127.0.0.1:{http_port}"

        def answer(path: str) -> httpx.Response | None:
            assert waiter.proc is not None and waiter.proc.poll() is None, waiter.output()
            try:
                return http_get(base + path)
            except httpx.TransportError:
                return None

        # the first answers may still say "opening the store": the node learns the store is held when it tries it
        def held() -> httpx.Response | None:
            r = answer("/readyz")
            return r if r is not None and "in use by another aiobroker node" in r.json().get("reason", "") else None

        not_ready = wait_for(held, 20, "the waiting node's /readyz to say the store is held by another node")
        assert not_ready.status_code == 503
        assert (answer("/healthz") or httpx.Response(0)).status_code == 200
        assert (answer("/api/status") or httpx.Response(0)).status_code == 503
        assert "waiting up to" in waiter.output()

        assert holder.stop() == 0, holder.output()
        ready = wait_for(lambda: (r := answer("/readyz")) is not None and r.status_code == 200 and r, 30,
                         "the waiting node to open the store and be ready")  # fmt: skip
        assert ready.json() == {"ready": True}
    finally:
        holder.stop()
        assert waiter.stop() == 0, waiter.output()

