"""PostgreSQL's own fail-over under a running node: a primary and a synchronous streaming replica (real servers,
tests/postgres.py), a node whose DSN lists both with ``target_session_attrs=read-write``, a stream of sends; the
primary crashes, the replica is promoted (as Patroni or a cloud service would), and the node carries on against the
new primary. Every acknowledged message is there exactly once and in order."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from node_process import NodeProcess, wait_for
from postgres import PostgresServer, require_postgres

import aiobroker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CONVERSATIONS = 4
BATCH = 10
CRASH_AFTER = 1000  # acknowledged messages before the primary crashes
AFTER_PROMOTION = 1000  # acknowledged messages after the promotion: the node carried on
MAX_MESSAGES = 100_000


@pytest.fixture
def pair() -> Iterator[tuple[PostgresServer, PostgresServer]]:
    """A primary and its synchronous replica, ``replica1``."""
    bindir = require_postgres()
    root = Path(tempfile.mkdtemp(prefix="aiobroker-pg-pair-"))
    os.chmod(root, 0o755)
    primary = PostgresServer(root / "primary", bindir=bindir).init().start()
    replica = primary.replica(root / "replica", "replica1").start()
    try:
        primary.psql("CREATE DATABASE node")
        primary.psql("ALTER SYSTEM SET synchronous_standby_names = 'replica1'")
        primary.psql("SELECT pg_reload_conf()")
        wait_for(
            lambda: primary.psql("SELECT sync_state FROM pg_stat_replication") == "sync",
            20, "the replica to stream synchronously",
        )
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_a_promoted_synchronous_replica_loses_nothing_acknowledged(
    tmp_path: Path, pair: tuple[PostgresServer, PostgresServer]
) -> None:
    primary, replica = pair
    dsn = (f"postgresql://aiobroker@127.0.0.1:{primary.port},127.0.0.1:{replica.port}/node"
           "?target_session_attrs=read-write&connect_timeout=2")
    node = NodeProcess(tmp_path / "unused", store=dsn).start()
    try:
        async with aiobroker.connect(node.url) as client:
            await client.create_queue("qi")
            await client.create_queue("qt")
            await client.create_service("init", "qi")
            await client.create_service("target", "qt", ["DEFAULT"])
            dialogs = [await client.begin_dialog("init", "target") for _ in range(CONVERSATIONS)]
            acked = [0] * CONVERSATIONS
            promoted_at: list[int] = []

            async def sender(i: int) -> None:
                while acked[i] < MAX_MESSAGES // CONVERSATIONS and not (
                    promoted_at and sum(acked) >= promoted_at[0] + AFTER_PROMOTION
                ):
                    first = acked[i]
                    await dialogs[i].send_many([("DEFAULT", b"%d" % n) for n in range(first, first + BATCH)])
                    acked[i] = first + BATCH

            async def fail_over() -> None:
                with anyio.fail_after(60):
                    while sum(acked) < CRASH_AFTER:
                        await anyio.sleep(0.005)  # polling a counter the senders advance, under a deadline
                    primary.crash()
                    replica.psql("SELECT pg_promote()")
                    promoted_at.append(sum(acked))

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(fail_over)
                    for i in range(CONVERSATIONS):
                        tg.start_soon(sender, i)
            assert promoted_at and sum(acked) >= promoted_at[0] + AFTER_PROMOTION, "the node did not carry on"

            got: dict[str, list[int]] = {}
            while batch := await client.receive("qt", max_messages=500, timeout=0):
                for m in batch:
                    got.setdefault(m.conversation_id, []).append(int(m.body))
                await batch.commit()
        for i, dialog in enumerate(dialogs):
            numbers = got.get(dialog.conversation_id, [])
            assert numbers == list(range(acked[i])), f"conversation {i}: lost, duplicated or out of order"
        assert "connecting again" in node.output(), node.output()
        # and it still owns the store on the new primary: its heartbeat took the lock there
        wait_for(lambda: "still the owner" in node.output(), 15, "the node to take its lock on the new primary")
    finally:
        assert node.stop() == 0, node.output()
