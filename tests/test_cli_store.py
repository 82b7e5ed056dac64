"""``aiobroker store migrate``, run as a user runs it: a node on the embedded SQLite store is stopped, its state
moved to a real PostgreSQL, and a node started there finds every object and message, in order, as the same broker
instance. A store in use, or a target that is not empty, is refused and left as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from node_process import NodeProcess

import aiobroker

pytestmark = pytest.mark.anyio

AIOBROKER = [sys.executable, "-m", "aiobroker"]


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AIOBROKER, "store", "migrate", *args], capture_output=True, text=True, timeout=60)


async def _fill(url: str) -> tuple[str, str]:
    async with aiobroker.connect(url) as client:
        await client.create_queue("qt")
        await client.create_queue("qi")
        await client.create_service("init", "qi")
        await client.create_service("target", "qt", ["DEFAULT"])
        dialog = await client.begin_dialog("init", "target")
        await dialog.send_many([("DEFAULT", b"%d" % n) for n in range(500)])
        return dialog.handle, (await client.status())["broker_instance"]


async def _drain(url: str) -> tuple[str, list[int]]:
    """The node's broker instance, and every message of queue qt received and committed, in order."""
    async with aiobroker.connect(url) as client:
        instance = (await client.status())["broker_instance"]
        got: list[int] = []
        while batch := await client.receive("qt", max_messages=200, timeout=0):
            got += [int(m.body) for m in batch]
            await batch.commit()
    return instance, got


async def test_a_node_moves_from_sqlite_to_postgresql_and_keeps_everything(tmp_path: Path, pg_dsn: str) -> None:
    data = tmp_path / "data"
    node = NodeProcess(data).start()
    try:
        _, instance = await _fill(node.url)
        refused = migrate("--from", "sqlite", "--data-dir", str(data), "--to", pg_dsn)
        assert refused.returncode == 1 and "stop that node first" in refused.stderr, refused.stderr
    finally:
        assert node.stop() == 0, node.output()

    moved = migrate("--from", "sqlite", "--data-dir", str(data), "--to", pg_dsn, "--batch", "100")
    assert moved.returncode == 0, moved.stderr
    assert "500 message(s)" in moved.stdout and "read it back" in moved.stdout, moved.stdout
    assert "100 message(s) a transaction" in moved.stdout, moved.stdout

    again = migrate("--from", "sqlite", "--data-dir", str(data), "--to", pg_dsn)
    assert again.returncode == 1 and "already holds a node's state" in again.stderr, again.stderr

    node = NodeProcess(tmp_path / "unused", store=pg_dsn).start()
    try:
        assert await _drain(node.url) == (instance, list(range(500))), "the same node, every message once, in order"
    finally:
        assert node.stop() == 0, node.output()


async def test_a_store_moves_a_page_at_a_time(tmp_path: Path) -> None:
    data, moved_to = tmp_path / "data", tmp_path / "moved"
    node = NodeProcess(data).start()
    try:
        _, instance = await _fill(node.url)
    finally:
        assert node.stop() == 0, node.output()
    moved = migrate("--from", "sqlite", "--data-dir", str(data), "--to", "sqlite", "--to-data-dir", str(moved_to),
                    "--batch", "7")
    assert moved.returncode == 0, moved.stderr
    assert "500 message(s)" in moved.stdout and "7 message(s) a transaction" in moved.stdout, moved.stdout
    node = NodeProcess(moved_to).start()
    try:
        assert await _drain(node.url) == (instance, list(range(500))), "the same node, every message once, in order"
    finally:
        assert node.stop() == 0, node.output()
    bad = migrate("--from", "sqlite", "--data-dir", str(data), "--to", "sqlite", "--to-data-dir", str(moved_to),
                  "--batch", "0")
    assert bad.returncode != 0 and "--batch must be at least 1" in bad.stderr, bad.stderr


def test_migrate_says_what_is_missing(tmp_path: Path) -> None:
    r = migrate("--from", "sqlite", "--data-dir", str(tmp_path), "--to", "sqlite")
    assert r.returncode != 0 and "--to sqlite needs --to-data-dir" in r.stderr, r.stderr
    r = migrate("--from", "sqlite", "--data-dir", str(tmp_path / "nothing"), "--to", "sqlite", "--to-data-dir", "x")
    assert r.returncode != 0 and "no SQLite store in" in r.stderr, r.stderr
    assert not (tmp_path / "nothing").exists(), "looking for a store made none"
    r = migrate("--from", "memory", "--to", "sqlite", "--to-data-dir", str(tmp_path / "new"))
    assert r.returncode != 0 and "keeps nothing" in r.stderr, r.stderr
