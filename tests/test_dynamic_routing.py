"""Dynamic routing end to end: real node processes, real resolvers' sources (a file, dnsmasq, an HTTP registry).

Node A has service svcA, a ``[resolver]`` and NO route to svcB; node B has svcB (accepting DEFAULT) and a static
route back to svcA (acknowledgements travel back on the connection, replies would need that route). What A does when
no route names svcB (``aiobroker/core/dynamic.py``, ``aiobroker/core/dispatcher.py``): the messages wait DELAYED,
one request per service goes to the resolver, its answer becomes routes with the answer's lifetime, and the waiting
messages are released in order. Each scenario checks what an operator sees (``status``, ``diagnose``, the log)
while messages wait, and that afterwards every message arrives at B exactly once and in order.

Every wait is a poll with a deadline; every process is stopped by its pid; the network is 127.0.0.1 (and, across
hosts, only the namespaces the test makes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from dnsmasq import Dnsmasq, Host, Srv
from dynamic_helpers import (
    LOOPBACK,
    Registry,
    assert_exactly_once_in_order,
    cid,
    node_config,
    lone_node,
    netns_prefix,
    node_pair,
    numbered,
    receive,
    routes_file_toml,
    service_state,
    until,
    write_atomically,
)
from hosts import require_variant
from netns import Topology
from node_process import NodeProcess, free_port, wait_for

import aiobroker
from aiobroker.security.certs import create_self_signed

pytestmark = pytest.mark.slow

RELEASE_TIMEOUT = 20.0  # the node asks again after its retry interval (~2 s): far inside this bound


async def send_numbered(dialog: aiobroker.Dialog, first: int, count: int, batch: int = 25) -> None:
    for start in range(first, first + count, batch):
        await dialog.send_many(numbered(start, min(batch, first + count - start)))


async def transmission_empty(client: aiobroker.Client) -> bool:
    return bool((await client.status())["transmission"]["messages"] == 0)


# --------------------------------------------------------------------------------------------- 1. static_file


@pytest.mark.anyio
async def test_static_file_delayed_until_the_file_names_the_service_then_a_broken_edit_changes_nothing(
    tmp_path: Path,
) -> None:
    # default_lifetime is how long "not found" holds (the retry interval after it); the entry's own lifetime is
    # short so that the node asks the file again (ahead of expiry, or after it) while the test sends
    resolver = {"kind": "static_file", "path": "routes.toml", "default_lifetime": 2}
    with node_pair(tmp_path, resolver) as pair:
        routes = pair.home_a / "routes.toml"  # relative in the config: relative to the config file
        other = {"address": f"tcp://{LOOPBACK}:{free_port()}"}
        write_atomically(routes, routes_file_toml({"svcOther": [other]}))
        async with aiobroker.connect(pair.a.url) as ca, aiobroker.connect(pair.b.url) as cb:
            dialogs = [await ca.begin_dialog("svcA", "svcB") for _ in range(3)]
            for d in dialogs:
                await send_numbered(d, 0, 40)  # accepted: stored at A, though nothing says where svcB is

            async def asked_and_not_found() -> dict[str, Any] | None:
                state = service_state(await ca.status(), "svcB")
                if state and state["last"] and not state["last"]["ok"]:
                    return state
                return None

            state = await until(asked_and_not_found, 10, "A to ask the file about svcB and hear 'not found'")
            assert state["delayed_conversations"] == 3 and state["delayed_messages"] == 120, state
            assert "not found" in state["last"]["text"] and str(routes) in state["last"]["text"], state
            assert state["in_flight"] is None and 0 < state["next_retry_in"] <= 2 * 1.2, state  # ~2 s, +20% jitter
            status = await ca.status()
            assert status["delayed"]["svcB"]["messages"] == 120
            assert "waiting for dynamic routing" in status["delayed"]["svcB"]["reason"]
            diagnosis = await ca.diagnose("svcB")
            step4 = [line for line in diagnosis["steps"] if line.startswith("4.")]
            assert step4 and "dynamic routing is on" in step4[0], diagnosis["steps"]
            assert diagnosis["steps"][-1].startswith("decision: resolve: step 4"), diagnosis["steps"]
            assert diagnosis["delayed_messages"] == 120 and diagnosis["resolver"] == "static_file", diagnosis
            assert not await cb.receive("qb", timeout=0), "a message reached B before A knew where svcB is"

            # the file now names B: the node asks again after its retry interval and releases everything, in order
            entry = {"address": pair.b_address, "weight": 2}
            write_atomically(routes, routes_file_toml({"svcOther": [other], "svcB": [entry]}, lifetime=3))
            received = await receive(cb, "qb", 120, RELEASE_TIMEOUT)
            assert_exactly_once_in_order(received, {cid(d): 40 for d in dialogs})
            diagnosis = await ca.diagnose("svcB")
            made = [r for r in diagnosis["routes"] if r["origin"] == "static_file"]
            assert [(r["address"], r["weight"]) for r in made] == [(pair.b_address, 2)], diagnosis["routes"]
            assert made[0]["expires_at"] is not None and made[0]["expires_at"] - time.time() <= 3.5, made
            assert diagnosis["request"]["last"]["ok"], diagnosis["request"]
            await until(lambda: transmission_empty(ca), 10, "B's acknowledgements to reach A")

            # a broken edit: the last good contents stay in service, one warning names the file. The file is read
            # again on the next question, and questions come from new conversations (one already on its link
            # keeps it): new ones while the 3 s route lives make the node ask again ahead of its expiry, new ones
            # after it make it ask at once.
            write_atomically(routes, '[services."svcB"]\ntargets = [ { address = \n')
            log_line = f"resolver file {routes}: "
            later: list[aiobroker.Dialog] = []

            async def warned() -> bool:
                dialog = await ca.begin_dialog("svcA", "svcB")
                later.append(dialog)
                await send_numbered(dialog, 0, 5)
                return log_line in pair.a.output()

            await until(warned, 15, "A to read the broken file and warn", interval=0.3)
            for i in range(5):  # and traffic goes on after the warning, on old and new conversations
                await send_numbered(dialogs[0], 40 + 5 * i, 5)
                later.append(await ca.begin_dialog("svcA", "svcB"))
                await send_numbered(later[-1], 0, 5)
                await anyio.sleep(0.2)  # pacing the stream
            received = await receive(cb, "qb", 25 + 5 * len(later), RELEASE_TIMEOUT)
            first = received.pop(cid(dialogs[0]), [])
            assert [(seq, int(body)) for seq, _, body in first] == [(n, n) for n in range(40, 65)], first
            assert_exactly_once_in_order(received, {cid(d): 5 for d in later})
            warnings = [line for line in pair.a.output().splitlines() if log_line in line]
            assert len(warnings) == 1, warnings  # once per broken version, not once per question
            assert "WARNING" in warnings[0] and "keeping its last good contents" in warnings[0], warnings
            details = (await ca.status())["dynamic_routing"]["resolver_details"]
            assert details["last_error"] and details["services"] == 2, details
            await until(lambda: transmission_empty(ca), 10, "B's acknowledgements to reach A")


# --------------------------------------------------------------------------------------------- 2. dns_srv


@pytest.mark.anyio
async def test_dns_srv_delivers_through_the_preferred_record_and_nxdomain_keeps_messages_delayed(
    tmp_path: Path,
) -> None:
    b_port = free_port()
    dead_port = free_port()  # the backup record's port: nothing listens there, and nothing must be sent there
    records: list[Srv | Host] = [
        Srv("_aiobroker._tcp.svcb.test", "b.test", b_port, priority=0, weight=5),
        Srv("_aiobroker._tcp.svcb.test", "backup.test", dead_port, priority=10, weight=50),
        Host("b.test", (LOOPBACK,)),
        Host("backup.test", (LOOPBACK,)),
    ]
    with Dnsmasq(tmp_path, records=records, ttl=2) as dns:
        resolver = {
            "kind": "dns_srv", "domain": "test", "nameservers": [dns.nameserver], "timeout": 2, "lifetime_floor": 1,
        }  # fmt: skip
        with node_pair(tmp_path, resolver, b_port=b_port) as pair:
            async with aiobroker.connect(pair.a.url) as ca, aiobroker.connect(pair.b.url) as cb:
                dialogs = [await ca.begin_dialog("svcA", "svcB") for _ in range(2)]
                ghost = await ca.begin_dialog("svcA", "svcGhost")
                await ghost.send_many(numbered(0, 7))
                for d in dialogs:
                    await send_numbered(d, 0, 50)
                received = await receive(cb, "qb", 100, RELEASE_TIMEOUT)
                assert_exactly_once_in_order(received, {cid(d): 50 for d in dialogs})
                diagnosis = await ca.diagnose("svcB")
                made = [r for r in diagnosis["routes"] if r["origin"] == "dns_srv"]
                # only the lowest priority is used; an SRV weight w becomes 100 * w
                assert [(r["address"], r["weight"]) for r in made] == [(pair.b_address, 500)], diagnosis["routes"]
                assert made[0]["expires_at"] - time.time() <= 2.5, made  # the TTL (2 s) is the route's lifetime

                # NXDOMAIN for svcGhost: its messages stay DELAYED, with the reason in status
                async def ghost_not_found() -> dict[str, Any] | None:
                    state = service_state(await ca.status(), "svcGhost")
                    return state if state and state["last"] and not state["last"]["ok"] else None

                state = await until(ghost_not_found, 10, "A to hear NXDOMAIN for svcGhost")
                assert "NXDOMAIN" in state["last"]["text"], state
                assert state["delayed_messages"] == 7 and state["delayed_conversations"] == 1, state
                status = await ca.status()
                assert status["delayed"]["svcGhost"]["messages"] == 7
                assert "waiting for dynamic routing" in status["delayed"]["svcGhost"]["reason"], status["delayed"]
                # (that per-conversation reason still says "asked the resolver" after the answer came: see
                # test_the_delayed_reason_names_the_last_failure_not_a_request_long_answered below)
                assert status["transmission"]["messages"] == 7

                # the short TTL runs out (no new conversations, so no refresh): the next conversation's first
                # messages make a new question (those already on their link keep it)
                async def expired() -> bool:
                    return any(line.startswith("ignored, expired") for line in (await ca.diagnose("svcB"))["steps"])

                await until(expired, 10, "the 2 s route to svcB to expire")
                requests_before = (await ca.status())["dynamic_routing"]["requests_made"]
                late = await ca.begin_dialog("svcA", "svcB")
                await send_numbered(late, 0, 20)
                received = await receive(cb, "qb", 20, RELEASE_TIMEOUT)
                assert_exactly_once_in_order(received, {cid(late): 20})
                assert (await ca.status())["dynamic_routing"]["requests_made"] > requests_before
                ghost_state = service_state(await ca.status(), "svcGhost")
                assert ghost_state is not None and ghost_state["delayed_messages"] == 7, ghost_state
                assert (await cb.status())["conversations"] == 3  # nothing of svcGhost's ever reached B
            assert "svcghost" in dns.output().lower()


@pytest.mark.anyio
async def test_an_srv_target_dot_with_a_2s_ttl_is_asked_again_after_2_then_4_seconds(tmp_path: Path) -> None:
    # issue 11: "service decidedly not available" held for 2 s was asked every 2 s for good (7 queries in 14 s);
    # the answer's hold time is a lower bound, and failures double the wait from 2 s (with +-20% jitter) to 60 s
    srv = "_aiobroker._tcp.svcx.test"
    with Dnsmasq(tmp_path, records=[Srv(srv, ".")], ttl=2) as dns:
        resolver = {"kind": "dns_srv", "domain": "test", "nameservers": [dns.nameserver], "timeout": 2}
        with lone_node(tmp_path, resolver) as node:
            async with aiobroker.connect(node.url) as client:
                await (await client.begin_dialog("svcA", "svcX")).send_many(numbered(0, 3))
                seen: list[float] = []  # when each SRV query showed in dnsmasq's log (polled every 20 ms)

                async def asked_three_times() -> bool:
                    count = dns.output().count(f"auth[SRV] {srv} from")
                    seen.extend([time.monotonic()] * (count - len(seen)))
                    return count >= 3

                await until(asked_three_times, 15, "three SRV queries for svcX", interval=0.02)
                first, second = seen[1] - seen[0], seen[2] - seen[1]
                assert 1.9 <= first <= 2.4 + 0.5, seen  # the back-off's 2 s, at least the TTL's 2 s
                assert 3.2 - 0.1 <= second <= 4.8 + 0.5, seen  # doubled (4 s +-20%), though the TTL still says 2 s
                diagnosis = await client.diagnose("svcX")
                assert diagnosis["asks"] == f"the dns_srv resolver (SRV {srv}. at nameserver {dns.nameserver})"
                assert "decidedly not available" in diagnosis["delayed_reason"], diagnosis
                assert diagnosis["request"]["failures"] >= 2, diagnosis


# --------------------------------------------------------------------------------------------- 3. http


def registry_answer(service: str, address: str, *, lifetime: float = 30) -> dict[str, Any]:
    """The aiobroker format's 200 answer."""
    return {"body": {"service": service, "lifetime": lifetime, "targets": [{"address": address}]}}


