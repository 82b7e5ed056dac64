"""The store contract: the same tests against every store aiobroker ships (sqlite, postgresql, memory).

What a store promises (docs/design.md, "What a store must promise"): what a batch writes comes back when the store
is opened again (by a restarted node), each key with its latest value, messages ordered by id and as the core makes
them; a batch is applied whole or not at all; the store keeps its schema version to itself; open and write may run
on different threads; close is safe twice. The memory store keeps nothing: what it reads back is always empty, and
the tests say so rather than skip it. Each test gets a fresh place (a data directory, or a fresh database on the
session's real PostgreSQL: tests/postgres.py) and opens the store there again as a restarted node would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aiobroker.core.records import ROW_BODY, ROW_ID, MessageRow, Snapshot, WriteBatch, message_row
from aiobroker.errors import StoreError
from aiobroker.store import MemoryStore, SqliteStore, Store

REPO = Path(__file__).resolve().parents[1]
TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 rojo=00f067aa0ba902b7"


def row(
    id: int, *, location: str = "q:orders", handle: str = "h1", body: bytes = b"body", state: int = 0
) -> MessageRow:
    return message_row(id, location, handle, id, "order", body, 1_700_000_000.25, state)


@dataclass
class Place:
    """Where one store lives: ``make()`` builds a store there (not yet opened), as a restarted node would."""

    kind: str
    make: Callable[[], Store]
    dsn: str = ""

    @property
    def durable(self) -> bool:
        return self.kind != "memory"

    def read_back(self) -> Snapshot:
        store = self.make()
        try:
            return store.open()
        finally:
            store.close()

    def expect(self, snapshot: Snapshot) -> Snapshot:
        """What reading back should give after writing what ``snapshot`` holds: that, or nothing for memory."""
        return snapshot if self.durable else Snapshot()


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "sqlite":
        return Place("sqlite", lambda: SqliteStore(tmp_path / "data"))
    if request.param == "memory":
        return Place("memory", MemoryStore)
    dsn = request.getfixturevalue("pg_dsn")
    from aiobroker.store.postgresql import PostgresStore

    return Place("postgresql", lambda: PostgresStore(dsn), dsn)


@pytest.fixture
def store(place: Place) -> Iterator[Store]:
    store = place.make()
    store.open()
    yield store
    store.close()


def read_back_while_closed(store: Store, place: Place) -> Snapshot:
    store.close()
    return place.read_back()


VALUES: dict[str, Any] = {
    "str": "héllo wörld ✓",
    "empty str": "",
    "int": 42,
    "big int": 2**64 - 1,
    "negative int": -(2**63),
    "float": 3.141592653589793,
    "bytes": b"\x00\xff binary",
    "true": True,
    "false": False,
    "list": [1, "two", b"three", None, [4.5]],
    "dict": {"nested": {"deeper": [None, True, {"k": b"v"}]}, "n": 0},
}


def test_a_new_store_is_empty(store: Store, place: Place) -> None:
    assert read_back_while_closed(store, place) == Snapshot()


def test_every_kind_of_value_survives_a_restart(store: Store, place: Place) -> None:
    batch = WriteBatch()
    batch.meta.update(VALUES)
    for kind in ("message_type", "contract", "queue", "service"):
        for key, value in VALUES.items():
            batch.objects[(kind, key)] = value
    batch.endpoints.update({f"handle-{key}": value for key, value in VALUES.items()})
    rows = [
        row(1),
        row(2, body=b""),
        row(3, body=bytes(range(256)) * 4096, location="tx", handle="ĥandle", state=1),
    ]
    batch.messages.update({r[ROW_ID]: r for r in rows})
    store.write(batch)

    snapshot = read_back_while_closed(store, place)

    written = Snapshot(
        meta=VALUES,
        objects=sorted((k, n, v) for (k, n), v in batch.objects.items()),
        endpoints=sorted(batch.endpoints.items()),
        messages=rows,
    )
    assert Snapshot(snapshot.meta, sorted(snapshot.objects), sorted(snapshot.endpoints), snapshot.messages) == (
        place.expect(written)
    )
    assert all(type(m) is tuple and type(m[ROW_BODY]) is bytes for m in snapshot.messages), "rows come back as the plain tuples the core makes"


def test_values_are_replaced_and_deleted_across_batches(store: Store, place: Place) -> None:
    store.write(
        WriteBatch(
            meta={"a": 1, "b": 1},
            objects={("queue", "q1"): {"v": 1}, ("queue", "q2"): {"v": 1}},
            endpoints={"h1": "open", "h2": "open"},
            messages={1: row(1), 2: row(2)},
        )
    )
    store.write(
        WriteBatch(
            meta={"a": 2, "b": None},
            objects={("queue", "q1"): {"v": 2}, ("queue", "q2"): None},
            endpoints={"h1": "closed", "h2": None},
            messages={1: row(1, state=1), 2: None, 99: None},  # 99 was never written: deleting it is harmless
        )
    )
    assert read_back_while_closed(store, place) == place.expect(
        Snapshot({"a": 2}, [("queue", "q1", {"v": 2})], [("h1", "closed")], [row(1, state=1)])
    )


def test_put_then_delete_in_one_batch_leaves_nothing(store: Store, place: Place) -> None:
    batch = WriteBatch()
    batch.messages[7] = row(7)
    batch.objects[("queue", "q")] = {"v": 1}
    batch.messages[7] = None  # stored, then received and committed, before the batch was written
    batch.objects[("queue", "q")] = None
    store.write(batch)
    assert read_back_while_closed(store, place) == Snapshot()


def test_delete_then_put_in_one_batch_leaves_the_new_value(store: Store, place: Place) -> None:
    store.write(WriteBatch(objects={("queue", "q"): {"v": 1}}, messages={7: row(7)}))
    batch = WriteBatch()
    batch.objects[("queue", "q")] = None  # dropped ...
    batch.messages[7] = None
    batch.objects[("queue", "q")] = {"v": 2}  # ... and created again
    batch.messages[7] = row(7, state=1)
    store.write(batch)
    assert read_back_while_closed(store, place) == place.expect(
        Snapshot(objects=[("queue", "q", {"v": 2})], messages=[row(7, state=1)])
    )


def test_a_large_batch_and_rows_written_again_come_back_whole(store: Store, place: Place) -> None:
    """Many rows at once (a store may write them another way: PostgreSQL by COPY), some with trace context and
    every byte value in their bodies; then some of them written again with a new state, and some deleted."""
    body = bytes(range(256))
    rows = [
        message_row(i, "q:orders" if i % 3 else "tx", f"h{i % 7}", i, "order", body * (i % 5), 1.5 * i, 0,
                    TRACE if i % 4 == 0 else None)
        for i in range(1, 301)
    ]
    store.write(WriteBatch(messages={r[ROW_ID]: r for r in rows}))
    again = {i: message_row(i, "q:orders", "h1", i, "order", b"again", 2.0, 1) for i in range(10, 60)}
    store.write(WriteBatch(messages={**again, **{i: None for i in range(200, 250)}}))
    expected = [again.get(r[ROW_ID], r) for r in rows if not 200 <= r[ROW_ID] < 250]
    assert read_back_while_closed(store, place) == place.expect(Snapshot(messages=expected))


def test_messages_come_back_ordered_by_id(store: Store, place: Place) -> None:
    ids = [50, 3, 1000, 7, 2, 999, 1]
    for chunk in (ids[:3], ids[3:5], ids[5:]):
        store.write(WriteBatch(messages={i: row(i) for i in chunk}))
    assert read_back_while_closed(store, place) == place.expect(Snapshot(messages=[row(i) for i in sorted(ids)]))


def test_the_store_keeps_its_schema_version_to_itself(store: Store, place: Place) -> None:
    if not place.durable:
        pytest.skip("the memory store keeps no schema, so it has nothing to refuse")
    with pytest.raises(StoreError, match="reserved"):
        store.write(WriteBatch(meta={"schema_version": 99}))
    assert read_back_while_closed(store, place) == Snapshot()


def test_open_and_write_may_run_on_different_threads(store: Store, place: Place) -> None:
    errors: list[Exception] = []

    def writer() -> None:
        try:
            store.write(WriteBatch(messages={1: row(1)}))
        except Exception as exc:  # reported below, on the test's thread
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    assert errors == []
    assert read_back_while_closed(store, place) == place.expect(Snapshot(messages=[row(1)]))


def test_close_is_safe_twice_and_a_closed_store_refuses_writes(store: Store, place: Place) -> None:
    store.close()
    store.close()
    if not place.durable:
        return  # the memory store writes nothing, open or closed
    with pytest.raises(StoreError, match="not open"):
        store.write(WriteBatch(meta={"a": 1}))


def test_a_value_that_cannot_be_stored_fails_the_whole_batch(store: Store, place: Place) -> None:
    if not place.durable:
        pytest.skip("the memory store encodes nothing, so it has nothing to refuse")
    batch = WriteBatch(meta={"ok": 1}, endpoints={"h": object()}, messages={1: row(1)})
    with pytest.raises(StoreError, match="cannot store"):
        store.write(batch)
    store.write(WriteBatch(meta={"after": 1}))  # the store is still usable
    assert read_back_while_closed(store, place) == place.expect(Snapshot(meta={"after": 1}))


def test_a_message_s_trace_context_survives_a_restart(store: Store, place: Place) -> None:
    store.write(WriteBatch(messages={1: message_row(1, "tx", "h", 0, "t", b"b", 5.0, 0, TRACE), 2: row(2)}))
    messages = read_back_while_closed(store, place).messages
    first = [message_row(1, "tx", "h", 0, "t", b"b", 5.0, 0, TRACE), row(2)]
    assert messages == place.expect(Snapshot(messages=first)).messages
    assert [len(m) for m in messages] == [len(m) for m in place.expect(Snapshot(messages=first)).messages] , (
        "read back as the core makes them: eight fields without"
    )
    store.open()
    traced = message_row(3, "q:orders", "h", 1, "t", b"c", 6.0, 1, TRACE)
    store.write(WriteBatch(messages={1: None, 3: traced, 4: row(4), 2: message_row(2, "tx", "h", 2, "t", b"d", 7.0)}))
    then = [message_row(2, "tx", "h", 2, "t", b"d", 7.0), traced, row(4)]
    assert read_back_while_closed(store, place) == place.expect(Snapshot(messages=then))




# --- a crash loses nothing that was reported written --------------------------------------------------------

CRASH_SCRIPT = """
import sys, time
from pathlib import Path
from aiobroker.core.records import WriteBatch, message_row
from aiobroker.store import open_store
store = open_store(sys.argv[1], Path(sys.argv[2]))
store.open()
deadline = time.monotonic() + 30  # bounded, should the parent fail to kill it
n = 0
while n < 100_000 and time.monotonic() < deadline:
    batch = WriteBatch(meta={"batch": n}, endpoints={f"e{n}": {"n": n}})
    for j in range(10):
        batch.messages[n * 10 + j] = message_row(n * 10 + j, "q:crash", f"e{n}", j, "t", b"%d" % n, 0.0, 0)
    if n >= 2:  # rows 1..9 of two batches ago were received: delete them, keep row 0 as a witness
        for j in range(1, 10):
            batch.messages[(n - 2) * 10 + j] = None
    store.write(batch)
    print(n, flush=True)
    n += 1
