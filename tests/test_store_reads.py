"""The node's reads of DELAYED bodies (``node/pages.py`` ``StoreReads``): requests that come while one read runs are
read together next; a read that fails is logged and tried again while its conversations wait, nothing lost. The
core is the pure core on the harness's dict store; the store fails on purpose (a real store's failures are in
test_store_paging.py and test_store_postgresql.py)."""

from __future__ import annotations

import logging
import threading

import anyio
import pytest
from core_harness import NO_BYTE_LIMIT, DictStore, Harness

from aiobroker.core.effects import BodiesWanted
from aiobroker.errors import StoreError
from aiobroker.node import pages
from aiobroker.resolver import RouteAnswer, Target

B = "tcp://10.0.0.2:4022"


class FlakyStore(DictStore):
    """Fails the first ``failures`` reads of bodies, as a store that went away for a while; counts every read. Read
    in a worker thread, as a database over the network is (``Store.inline_reads`` False)."""

    inline_reads = False

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.reads: list[list[int]] = []
        self.reading = threading.Event()  # set while the first read is under way
        self.go_on = threading.Event()  # the first read returns only once this is set
        self.go_on.set()

    def read_bodies(self, ids: list[int]) -> dict[int, bytes]:
        self.reads.append(list(ids))
        self.reading.set()
        self.go_on.wait(10)
        if self.failures:
            self.failures -= 1
            raise StoreError("the database went away (test)")
        return super().read_bodies(ids)


def released(store: FlakyStore, services: int) -> tuple[Harness, list[BodiesWanted]]:
    h = Harness(store, resolver_name="test", page_window=100)
    h.service("init", "qi", [])
    for s in range(services):
        handle = h.core.begin_dialog(from_service="init", to_service=f"s{s}", contract="DEFAULT", now=h.now).handle
        h.send(handle, b"body %d" % s)
    h.flush()
    requests = []
    for s in range(services):
        h.core.resolved(f"s{s}", RouteAnswer(service_name=f"s{s}", targets=(Target(address=B),), lifetime=600.0, source="test"), h.now)
        requests += h.effects(BodiesWanted)  # one per call into the core, as the shell drains them
    return h, requests


@pytest.mark.anyio
async def test_requests_that_come_during_a_read_are_read_together_next() -> None:
    store = FlakyStore(failures=0)
    h, requests = released(store, 3)
    assert len(requests) == 3
    store.go_on.clear()
    async with anyio.create_task_group() as tg:
        reads = pages.StoreReads(store, h.core, h.flush, lambda queue: None, lambda: h.now)  # type: ignore[arg-type]
        reads.want(requests[0], tg)
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(store.reading.wait, 10)  # the first read is in its thread now
        reads.want(requests[1], tg)
        reads.want(requests[2], tg)
        store.go_on.set()
    assert [len(ids) for ids in store.reads] == [1, 2], "the first alone, the two that came meanwhile together"
    assert sorted(env[10] for env in h.core.outgoing(B, 100, NO_BYTE_LIMIT)) == [b"body 0", b"body 1", b"body 2"]


@pytest.mark.anyio
async def test_a_failed_read_is_logged_and_tried_again_until_it_succeeds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pages, "BODIES_RETRY_FIRST", 0.01)
    store = FlakyStore(failures=2)
    h, [request] = released(store, 1)
    with caplog.at_level(logging.ERROR, "aiobroker.node"):
        async with anyio.create_task_group() as tg:
            reads = pages.StoreReads(store, h.core, h.flush, lambda queue: None, lambda: h.now)  # type: ignore[arg-type]
            reads.want(request, tg)
    assert len(store.reads) == 3
    errors = [r.getMessage() for r in caplog.records if "cannot read back the bodies" in r.getMessage()]
    assert len(errors) == 2 and "the database went away" in errors[0] and "trying again" in errors[0]
    assert [env[10] for env in h.core.outgoing(B, 100, NO_BYTE_LIMIT)] == [b"body 0"]


class LocalStore(DictStore):
    """Reads cheap enough for the event loop (``Store.inline_reads``, as SQLite's file); records each slice read and
    the thread it was read on."""

    inline_reads = True

    def __init__(self) -> None:
        super().__init__()
        self.slices: list[tuple[int, str]] = []

    def read_bodies(self, ids: list[int]) -> dict[int, bytes]:
        self.slices.append((len(ids), threading.current_thread().name))
        return super().read_bodies(ids)


@pytest.mark.anyio
async def test_a_store_whose_reads_are_cheap_is_read_on_the_event_loop_a_slice_at_a_time() -> None:
    # in a thread each row's step gives the interpreter's lock back and waits for it again while the loop is busy:
    # the storm's release was held back until the answers were over
    store = LocalStore()
    h, requests = released(store, pages.INLINE_BODIES + 5)
    async with anyio.create_task_group() as tg:
        reads = pages.StoreReads(store, h.core, h.flush, lambda queue: None, lambda: h.now)  # type: ignore[arg-type]
        for request in requests:
            reads.want(request, tg)
    loop_thread = threading.current_thread().name
    assert store.slices == [(pages.INLINE_BODIES, loop_thread), (5, loop_thread)]
    assert len(h.core.outgoing(B, 10_000, NO_BYTE_LIMIT)) == pages.INLINE_BODIES + 5
