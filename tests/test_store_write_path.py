"""The SQLite store's write path (``aiobroker/store/sqlite_schema.py``): a batch becomes few statements.

Message rows go in multi-row INSERTs of up to 100 rows (the rest in smaller ones), deletes of adjacent ids as one
``BETWEEN`` each, scattered ones by ``IN`` in chunks. Whatever the shape of a batch, what a restarted store reads
back must be exactly what was written: checked here batch shape by batch shape, and against a dict model over
random sequences of batches (hypothesis).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiobroker.core.records import MessageRow, WriteBatch, message_row
from aiobroker.errors import StoreError
from aiobroker.store import SqliteStore
from aiobroker.store.sqlite_schema import DELETE_SIZES, INSERT_SIZES, MIN_RUN, statements

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#: more rows than one multi-row INSERT takes, and a remainder that needs every smaller size too
BIG = 2 * INSERT_SIZES[0] + sum(INSERT_SIZES[1:]) + 2


def row(id: int, *, state: int = 0, body: bytes = b"body", trace: str | None = None) -> MessageRow:
    return message_row(id, "q:orders", "h1", id, "order", body, 1_700_000_000.25, state, trace)


def read_back(data_dir: Path) -> list[MessageRow]:
    """Open, read the messages, close: what a restarted node would find."""
    store = SqliteStore(data_dir)
    try:
        return store.open().messages
    finally:
        store.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "data")
    store.open()
    yield store
    store.close()


def written(store: SqliteStore, ids: range | list[int]) -> None:
    store.write(WriteBatch(messages={i: row(i) for i in ids}))


def remaining(store: SqliteStore) -> list[int]:
    store.close()
    return [m[0] for m in read_back(store.data_dir)]


def test_a_contiguous_run_of_deletes_takes_exactly_its_ids(store: SqliteStore) -> None:
    written(store, range(1, 1001))
    store.write(WriteBatch(messages=dict.fromkeys(range(101, 901))))
    assert remaining(store) == [*range(1, 101), *range(901, 1001)], "the ids either side of the run stay"


def test_a_run_of_deletes_in_any_order_is_one_statement(store: SqliteStore) -> None:
    ids = list(range(10, 1010))
    ids.reverse()  # committed in some other order: the batch still holds one run
    ((sql, params),) = statements(WriteBatch(messages=dict.fromkeys(ids)))
    assert "BETWEEN" in sql and params == [(10, 1009)]
    written(store, range(1, 1100))
    store.write(WriteBatch(messages=dict.fromkeys(ids)))
    assert remaining(store) == [*range(1, 10), *range(1010, 1100)]


def test_scattered_deletes_and_short_runs_take_exactly_their_ids(store: SqliteStore) -> None:
    written(store, range(1, 1001))
    deleted = (
        [*range(1, 1001, 2)][:200]  # every other id: no run at all
        + [*range(500, 500 + MIN_RUN - 1)]  # a run one short of a range
        + [*range(600, 600 + MIN_RUN)]  # a run just long enough
        + [*range(700, 900)]  # a long run
        + [690 - 10 * k for k in range(4)]  # single ids shortly before it
    )
    deleted = sorted(set(deleted))
    store.write(WriteBatch(messages=dict.fromkeys(deleted)))
    assert remaining(store) == sorted(set(range(1, 1001)) - set(deleted))


def test_runs_split_by_an_id_not_in_the_batch_leave_that_id(store: SqliteStore) -> None:
    # Two runs of adjacent ids with one id between them that the batch does not touch: a range over both would
    # take it too.
    written(store, range(1, 600))
    store.write(WriteBatch(messages={**dict.fromkeys(range(1, 300)), **dict.fromkeys(range(301, 600))}))
    assert remaining(store) == [300]


def test_puts_between_and_beside_deleted_runs_are_kept(store: SqliteStore) -> None:
    written(store, range(1, 1001))
    batch = WriteBatch()
    batch.messages.update(dict.fromkeys(range(1, 400)))
    batch.messages[400] = row(400, state=1)  # replaced, between two deleted runs
    batch.messages.update(dict.fromkeys(range(401, 800)))
    batch.messages.update({i: row(i, state=1) for i in range(1001, 1001 + BIG)})  # new ids after the runs
    batch.messages.update({i: None for i in range(800, 1000, 3)})  # scattered deletes among rows left alone
    store.write(batch)
    store.close()
    kept = [r for r in (row(i) for i in range(800, 1001)) if (r[0] - 800) % 3]
    assert read_back(store.data_dir) == [row(400, state=1), *kept, *(row(i, state=1) for i in range(1001, 1001 + BIG))]


def test_traced_and_plain_rows_in_one_batch_keep_their_trace_context(store: SqliteStore) -> None:
    rows = [row(i, trace=f"{TRACE} k={i}" if i % 3 == 0 else None) for i in range(1, 1 + BIG)]
    store.write(WriteBatch(messages={r[0]: r for r in rows}))
    store.close()
    back = read_back(store.data_dir)
    assert back == rows
    assert [len(r) for r in back] == [len(r) for r in rows], "nine fields exactly where there is trace context"


@pytest.mark.parametrize("count", [1, 4, 5, 99, 100, 101, BIG, 1000, 1234])
def test_a_batch_of_any_size_is_stored_whole(tmp_path: Path, count: int) -> None:
    # Every size around the multi-row INSERTs' sizes (a statement of 100, then 25, 5 and single rows for the rest).
    rows = [row(i, body=i.to_bytes(4, "big")) for i in range(1, count + 1)]
    batch = WriteBatch(messages={r[0]: r for r in rows})
    bound = [value for _, params in statements(batch) for values in params for value in values]
    assert bound == [value for r in rows for value in r], (
        "every row bound once, in order (INSERT OR REPLACE would hide a row bound twice)"
    )
    store = SqliteStore(tmp_path / "data")
    store.open()
    store.write(batch)
    store.close()
    assert read_back(store.data_dir) == rows


def test_a_few_rows_and_deletes_as_at_a_low_rate_are_stored_exactly(store: SqliteStore) -> None:
    # Fewer rows than the smallest multi-row INSERT and fewer ids than the smallest range: one-row statements.
    written(store, range(1, 11))
    store.write(
        WriteBatch(messages={2: None, 5: None, 6: None, 7: row(7, state=1), 11: row(11, trace=TRACE), 12: row(12)})
    )
    store.write(WriteBatch(messages={13: row(13, trace=TRACE)}))
    store.write(WriteBatch(messages={1: None}))
    store.close()
    assert read_back(store.data_dir) == [
        *(row(i) for i in (3, 4)),
        row(7, state=1),
        *(row(i) for i in (8, 9, 10)),
        row(11, trace=TRACE),
        row(12),
        row(13, trace=TRACE),
    ]


def test_a_batch_that_fails_in_a_later_statement_leaves_nothing_of_itself(store: SqliteStore) -> None:
    written(store, range(1, 301))
    batch = WriteBatch(messages=dict.fromkeys(range(1, 201)))  # deleted first, in their own statement
    bad: list[object] = list(row(450))
    bad[5] = {"not": "bindable"}  # a field sqlite3 cannot bind, in the second multi-row INSERT
    batch.messages.update({i: row(i) for i in range(301, 451)})
    batch.messages[450] = tuple(bad)  # type: ignore[assignment]
    with pytest.raises(StoreError, match="writing a batch"):
        store.write(batch)
    assert remaining(store) == list(range(1, 301)), "the deletes and the first INSERT were rolled back"


@pytest.mark.parametrize("count", [1, 4, 99, 101, BIG])
def test_endpoint_records_of_any_count_are_put_rewritten_and_deleted_exactly(tmp_path: Path, count: int) -> None:
    # Endpoint records go in multi-row upserts and IN deletes (sizes as the message rows'): every record once,
    # a rewrite replaces the record it names and no other, a delete takes exactly its handles.
    handles = [f"h{i:05d}" for i in range(count)]
    store = SqliteStore(tmp_path / "data")
    store.open()
    store.write(WriteBatch(endpoints={h: {"n": i, "state": "DELAYED"} for i, h in enumerate(handles)}))
    gone = set(handles[::3])
    rewritten = set(handles[1::3])
    store.write(WriteBatch(endpoints={h: None if h in gone else {"n": -1, "state": "CONVERSING"}
                                      for h in sorted(gone | rewritten)}))
    store.close()
    store = SqliteStore(tmp_path / "data")
    try:
        back = dict(store.open().endpoints)
    finally:
        store.close()
    assert back == {h: {"n": -1, "state": "CONVERSING"} if h in rewritten else {"n": i, "state": "DELAYED"}
                    for i, h in enumerate(handles) if h not in gone}
    puts = [params for sql, params in statements(WriteBatch(endpoints=dict.fromkeys(handles, {"n": 0})))]
    assert sum(len(chunk) // 2 for params in puts for chunk in params) == count, "every record bound once"
    left, greedy = count, 0  # statements of 100 records, the rest in ones of 25, 5 and 1
    for size in INSERT_SIZES:
        greedy, left = greedy + left // size, left % size
    assert sum(len(params) for params in puts) == greedy, "a statement per 100 records, not one per record"


def test_the_chunk_sizes_fit_every_sqlite_build() -> None:
    # SQLite before 3.32 allows at most 999 variables in a statement (32,766 since): 9 columns a row.
    assert INSERT_SIZES[0] * 9 <= 999 and DELETE_SIZES[0] <= 999
    assert INSERT_SIZES[-1] == 1 and DELETE_SIZES[-1] == 1, "the smallest size takes any remainder"


# --- against a model -----------------------------------------------------------------------------------------

#: (what, first id, how many): a block of adjacent ids put plainly, put with trace context, or deleted
blocks = st.tuples(
    st.sampled_from(["put", "traced", "delete"]),
    st.integers(1, 400),
    st.one_of(st.integers(1, 9), st.integers(1, 260)),  # a few ids (one-row statements) or many
)


@given(st.lists(st.lists(blocks, min_size=1, max_size=6), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_restarted_store_reads_back_exactly_what_a_dict_model_holds(
    batches: list[list[tuple[str, int, int]]],
) -> None:
    model: dict[int, MessageRow] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "data")
        store.open()
        try:
            for n, block_list in enumerate(batches):
                batch = WriteBatch()
                for what, first, count in block_list:  # a later block overrides an earlier one, as coalescing does
                    for i in range(first, first + count):
                        batch.messages[i] = (
                            None
                            if what == "delete"
                            else row(i, state=n % 2, body=b"%d" % n, trace=TRACE if what == "traced" else None)
                        )
                store.write(batch)
                for i, r in batch.messages.items():
                    if r is None:
                        model.pop(i, None)
                    else:
                        model[i] = r
        finally:
            store.close()
        assert read_back(Path(tmp) / "data") == [model[i] for i in sorted(model)]
