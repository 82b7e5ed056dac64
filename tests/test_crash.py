"""A real node process, killed with SIGKILL in the middle of a stream of sends, then restarted on its data.

What was acknowledged must come out exactly once and in order; what was in flight at the kill may or may not
have been stored, but if it was, it sits in order right after the acknowledged ones, never twice.
"""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest
from node_process import NodeProcess

import aiobroker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CONVERSATIONS = 4
BATCH = 20
KILL_AFTER = 3000  # acknowledged messages before the kill
MAX_MESSAGES = 200_000  # bound on the stream, far beyond what is needed


async def _setup(url: str) -> list[str]:
    async with aiobroker.connect(url) as client:
        await client.create_queue("qi")
        await client.create_queue("qt")
        await client.create_service("init", "qi")
        await client.create_service("target", "qt", ["DEFAULT"])
        return [(await client.begin_dialog("init", "target")).handle for _ in range(CONVERSATIONS)]


async def _stream_until_killed(node: NodeProcess, handles: list[str]) -> tuple[list[int], list[int]]:
    """Send numbered messages on each conversation until the node dies; returns (acked, sent) per conversation."""
    acked = [0] * len(handles)
    sent = [0] * len(handles)
    killed = anyio.Event()

    async with aiobroker.connect(node.url) as client:

        async def sender(i: int) -> None:
            dialog = client.dialog(handles[i])
            while sent[i] < MAX_MESSAGES // len(handles):
                first = sent[i]
                sent[i] += BATCH
                try:
                    await dialog.send_many([("DEFAULT", b"%d" % n) for n in range(first, first + BATCH)])
                except aiobroker.ConnectionLost:
                    return
                acked[i] = first + BATCH

        async def killer() -> None:
            with anyio.fail_after(60):
                while sum(acked) < KILL_AFTER:
                    await anyio.sleep(0.005)  # polling a counter another task advances, under a deadline
            node.kill()
            killed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            for i in range(len(handles)):
                tg.start_soon(sender, i)
    assert killed.is_set()
    return acked, sent


async def _drain(url: str) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {}
    async with aiobroker.connect(url) as client:
        while batch := await client.receive("qt", max_messages=500, timeout=0):
            for m in batch:
                got.setdefault(m.conversation_id, []).append(int(m.body))
            await batch.commit()
        handles = {c["conversation_id"]: c["handle"] for c in await client.list_conversations() if c["is_initiator"]}
    return {handles[cid]: numbers for cid, numbers in got.items()}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> str:
    """What ``--store`` says: the sqlite store in the data directory, or a fresh database on a real PostgreSQL."""
    return str(request.getfixturevalue("pg_dsn")) if request.param == "postgresql" else "sqlite"


async def test_sigkill_mid_stream_loses_no_acknowledged_send_and_duplicates_none(tmp_path: Path, store: str) -> None:
    node = NodeProcess(tmp_path / "data", store=store).start()
    try:
        handles = await _setup(node.url)
        acked, sent = await _stream_until_killed(node, handles)
        assert sum(acked) >= KILL_AFTER
        assert sum(sent) > sum(acked), "the kill must land while sends are in flight"

        node = NodeProcess(tmp_path / "data", port=node.port, store=store).start()
        received = await _drain(node.url)
        for i, handle in enumerate(handles):
            numbers = received.get(handle, [])
            assert numbers == list(range(len(numbers))), f"conversation {i}: out of order or duplicated"
            assert len(numbers) >= acked[i], f"conversation {i}: lost acknowledged sends ({len(numbers)} < {acked[i]})"
            assert len(numbers) <= sent[i]
        assert "restored" in node.output()
    finally:
        assert node.stop() == 0, node.output()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_the_node_cleanly_and_a_restart_finds_everything(
    tmp_path: Path, signum: signal.Signals
) -> None:
    node = NodeProcess(tmp_path / "data").start()
    handles = await _setup(node.url)
    async with aiobroker.connect(node.url) as client:
        await client.dialog(handles[0]).send_many([("DEFAULT", b"%d" % n) for n in range(10)])
    assert node.stop(signum) == 0, node.output()
    assert f"received {signum.name}; stopping" in node.output() and "store closed" in node.output()

    node = NodeProcess(tmp_path / "data", port=node.port).start()
    try:
        received = await _drain(node.url)
        assert received == {handles[0]: list(range(10))}
    finally:
        assert node.stop() == 0, node.output()
