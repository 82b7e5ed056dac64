"""The PostgreSQL store's own promises, on a real PostgreSQL (tests/postgres.py): one owner at a time, a second
node told who owns the store, a paused owner fenced for good, and errors that say what is wrong without leaking a
password. (What every store promises is in test_store_contract.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from node_process import wait_for
from postgres import PostgresServer

from aiobroker.core.records import WriteBatch, message_row
from aiobroker.errors import ConfigError, StoreError
from aiobroker.store import open_store
from aiobroker.store.base import StoreInUse
from aiobroker.store.postgresql import PostgresStore
from aiobroker.store.postgresql_schema import SCHEMA_VERSION
from aiobroker.wire.codec import packb

REPO = Path(__file__).resolve().parents[1]


def row(n: int) -> tuple[int, str, str, int, str, bytes, float, int]:
    return message_row(n, "q:work", "h", n, "t", b"%d" % n, 1.0, 0)  # type: ignore[return-value]


def test_a_second_node_on_the_database_is_told_who_owns_it_and_waits(pg_dsn: str) -> None:
    first = PostgresStore(pg_dsn)
    first.open()
    first.announce("tcp://10.1.2.3:4022")
    second = PostgresStore(pg_dsn)
    try:
        with pytest.raises(StoreInUse) as info:
            second.open()
        assert info.value.owner == "tcp://10.1.2.3:4022"
        assert "owned by the node at tcp://10.1.2.3:4022 (epoch 1" in str(info.value)
        first.write(WriteBatch(meta={"still": "mine"}, messages={1: row(1)}))  # the refused one disturbed nothing
    finally:
        first.close()
    try:
        snapshot = second.open()  # the owner closed: its lock went with its connection
        assert snapshot.meta == {"still": "mine"} and snapshot.messages == [row(1)]
        assert second.describe()["epoch"] == 2
    finally:
        second.close()


#: A store owner in a child process: opens, then writes a batch every few milliseconds, printing each batch's number
#: once written, until told to stop or fenced (exit 3, printing why).
OWNER = """
import sys, time
from aiobroker.core.records import WriteBatch, message_row
from aiobroker.store.base import StoreFenced
from aiobroker.store.postgresql import PostgresStore
lost = []
store = PostgresStore(sys.argv[1], heartbeat=0.2, takeover_after=1.0)
store.open()
store.watch(lost.append)
print("open", flush=True)
deadline = time.monotonic() + 60
n = 0
while time.monotonic() < deadline:
    n += 1
    try:
        store.write(WriteBatch(meta={"last": n}, messages={n: message_row(n, "q:w", "h", n, "t", b"x", 0.0, 0)}))
    except StoreFenced as exc:
        print("fenced", n, exc, "| lost:", lost, flush=True)
        sys.exit(3)
    print(n, flush=True)
    time.sleep(0.005)