@pytest.mark.anyio
async def test_http_registry_503_keeps_messages_delayed_with_the_error_then_they_go(tmp_path: Path) -> None:
    with Registry(tmp_path) as registry:
        registry.serve({"svcB": {"status": 503, "raw": "registry overloaded"}})
        resolver = {"kind": "http", "url": registry.url(), "connect_timeout": 2, "read_timeout": 5}
        with node_pair(tmp_path, resolver) as pair:
            async with aiobroker.connect(pair.a.url) as ca, aiobroker.connect(pair.b.url) as cb:
                dialogs = [await ca.begin_dialog("svcA", "svcB") for _ in range(2)]
                for d in dialogs:
                    await send_numbered(d, 0, 30)

                async def failed() -> dict[str, Any] | None:
                    state = service_state(await ca.status(), "svcB")
                    return state if state and state["last"] and not state["last"]["ok"] else None

                state = await until(failed, 10, "A to hear the registry's 503")
                assert "503" in state["last"]["text"] and "registry overloaded" in state["last"]["text"], state
                assert state["delayed_messages"] == 60 and state["failures"] >= 1, state
                status = await ca.status()
                assert status["delayed"]["svcB"]["messages"] == 60, status["delayed"]
                assert "503" in status["dynamic_routing"]["services"]["svcB"]["last"]["text"]
                assert registry.requests("svcB"), "the registry was never asked"
                assert not await cb.receive("qb", timeout=0)

                registry.serve({"svcB": registry_answer("svcB", pair.b_address)})  # fixed
                received = await receive(cb, "qb", 60, RELEASE_TIMEOUT)
                assert_exactly_once_in_order(received, {cid(d): 30 for d in dialogs})
                diagnosis = await ca.diagnose("svcB")
                made = [r for r in diagnosis["routes"] if r["origin"] == "http"]
                assert [r["address"] for r in made] == [pair.b_address], diagnosis["routes"]
                assert 25 < made[0]["expires_at"] - time.time() <= 30.5, made  # the answer's lifetime
                assert diagnosis["request"]["last"]["ok"] and diagnosis["delayed_messages"] == 0, diagnosis
                await until(lambda: transmission_empty(ca), 10, "B's acknowledgements to reach A")


