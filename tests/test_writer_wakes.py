"""The store writer wakes the links as soon as everything they could send is stored (aiobroker/node/writer.py):
a release of DELAYED messages changes endpoint records only (100,000 of them after a resolution storm), and the
links must not wait for those to be written. A message not yet stored still waits for its write. Real SQLite
store, real writer; the links are the callback it is given."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aiobroker.core.broker import BrokerCore
from aiobroker.node.writer import StoreWriter
from aiobroker.resolver import RouteAnswer, Target
from aiobroker.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

B = "tcp://10.0.0.2:4022"
NOW = 1_000_000.0


@contextmanager
def delayed_send(tmp_path: Path, broker_instance: str | None = None
                 ) -> Iterator[tuple[BrokerCore, StoreWriter, list[int], str]]:
    """A core on a real SQLite store with its writer (``woken`` records each wake of the links), and a conversation
    whose first message waits DELAYED for service "svc" (begun for ``broker_instance`` when given)."""
    store = SqliteStore(tmp_path)
    core = BrokerCore(broker_instance="node-a", resolver_name="test")
    core.load(store.open(), NOW)
    woken: list[int] = []
    writer = StoreWriter(core, store, on_published=lambda queues: None, on_durable=lambda: woken.append(1))
    try:
        core.create_object("queue", {"name": "qi"})
        core.create_object("service", {"name": "init", "queue": "qi", "contracts": []})
        handle = core.begin_dialog(from_service="init", to_service="svc", contract="DEFAULT", now=NOW,
                                   broker_instance=broker_instance).handle
        core.send(handle, [["DEFAULT", b"waited"]], NOW)
        yield core, writer, woken, handle
    finally:
        store.close()


async def test_a_release_wakes_the_links_before_its_endpoint_records_are_written(tmp_path: Path) -> None:
    # begun for a named far instance: no first acknowledgement will write its record, so the release does
    with delayed_send(tmp_path, broker_instance="node-b") as (core, writer, woken, handle):
        await writer.drain()
        assert core.tx.delayed_total == 1 and not core.tx.ready_links, "DELAYED, stored, no link yet"

        core.resolved("svc", RouteAnswer(service_name="svc", targets=(Target(address=B),), lifetime=60, source="t"),
                      NOW)
        assert core.dirty and core.tx.ready_links == {B}, "the release changed endpoint records, not yet written"
        writer.kick()
        assert woken == [1], "the link is woken at once: its message is stored already"
        assert [env[10] for env in core.outgoing(B, 10, 1 << 20)] == [b"waited"], "and it can leave now"
        assert core.dirty, "while the endpoint record is still to be written"
        await writer.drain()

        woken.clear()
        core.send(handle, [["DEFAULT", b"new"]], NOW)
        writer.kick()
        assert woken == [], "a message not yet stored waits for its write"
        await writer.drain()
        assert woken == [1] and [env[10] for env in core.outgoing(B, 10, 1 << 20)] == [b"new"]


async def test_with_a_secured_conversation_the_links_wait_for_the_write(tmp_path: Path) -> None:
    """A session key must be stored before the first message sealed with it leaves: while the node holds a secured
    conversation, a release waits for its write as before."""
    with delayed_send(tmp_path) as (core, writer, woken, handle):
        other = core.begin_dialog(from_service="init", to_service="elsewhere", contract="DEFAULT", now=NOW)
        core.conversations.set_secured(other, True)  # as dialog security does when it starts a session
        await writer.drain()
        core.resolved("svc", RouteAnswer(service_name="svc", targets=(Target(address=B),), lifetime=60, source="t"),
                      NOW)
        writer.kick()
        assert woken == [], "not woken before the write"
        await writer.drain()
        assert woken == [1], "woken once it is written"


async def test_a_plain_release_has_no_record_to_write_and_wakes_the_links_at_once(tmp_path: Path) -> None:
    """Released plain, a conversation's decision is written with its first acknowledgement's record: the release
    itself leaves nothing to write, and its message is stored already."""
    with delayed_send(tmp_path) as (core, writer, woken, handle):
        await writer.drain()
        core.resolved("svc", RouteAnswer(service_name="svc", targets=(Target(address=B),), lifetime=60, source="t"),
                      NOW)
        assert core.tx.ready_links == {B} and core.endpoints[handle].secured is False
        assert handle not in core.dirty, "no record for the decision alone"
        writer.kick()
        assert woken == [1] and [env[10] for env in core.outgoing(B, 10, 1 << 20)] == [b"waited"]
        await writer.drain()