store.close()
"""


def expected_ids(last: int) -> list[int]:
    """The message ids present after batches 0..last have been written."""
    ids = {n * 10 for n in range(last + 1)}
    ids.update(n * 10 + j for n in range(max(0, last - 1), last + 1) for j in range(10))
    return sorted(ids)


def test_every_batch_reported_written_survives_sigkill(place: Place, tmp_path: Path) -> None:
    if not place.durable:
        pytest.skip("the memory store keeps nothing to survive a crash")
    where = place.dsn if place.kind == "postgresql" else "sqlite"
    reported = -1
    with subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, where, str(tmp_path / "data")],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        while reported < 300:
            line = child.stdout.readline()
            if not line:
                child.wait()
                pytest.fail(f"the writer stopped after batch {reported}: {child.stderr.read()}")
            reported = int(line)
        child.kill()  # SIGKILL, mid-batch most likely: no handler, no atexit, no close
        assert child.wait() == -9

    snapshot = place.read_back()

    last = snapshot.meta["batch"]
    assert last >= reported, "a batch reported written was lost"
    # ... and what is there is exactly batches 0..last: whole batches, nothing of a later one.
    assert [m[ROW_ID] for m in snapshot.messages] == expected_ids(last)
    assert sorted(h for h, _ in snapshot.endpoints) == sorted(f"e{n}" for n in range(last + 1))