# --------------------------------------------------------------------------------------------- 4. one request


LOAD_CONVERSATIONS = 200
LOAD_MESSAGES = 5
REGISTRY_DELAY = 2.0


@pytest.mark.anyio
async def test_one_request_per_service_while_200_conversations_wait(tmp_path: Path) -> None:
    with Registry(tmp_path) as registry:
        with node_pair(tmp_path, {"kind": "http", "url": registry.url(), "read_timeout": 10}) as pair:
            registry.serve({"svcB": {**registry_answer("svcB", pair.b_address), "delay": REGISTRY_DELAY}})
            async with aiobroker.connect(pair.a.url) as ca, aiobroker.connect(pair.b.url) as cb:
                dialogs = [await ca.begin_dialog("svcA", "svcB") for _ in range(LOAD_CONVERSATIONS)]
                started = time.monotonic()
                async with anyio.create_task_group() as tg:  # every conversation sends at once
                    for d in dialogs:
                        tg.start_soon(d.send_many, numbered(0, LOAD_MESSAGES))
                sending = time.monotonic() - started

                body_bytes = LOAD_CONVERSATIONS * sum(len(body) for _, body in numbered(0, LOAD_MESSAGES))

                async def all_waiting_on_one_request() -> tuple[dict[str, Any], dict[str, Any]] | None:
                    status = await ca.status()
                    state = service_state(status, "svcB")
                    # stored, their bodies wait in the store only (SQLite: core/tx_bodies.py), not in memory
                    if (state and state["delayed_conversations"] == LOAD_CONVERSATIONS
                            and status["memory"]["in_store_only_bytes"] == body_bytes):
                        return state, status["memory"]
                    return None

                state, memory = await until(all_waiting_on_one_request, REGISTRY_DELAY, "200 conversations DELAYED")
                assert memory["in_store_only"] == 0, memory  # the rows stay in memory, in order: only their bodies go
                assert state["in_flight"] is not None, (state, f"sending took {sending:.2f}s")
                assert "resolver http" in state["in_flight"]["via"], state
                assert state["delayed_messages"] == LOAD_CONVERSATIONS * LOAD_MESSAGES, state

                received = await receive(cb, "qb", LOAD_CONVERSATIONS * LOAD_MESSAGES, RELEASE_TIMEOUT)
                assert_exactly_once_in_order(received, {cid(d): LOAD_MESSAGES for d in dialogs})
                await until(lambda: transmission_empty(ca), 10, "B's acknowledgements to reach A")
                # one round trip for the service: the route and the binding asked in one request, answered in one
                # (the registry has no binding: "binding": null, and the plain dialogs go on)
                asked = registry.questions("svcB")
                assert asked == {"route": 1, "binding": 1, "round_trips": 1}, registry.requests("svcB")
                dyn = (await ca.status())["dynamic_routing"]
                assert dyn["requests_by_kind"] == {"route": 1, "binding": 1}, dyn