"""


def test_a_paused_owner_is_fenced_a_standby_takes_over_and_the_owner_writes_nothing_more(pg_dsn: str) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, pg_dsn], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "open"
        written = [owner.stdout.readline().strip() for _ in range(5)]
        assert written == ["1", "2", "3", "4", "5"]
        os.kill(owner.pid, signal.SIGSTOP)  # paused mid-stream: its connections stay open, its lock stays held
        standby = PostgresStore(pg_dsn, heartbeat=0.2, takeover_after=1.0)

        def taken() -> bool:
            try:
                standby.open()
                return True
            except StoreInUse:
                return False

        wait_for(taken, 15, "the standby to take the store from the paused owner", interval=0.2)
        try:
            os.kill(owner.pid, signal.SIGCONT)
            out, err = owner.communicate(timeout=30)
            assert owner.returncode == 3, (out, err)
            fenced = out.splitlines()[-1]
            # Resumed, it learns one way or the other (its heartbeat finds its lock session gone, or its next batch
            # meets the fence), and writes nothing more.
            assert fenced.startswith("fenced") and "writes nothing more" in fenced, fenced
            standby.write(WriteBatch(meta={"standby": True}))
        finally:
            standby.close()
        again = PostgresStore(pg_dsn)
        try:
            snapshot = again.open()
        finally:
            again.close()
        last_reported = max([5] + [int(line) for line in out.splitlines() if line.isdigit()])
        # everything the owner reported written is there, and nothing it tried after the take-over
        assert snapshot.meta == {"last": last_reported, "standby": True}
        assert [m[0] for m in snapshot.messages] == list(range(1, last_reported + 1))
    finally:
        if owner.poll() is None:
            os.kill(owner.pid, signal.SIGCONT)
            owner.kill()
            owner.wait(timeout=10)


def test_the_fence_refuses_a_batch_once_another_node_raised_the_epoch(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    store.open()
    try:
        store.write(WriteBatch(messages={1: row(1)}))
        with psycopg.connect(pg_dsn, autocommit=True) as conn:  # what a node taking over does, lock aside
            conn.execute("UPDATE aiobroker.owner SET epoch = epoch + 1")
        batch = WriteBatch(meta={"late": 1}, messages={2: row(2), 1: None})
        with pytest.raises(StoreError, match="another aiobroker node took this store over .epoch 2, this node has 1."):
            store.write(batch)
        with pytest.raises(StoreError, match="writes nothing more"):
            store.write(WriteBatch(meta={"later": 1}))
    finally:
        store.close()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT id FROM aiobroker.messages").fetchall() == [(1,)], "the fenced batch applied nothing"
        assert conn.execute("SELECT count(*) FROM aiobroker.meta WHERE key <> 'schema_version'").fetchone() == (0,)


def _cut_lock_connection(postgres: PostgresServer, dsn: str) -> None:
    database = dsn.rsplit("/", 1)[1].split("?")[0]
    postgres.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'aiobroker lock'"
        f" AND datname = '{database}'"
    )


def test_an_owner_whose_lock_connection_is_cut_takes_the_lock_again_and_carries_on(
    pg_dsn: str, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresStore(pg_dsn, heartbeat=0.1, takeover_after=1.0)
    store.open()
    lost: list[str] = []
    store.watch(lost.append)
    try:
        with caplog.at_level("INFO", logger="aiobroker.store"):
            _cut_lock_connection(postgres, pg_dsn)
            wait_for(lambda: "took the lock on" in caplog.text, 10, "the owner to take its lock again")
        assert lost == [] and "still the owner" in caplog.text
        store.write(WriteBatch(meta={"after": 1}))
        second = PostgresStore(pg_dsn)
        with pytest.raises(StoreInUse):  # it holds the lock again: no one else can take the store
            second.open()
        second.close()
    finally:
        store.close()


def test_an_owner_that_finds_its_lock_taken_when_it_reconnects_has_lost_the_store(
    pg_dsn: str, postgres: PostgresServer
) -> None:
    store = PostgresStore(pg_dsn, heartbeat=0.5, takeover_after=1.1)
    store.open()
    lost: list[str] = []
    store.watch(lost.append)
    other = psycopg.connect(pg_dsn, autocommit=True)
    try:
        # cut the owner's lock session, and take the lock before it can: what a standby quicker than it does
        _cut_lock_connection(postgres, pg_dsn)
        wait_for(lambda: other.execute(store.sql.try_lock).fetchone()[0], 5, "the lock to be free")  # type: ignore[index]
        wait_for(lambda: lost, 10, "the owner to find that it lost the store")
        assert "its lock is held by another node now" in lost[0]
        with pytest.raises(StoreError, match="writes nothing more"):
            store.write(WriteBatch(meta={"after": 1}))
    finally:
        other.close()
        store.close()


def test_a_store_from_a_newer_aiobroker_is_refused(pg_dsn: str) -> None:
    first = PostgresStore(pg_dsn)
    first.open()  # creates the schema
    first.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE aiobroker.meta SET value = %s WHERE key = 'schema_version'", (packb(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=f"newer aiobroker \\(store schema {SCHEMA_VERSION + 1}") as info:
        PostgresStore(pg_dsn).open()
    assert not isinstance(info.value, StoreInUse), "a standby must not wait for a store it can never read"


def test_a_server_that_is_not_there_is_named_without_the_password() -> None:
    store = open_store("postgresql://me:s3cret@127.0.0.1:1/nodedb?connect_timeout=2", Path("unused"))
    with pytest.raises(StoreError) as info:
        store.open()
    message = str(info.value)
    assert "cannot connect to PostgreSQL 127.0.0.1:1/nodedb" in message and "check the DSN" in message
    assert "s3cret" not in message


def test_the_store_table_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a dsn"):
        open_store("postgresql", tmp_path)
    with pytest.raises(ConfigError, match="unknown option\\(s\\) dsm"):
        open_store("postgresql", tmp_path, options={"dsm": "x"})
    with pytest.raises(ConfigError, match="more than twice heartbeat"):
        open_store("postgresql://h/db", tmp_path, options={"heartbeat": 5, "takeover_after": 6})
    with pytest.raises(ConfigError, match="schema 'Bad-Name' is not a plain PostgreSQL name"):
        open_store("postgresql://h/db", tmp_path, options={"schema": "Bad-Name"})
    with pytest.raises(ConfigError, match="no store is reached by mysql:// URLs"):
        open_store("mysql://u:pw@h/db", tmp_path)


def test_a_config_file_names_the_store_in_a_table(tmp_path: Path) -> None:
    from aiobroker.config import load_config

    path = tmp_path / "node.toml"
    path.write_text('[store]\ndsn = "postgresql://u@db.example/x"\nschema = "node_a"\ntakeover_after = 20\n')
    config = load_config(path)
    assert config.store == "postgresql"
    assert config.store_options == {"dsn": "postgresql://u@db.example/x", "schema": "node_a", "takeover_after": 20}
    store = open_store(config.store, config.data_dir, config.durability, config.store_options)
    assert isinstance(store, PostgresStore) and store.sql.schema == "node_a" and store.owner.takeover_after == 20
    path.write_text('[node]\nstore = "sqlite"\n[store]\ndsn = "postgresql://u@db.example/x"\n')
    with pytest.raises(ConfigError, match="given twice"):
        load_config(path)
    path.write_text('[store]\nschema = "x"\n')
    with pytest.raises(ConfigError, match=r"\[store\] needs kind"):
        load_config(path)