@pytest.mark.anyio
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_delayed_messages_wait_without_their_bodies_in_memory_and_go_in_order(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """On a store that pages, a DELAYED message's body waits in the store only (core/tx_bodies.py): status counts
    it there, and after a kill -9 the restarted node reads none of them; the route's answer has the node read them
    back and send them, in order, with what came meanwhile."""
    store_a = "sqlite" if store == "sqlite" else request.getfixturevalue("pg_dsn")
    resolver = {"kind": "static_file", "path": "routes.toml", "default_lifetime": 1}
    with node_pair(tmp_path, resolver, store_a=store_a) as pair:
        routes = pair.home_a / "routes.toml"
        write_atomically(routes, routes_file_toml({"svcOther": [{"address": f"tcp://{LOOPBACK}:{free_port()}"}]}))
        async with aiobroker.connect(pair.a.url) as ca, aiobroker.connect(pair.b.url) as cb:
            dialogs = [await ca.begin_dialog("svcA", "svcB") for _ in range(20)]
            for d in dialogs:
                await send_numbered(d, 0, 10)
            body_bytes = 20 * sum(len(body) for _, body in numbered(0, 10))

            async def bodies_in_the_store() -> dict[str, Any] | None:
                status = await ca.status()
                memory = status["memory"]
                return memory if memory["in_store_only_bytes"] == body_bytes else None

            await until(bodies_in_the_store, 10, "the DELAYED bodies to be in the store only")
        pair.a.kill()  # SIGKILL: a restart reads the transmission queue without its bodies
        pair.a.start()
        async with aiobroker.connect(pair.a.url) as ca, aiobroker.connect(pair.b.url) as cb:
            memory = (await ca.status())["memory"]
            assert memory["in_store_only_bytes"] == body_bytes, memory
            assert (await ca.status())["dynamic_routing"]["delayed_messages"] == 200
            write_atomically(routes, routes_file_toml({"svcB": [{"address": pair.b_address}]}))
            for d in dialogs:  # sent while the node finds the route and reads the bodies back: they go behind
                await send_numbered(ca.dialog(d.handle), 10, 5)
            received = await receive(cb, "qb", 300, RELEASE_TIMEOUT)
            assert_exactly_once_in_order(received, {cid(d): 15 for d in dialogs})
            await until(lambda: transmission_empty(ca), 10, "B's acknowledgements to reach A")
            after = (await ca.status())["memory"]
            assert after["in_store_only_bytes"] == 0 and after["held_bytes"] < memory["held_bytes"], (memory, after)


# ------------------------------------------------------------------------- 4b. route and binding in one round trip


def binding_answer(certificate: str) -> dict[str, Any]:
    return {"body": {"certificate": certificate, "anonymous": True, "lifetime": 60}}


@pytest.mark.anyio
async def test_one_round_trip_brings_route_and_binding_and_secures_the_encrypted_dialog(tmp_path: Path) -> None:
    cert, key = create_self_signed("svcS owner", key_type="ec")
    with Registry(tmp_path) as registry:
        with node_pair(tmp_path, {"kind": "http", "url": registry.url()}) as pair:
            registry.serve({"svcS": registry_answer("svcS", pair.b_address)}, {"svcS": binding_answer(cert)})
            async with aiobroker.connect(pair.a.url) as ca, aiobroker.connect(pair.b.url) as cb:
                await cb.create("identity", {"name": "owner", "certificate": cert, "private_key": key})
                await cb.create_queue("qs")
                await cb.create("service", {"name": "svcS", "queue": "qs", "contracts": ["DEFAULT"], "owner": "owner"})
                secure = await ca.begin_dialog("svcA", "svcS", encryption=True)
                plain = await ca.begin_dialog("svcA", "svcS", encryption=False)
                await send_numbered(secure, 0, 10)
                await send_numbered(plain, 0, 10)
                received = await receive(cb, "qs", 20, RELEASE_TIMEOUT)
                assert_exactly_once_in_order(received, {cid(secure): 10, cid(plain): 10})
                secured = {c["handle"]: c["secured"] for c in await ca.list_conversations() if c["far_service"] == "svcS"}
                assert secured == {secure.handle: True, plain.handle: True}, secured  # the binding applies to both
                assert registry.questions("svcS") == {"route": 1, "binding": 1, "round_trips": 1}, \
                    registry.requests("svcS")
                (binding,) = await ca.list("binding")
                assert (binding["to_service"], binding["origin"], binding["anonymous"]) == ("svcS", "http", True)


@pytest.mark.anyio
async def test_with_no_binding_in_the_answer_encrypted_waits_and_plain_goes_on(tmp_path: Path) -> None:
    with Registry(tmp_path) as registry:
        with node_pair(tmp_path, {"kind": "http", "url": registry.url()}) as pair:
            registry.serve({"svcB": registry_answer("svcB", pair.b_address)})  # "binding": null
            async with aiobroker.connect(pair.a.url) as ca, aiobroker.connect(pair.b.url) as cb:
                secure = await ca.begin_dialog("svcA", "svcB", encryption=True)
                plain = await ca.begin_dialog("svcA", "svcB", encryption=False)
                await send_numbered(secure, 0, 5)
                await send_numbered(plain, 0, 5)
                received = await receive(cb, "qb", 5, RELEASE_TIMEOUT)
                assert_exactly_once_in_order(received, {cid(plain): 5})
                status = await ca.status()
                assert status["delayed"]["svcB"]["messages"] == 5, status["delayed"]
                (waiting,) = [c for c in await ca.list_conversations() if c["handle"] == secure.handle]
                assert "remote service binding" in (waiting["delayed"] or ""), waiting
                assert registry.questions("svcB") == {"route": 1, "binding": 1, "round_trips": 1}, \
                    registry.requests("svcB")


ROUTE_DELAY = 1.5


@pytest.mark.anyio
async def test_an_older_registry_answering_routes_only_still_works_and_then_is_asked_both_at_once(
    tmp_path: Path,
) -> None:
    with Registry(tmp_path) as registry:
        with node_pair(tmp_path, {"kind": "http", "url": registry.url()}) as pair:
            services = {"svcB": registry_answer("svcB", pair.b_address),
                        "svcC": {**registry_answer("svcC", pair.b_address), "delay": ROUTE_DELAY}}
            registry.serve(services, route_only=True)  # ignores Aiobroker-Ask; no bindings (404)
            async with aiobroker.connect(pair.a.url) as ca, aiobroker.connect(pair.b.url) as cb:
                await cb.create_service("svcC", "qb", ["DEFAULT"])
                first = await ca.begin_dialog("svcA", "svcB")
                await send_numbered(first, 0, 5)
                assert_exactly_once_in_order(await receive(cb, "qb", 5, RELEASE_TIMEOUT), {cid(first): 5})
                # the first answer had no "binding" member: the binding was asked on its own, the route known
                paths = [r["path"] for r in registry.requests("svcB")]
                assert paths == ["/v1/services/svcB", "/v1/services/svcB/binding"], paths
                # from then on both URLs are asked at once: the binding question does not wait for the slow route
                later = await ca.begin_dialog("svcA", "svcC")
                await send_numbered(later, 0, 5)
                assert_exactly_once_in_order(await receive(cb, "qb", 5, RELEASE_TIMEOUT), {cid(later): 5})
                asked = {r["path"]: r["t"] for r in registry.requests("svcC")}
                assert sorted(asked) == ["/v1/services/svcC", "/v1/services/svcC/binding"], asked
                gap = asked["/v1/services/svcC/binding"] - asked["/v1/services/svcC"]
                assert gap < ROUTE_DELAY / 2, f"the binding was asked {gap:.2f}s after the route: one after the other"


KILL_CONVERSATIONS = 200
KILL_MESSAGES = 50


@pytest.mark.anyio
async def test_a_kill_9_of_a_during_the_release_loses_nothing_acknowledged_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """Every message A acknowledged while DELAYED is stored: killed (SIGKILL) while the answer's release is on its
    way to B, A restarts on its data and what B has not stored goes again; B drops what it has (exactly once)."""
    with Registry(tmp_path) as registry:
        with node_pair(tmp_path, {"kind": "http", "url": registry.url(), "read_timeout": 10}) as pair:
            registry.serve({"svcB": {"status": 503, "raw": "not yet"}})  # asked again after 2 s, 4 s, ...
            async with aiobroker.connect(pair.a.url) as ca:
                dialogs = [await ca.begin_dialog("svcA", "svcB") for _ in range(KILL_CONVERSATIONS)]
                async with anyio.create_task_group() as tg:
                    for d in dialogs:
                        tg.start_soon(send_numbered, d, 0, KILL_MESSAGES)  # acknowledged: stored, DELAYED
                total = KILL_CONVERSATIONS * KILL_MESSAGES
                status = await ca.status()
                assert status["dynamic_routing"]["delayed_messages"] == total, status["dynamic_routing"]
            registry.serve({"svcB": registry_answer("svcB", pair.b_address, lifetime=600)})
            got: dict[str, list[tuple[int, str, bytes]]] = {}
            counted = [0]
            async with aiobroker.connect(pair.b.url) as cb:

                async def consume(until_count: int, timeout: float) -> None:
                    with anyio.fail_after(timeout):
                        while counted[0] < until_count:
                            batch = await cb.receive("qb", max_messages=1000, timeout=0.5)
                            for m in batch:
                                got.setdefault(m.conversation_id, []).append(
                                    (m.sequence_number, m.message_type, m.body))
                                counted[0] += 1
                            if batch:
                                await batch.commit()

                await consume(1, 20)  # the release has begun: the first messages are at B
                pair.a.kill()
                at_kill = counted[0]
                pair.a.start()  # the same data, port and config
                await consume(total, RELEASE_TIMEOUT)
                await anyio.sleep(0.5)  # a duplicate, if any, would arrive now
                batch = await cb.receive("qb", max_messages=1000, timeout=0)
                assert not batch, f"{len(batch)} message(s) beyond the {total} sent: duplicates"
            assert at_kill < total, "the kill came after the release was over: nothing was tested"
            assert_exactly_once_in_order(got, {cid(d): KILL_MESSAGES for d in dialogs})
            assert "restored" in pair.a.output(), pair.a.output()


# --------------------------------------------------------------------------------------------- 5. end while DELAYED


@pytest.mark.anyio
async def test_a_conversation_that_ends_while_delayed_never_reaches_the_target(tmp_path: Path) -> None:
    resolver = {"kind": "static_file", "path": "routes.json", "default_lifetime": 1}
    with node_pair(tmp_path, resolver) as pair:
        routes = pair.home_a / "routes.json"
        write_atomically(routes, json.dumps({"services": {}}))
        async with aiobroker.connect(pair.a.url) as ca, aiobroker.connect(pair.b.url) as cb:
            ending = await ca.begin_dialog("svcA", "svcB")
            staying = await ca.begin_dialog("svcA", "svcB")
            await ending.send_many(numbered(0, 10))
            await staying.send_many(numbered(0, 10))
            await ending.send_many(numbered(10, 10))

            async def delayed(conversations: int, messages: int) -> bool:
                state = service_state(await ca.status(), "svcB")
                return bool(
                    state and state["delayed_conversations"] == conversations and state["delayed_messages"] == messages
                )

            await until(lambda: delayed(2, 30), 10, "both conversations DELAYED")
            with anyio.fail_after(10):
                await ending.end()  # returns although svcB has no route yet
            await until(lambda: delayed(1, 10), 10, "the ended conversation's messages to leave the DELAYED ones")
            with pytest.raises(aiobroker.BrokerError, match="ended"):
                await ending.send("DEFAULT", b"after the end")

            write_atomically(routes, json.dumps({"services": {"svcB": {"targets": [{"address": pair.b_address}]}}}))
            received = await receive(cb, "qb", 10, RELEASE_TIMEOUT, linger=1.5)
            assert_exactly_once_in_order(received, {cid(staying): 10})
            await until(lambda: transmission_empty(ca), 10, "B's acknowledgements to reach A")
            assert not await cb.receive("qb", timeout=0.5), "something of the ended conversation arrived"
            assert (await cb.status())["conversations"] == 1, "B heard of the conversation that ended while DELAYED"


# --------------------------------------------------------------------------------------------- 6. across hosts

# Each resolver across hosts: its answer names an address in another network namespace, reached over a real (veth)
# link. The resolver's source runs on A's host: the file in A's directory, dnsmasq and the HTTP registry inside A's
# namespace on A's address (on loopback in the loopback variant), so A asks them as it would on its own machine.

DRIVER = str(Path(__file__).with_name("fed_driver.py"))
NETNS_PORT = 4022
NETNS_DNS_PORT = 5353  # dnsmasq's and the registry's ports inside A's namespace (a fresh one: all ports are free)
NETNS_REGISTRY_PORT = 8080
RESOLVER_KINDS = ["static_file", "dns_srv", "http"]
HOSTS_CONVERSATIONS = 3
HOSTS_COUNT = 300  # per conversation


@pytest.fixture(params=["netns", "loopback"])
def variant(request: pytest.FixtureRequest) -> str:
    return require_variant(request.param)


class HostNode:
    """A node process on a host: inside its namespace (``topo.run``) or on loopback (NodeProcess)."""

    def __init__(self, topo: Topology | None, host: str, config: Path, data_dir: Path, port: int) -> None:
        self.topo = topo
        self.host = host
        self.config = config
        self.log_path = config.parent / "node.log"
        self.process: NodeProcess | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        if topo is None:
            self.process = NodeProcess(data_dir, port=port, extra=["--config", str(config)])

    def start(self) -> None:
        if self.process is not None:
            self.process.start()
            return
        assert self.topo is not None
        self._log = self.log_path.open("wb")
        argv = [sys.executable, "-m", "aiobroker", "serve", "--config", str(self.config)]
        self.proc = self.topo.run(self.host, argv, stdout=self._log, stderr=subprocess.STDOUT)

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node on {self.host} exited with {self.proc.returncode}:\n{self.output()}")
            return " listening on " in self.output()

        wait_for(listening, 20, f"the node on host {self.host} to listen")

    def output(self) -> str:
        if self.process is not None:
            return self.process.output()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        if self.process is not None:
            return self.process.stop(timeout=10)
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()  # SIGTERM to this pid (ip netns exec execs the node in place)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._log.close()
        return proc.returncode


@contextmanager
def two_hosts(variant: str) -> Iterator[Topology | None]:
    if variant == "loopback":
        yield None
        return
    with Topology(["a", "b"], [("a", "b")]) as topo:
        yield topo


def run_driver(topo: Topology | None, host: str, *args: str, timeout: float = 60) -> list[dict[str, Any]]:
    """tests/fed_driver.py on ``host`` (inside its namespace, or here), to completion; its JSON lines."""
    argv = [sys.executable, DRIVER, "--limit", str(timeout - 5), *args]
    if topo is not None:
        out = topo.check_output(host, argv, timeout=timeout)
    else:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise AssertionError(f"driver {args[0]} exited with {done.returncode}:\n{done.stderr}")
        out = done.stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@contextmanager
def resolver_on_host_a(
    kind: str, topo: Topology | None, home_a: Path, addr_a: str, addr_b: str, port_b: int
) -> Iterator[tuple[dict[str, Any], Callable[[], str]]]:
    """The source of a ``kind`` resolver that names B at ``tcp://addr_b:port_b``, on A's host; yields A's
    ``[resolver]`` table and a function giving the source's own record of being asked (its log), where it has one."""
    url_b = f"tcp://{addr_b}:{port_b}"
    prefix = netns_prefix(topo, "a") if topo is not None else []
    if kind == "static_file":
        write_atomically(home_a / "routes.toml", routes_file_toml({"svcB": [{"address": url_b}]}, lifetime=60))
        yield {"kind": "static_file", "path": "routes.toml", "default_lifetime": 2}, lambda: ""
    elif kind == "dns_srv":
        records: list[Srv | Host] = [Srv("_aiobroker._tcp.svcb.test", "b.test", port_b), Host("b.test", (addr_b,))]
        dns = Dnsmasq(
            home_a, records=records, ttl=60, listen=addr_a, command_prefix=prefix,
            port=NETNS_DNS_PORT if topo is not None else None,
        )  # fmt: skip
        with dns:
            yield {"kind": "dns_srv", "domain": "test", "nameservers": [dns.nameserver], "timeout": 2}, dns.output
    elif kind == "http":
        registry = Registry(
            home_a, host=addr_a, command_prefix=prefix, port=NETNS_REGISTRY_PORT if topo is not None else None
        )
        registry.serve({"svcB": registry_answer("svcB", url_b, lifetime=60)})
        with registry:
            yield (
                {"kind": "http", "url": registry.url(), "connect_timeout": 2, "read_timeout": 5},
                lambda: json.dumps(registry.requests("svcB")),
            )
    else:
        raise ValueError(f"no resolver kind {kind!r}")


@pytest.mark.parametrize("kind", RESOLVER_KINDS)
def test_across_hosts_a_resolver_names_the_far_host(kind: str, variant: str, tmp_path: Path) -> None:
    with two_hosts(variant) as topo:
        if topo is not None:
            addr_a, addr_b, port_a, port_b = topo.address("a"), topo.address("b"), NETNS_PORT, NETNS_PORT
        else:
            addr_a, addr_b, port_a, port_b = LOOPBACK, LOOPBACK, free_port(), free_port()
        url_a, url_b = f"tcp://{addr_a}:{port_a}", f"tcp://{addr_b}:{port_b}"
        home_a, home_b = tmp_path / "A", tmp_path / "B"
        home_a.mkdir()
        home_b.mkdir()
        with resolver_on_host_a(kind, topo, home_a, addr_a, addr_b, port_b) as (resolver, source_log):
            nodes: list[HostNode] = []
            for home, host, listen, port, service, queue, accepts, routes, table in (
                (home_b, "b", f"{addr_b}:{port_b}", port_b, "svcB", "qb", True, {"svcA": url_a}, None),
                (home_a, "a", f"{addr_a}:{port_a}", port_a, "svcA", "qa", False, {}, resolver),  # no route to svcB
            ):  # fmt: skip
                config = home / "node.toml"
                config.write_text(
                    node_config(
                        listen=listen, data_dir=home / "data", service=service, queue=queue, accepts=accepts,
                        routes=routes, resolver=table,
                    )
                )  # fmt: skip
                nodes.append(HostNode(topo, host, config, home / "data", port))
            try:
                for node in nodes:
                    node.start()
                produced = run_driver(
                    topo, "a", "produce", "--url", url_a, "--from", "svcA", "--to", "svcB",
                    "--count", str(HOSTS_COUNT), "--batch", "50", "--conversations", str(HOSTS_CONVERSATIONS),
                )  # fmt: skip
                summary = next(r["summary"] for r in produced if "summary" in r)
                assert all(c["acked"] == HOSTS_COUNT for c in summary["conversations"]), summary

                def a_status() -> dict[str, Any]:
                    record: dict[str, Any] = run_driver(topo, "a", "status", "--url", url_a, timeout=20)[0]
                    return record

                wait_for(lambda: a_status()["transmission"]["messages"] == 0, 30, "B to acknowledge everything",
                         interval=0.2)  # fmt: skip
                status = a_status()
                assert status["dynamic_routing"]["resolver"] == kind, status["dynamic_routing"]
                assert status["dynamic_routing"]["requests_made"] >= 1 and status["delayed"] == {}, status
                answered = f"{kind} resolved service 'svcB' in "
                resolved = [line for line in nodes[1].output().splitlines() if answered in line]
                assert resolved and f": {url_b};" in resolved[0], nodes[1].output()  # B's address on its host
                if kind == "dns_srv":  # A asked dnsmasq from A's address, and it answered with B's
                    assert f"auth[SRV] _aiobroker._tcp.svcb.test from {addr_a}" in source_log(), source_log()
                    assert f"config {addr_b} is b.test" in source_log(), source_log()
                elif kind == "http":
                    assert json.loads(source_log()), "the registry was never asked about svcB"

                total = HOSTS_CONVERSATIONS * HOSTS_COUNT
                consumed = run_driver(topo, "b", "consume", "--url", url_b, "--queue", "qb", "--count", str(total),
                                      "--timeout", "20")  # fmt: skip
                received: dict[str, list[tuple[int, str, bytes]]] = {}
                for record in consumed:
                    for conversation_id, seq, message_type, body in record.get("batch", ()):
                        received.setdefault(conversation_id, []).append((seq, message_type, body.encode()))
                expected = {c["conversation_id"]: HOSTS_COUNT for c in summary["conversations"]}
                assert_exactly_once_in_order(received, expected)
            except BaseException:
                for node in nodes:
                    print(f"--- node on {node.host} ---\n{node.output()}")
                print(f"--- the {kind} resolver's source on host a ---\n{source_log()}")
                raise
            finally:
                codes = [node.stop() for node in nodes]
            assert codes == [0, 0], codes


# --------------------------------------------------------------------------------------------- bugs found

# The smallest reproductions of two bugs the scenarios above ran into (both fixed; kept so they stay fixed).


@pytest.mark.anyio
async def test_the_delayed_reason_names_the_last_failure_not_a_request_long_answered(tmp_path: Path) -> None:
    resolver = {"kind": "static_file", "path": "routes.json", "default_lifetime": 30}
    with lone_node(tmp_path, resolver) as node:
        write_atomically(tmp_path / "A" / "routes.json", json.dumps({"services": {}}))
        async with aiobroker.connect(node.url) as client:
            dialog = await client.begin_dialog("svcA", "svcX")
            await dialog.send_many(numbered(0, 3))

            async def not_found() -> dict[str, Any] | None:
                state = service_state(await client.status(), "svcX")
                return state if state and state["last"] and not state["last"]["ok"] else None

            state = await until(not_found, 10, "the resolver's 'not found' for svcX")
            assert state["in_flight"] is None and "not found" in state["last"]["text"], state  # right here
            status = await client.status()
            reasons = {
                "status['delayed']": status["delayed"]["svcX"]["reason"],
                "transmission entry": status["transmission"]["entries"][0]["state"],
                "diagnose": (await client.diagnose("svcX"))["delayed_reason"],
            }
            stale = {where: r for where, r in reasons.items() if "asked the resolver" in r or "not found" not in r}
            assert not stale, stale


@pytest.mark.anyio
async def test_the_log_counts_the_delayed_messages_the_resolver_answers_released(tmp_path: Path) -> None:
    resolver = {"kind": "static_file", "path": "routes.toml"}
    with lone_node(tmp_path, resolver) as node:
        nowhere = {"address": f"tcp://{LOOPBACK}:{free_port()}"}  # nothing listens: the messages wait at A's link
        write_atomically(tmp_path / "A" / "routes.toml", routes_file_toml({"svcX": [nowhere]}))
        async with aiobroker.connect(node.url) as client:
            dialog = await client.begin_dialog("svcA", "svcX")
            await dialog.send_many(numbered(0, 5))  # stored DELAYED, then released by the answers
            # the route and the binding are asked in one look at the file; the binding's answer (none) is taken
            # first, so the route's answer releases them, unsecured (encryption=False)
            line = wait_for(
                lambda: next((x for x in node.output().splitlines() if "resolved service 'svcX'" in x), None),
                10, "the log line of the route answer for svcX",
            )  # fmt: skip
            status = await client.status()
            assert status["delayed"] == {} and status["transmission"]["messages"] == 5, status["transmission"]
            assert "; 5 delayed message(s) released" in line, line
            assert "no remote service binding for service 'svcX'" in node.output(), node.output()
