"""The memory budget and the queues' bounds through real node processes: a producer refused with Overloaded once
the node holds its budget, a resident size that stays within it, a consumer draining everything exactly once and
in order, a peer node that keeps its messages until there is room again (the memory store, which keeps bodies in
memory); a backlog three times the budget kept in the store through a kill -9 and a restart (SQLite, which pages);
and queue bounds through the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from node_process import NodeProcess, wait_for

import aiobroker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MIB = 1024 * 1024
BUDGET = 32 * MIB
BODY = 1024
#: What the node's resident size may grow beyond its budget while full. The budget counts each message's body and
#: a fixed cost (core/budget.py); beside them the process fills the SQLite store's page cache (8 MiB, fixed:
#: store/sqlite.py) as it writes, and has its connections' frames, the store's write batches in flight and the
#: allocator's slack. Measured with the 32 MiB cache of before: 31 MiB beyond a 32 MiB budget (with 400,000
#: messages of 128 bytes the resident size grew less than the budget counted). The bound is the page cache and
#: 16 MiB for the rest.
RSS_OVERHEAD = (8 + 16) * MIB
CONVERSATIONS = 8
BATCH = 100
MAX_BATCHES = 10_000  # bound on the fill, far beyond what the budget takes
WAITED = 99_999_999  # the number of the message a producer waits to send


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def sample(metrics: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", metrics, re.M)
    assert found, f"no {name} in /metrics"
    return float(found.group(1))


def body(n: int) -> bytes:
    return (b"%08d" % n).ljust(BODY, b".")


def number(b: bytes) -> int:
    return int(b[:8])


def config(tmp_path: Path, name: str, max_memory: int | None) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"[limits]\nmax_memory = {max_memory}\n" if max_memory is not None else "")
    return path


def node(tmp_path: Path, name: str, max_memory: int | None, **options: object) -> NodeProcess:
    return NodeProcess(
        tmp_path / name, extra=["--config", str(config(tmp_path, name, max_memory))], **options  # type: ignore[arg-type]
    )


async def setup_target(client: aiobroker.Client) -> list[str]:
    await client.create_queue("q")
    await client.create_queue("qi")
    await client.create_service("init", "qi")
    await client.create_service("t", "q", ["DEFAULT"])
    return [(await client.begin_dialog("init", "t")).handle for _ in range(CONVERSATIONS)]


async def fill(url: str, handles: list[str], pid: int) -> tuple[dict[str, list[int]], int, str]:
    """Send numbered messages round the conversations until the node refuses one with Overloaded; returns the
    numbers each conversation was told were stored, the largest resident size seen, and the refusal's words."""
    acked: dict[str, list[int]] = {h: [] for h in handles}
    peak = 0
    n = 0
    async with aiobroker.connect(url) as client:
        for i in range(MAX_BATCHES):
            handle = handles[i % len(handles)]
            numbers = list(range(n, n + BATCH))
            n += BATCH
            try:
                await client.dialog(handle).send_many([("DEFAULT", body(k)) for k in numbers])
            except aiobroker.Overloaded as exc:
                return acked, max(peak, rss(pid)), exc.message
            acked[handle].extend(numbers)
            if i % 10 == 0:
                peak = max(peak, rss(pid))
    raise AssertionError(f"{MAX_BATCHES} batches sent and never refused")


async def drain(url: str, expect: int, timeout: float) -> dict[str, list[int]]:
    """Receive and commit from queue q until ``expect`` messages came; per conversation id, the numbers."""
    got: dict[str, list[int]] = {}
    count = 0
    async with aiobroker.connect(url) as client:
        with anyio.fail_after(timeout):
            while count < expect:
                batch = await client.receive("q", max_messages=500, timeout=1.0)
                if batch is None:
                    continue
                for m in batch:
                    got.setdefault(m.conversation_id, []).append(number(m.body))
                    count += 1
                await batch.commit()
    return got


async def by_conversation_id(url: str, acked: dict[str, list[int]]) -> dict[str, list[int]]:
    async with aiobroker.connect(url) as client:
        ids = {c["handle"]: c["conversation_id"] for c in await client.list_conversations() if c["is_initiator"]}
    return {ids[h]: numbers for h, numbers in acked.items() if numbers}


async def memory(url: str) -> dict[str, object]:
    async with aiobroker.connect(url) as client:
        status: dict[str, object] = (await client.status())["memory"]
        return status


async def test_a_full_node_refuses_sends_stays_within_its_budget_and_a_peer_keeps_its_messages(tmp_path: Path) -> None:
    # the memory store keeps bodies in memory, within the budget (SQLite would page them: the test after this)
    a = node(tmp_path, "a", BUDGET, http="127.0.0.1:0", store="memory").start()
    b = node(tmp_path, "b", None).start()
    try:
        assert a.proc is not None
        async with aiobroker.connect(a.url) as client:
            handles = await setup_target(client)
        baseline = rss(a.proc.pid)

        # the producer fills the node until it is refused; nothing it was told was stored is lost
        acked, peak, refusal = await fill(a.url, handles, a.proc.pid)
        stored = sum(len(v) for v in acked.values())
        assert "memory budget of 32.0 MiB ([limits] max_memory)" in refusal, refusal
        assert "receive from the queues that hold them, or raise max_memory" in refusal, refusal
        assert stored * (BODY + 400) >= BUDGET * 0.95, "refused only once the budget was reached"
        assert peak - baseline <= BUDGET + RSS_OVERHEAD, (
            f"resident size grew {(peak - baseline) / MIB:.1f} MiB for a budget of {BUDGET / MIB:.0f} MiB"
        )
        async with aiobroker.connect(a.url) as client:
            for _ in range(3):
                with pytest.raises(aiobroker.Overloaded):
                    await client.dialog(handles[0]).send("DEFAULT", b"refused")
        mem = await memory(a.url)
        assert mem["over"] is True and mem["max_memory"] == BUDGET and mem["refused_sends"] == 4
        async with httpx.AsyncClient(base_url=a.http_url(), timeout=10) as http:
            metrics = (await http.get("/metrics")).text
        assert sample(metrics, "aiobroker_memory_overloaded") == 1
        assert sample(metrics, "aiobroker_memory_refused_sends_total") == 4
        assert sample(metrics, "aiobroker_memory_budget_bytes") == BUDGET
        assert sample(metrics, "aiobroker_memory_held_bytes") >= BUDGET
        assert a.output().count("memory budget reached") == 1, "one log line for the crossing, not per refusal"
        shown = cli(a.url, "status").stdout
        assert re.search(r"memory +\S+ MiB held for messages of a budget of 32\.0 MiB \(max_memory\); OVER: sends are"
                         r" refused .*; 4 send\(s\) refused for it", shown), shown

        # a second node sends to the full one: it keeps its messages (stored, unacknowledged) and retries
        async with aiobroker.connect(b.url) as client:
            await client.create_queue("qb")
            await client.create_service("init_b", "qb")
            await client.create_route("to-a", a.url, service_name="t")
            b_handles = [(await client.begin_dialog("init_b", "t")).handle for _ in range(3)]
            for i, h in enumerate(b_handles):
                await client.dialog(h).send_many([("DEFAULT", body(1_000_000 * (i + 1) + k)) for k in range(100)])

            async def refused() -> bool:
                links = (await client.status())["transmission"]["links"]
                return any("memory budget" in (link["last_error"] or "") for link in links)

            with anyio.fail_after(30):
                while not await refused():
                    await anyio.sleep(0.05)  # polling the peer's status under a deadline
            assert (await client.status())["transmission"]["messages"] == 300, "held back, not lost"
            b_ids = {c["handle"]: c["conversation_id"] for c in await client.list_conversations() if c["is_initiator"]}

        # a producer that asked to wait is refused, and waits; a consumer drains everything exactly once and in
        # order: the producer's, the peer's as it retries, and the waiting producer's once there is room
        waited = anyio.Event()

        async def wait_for_room() -> None:
            async with aiobroker.connect(a.url) as client:
                await client.dialog(handles[0]).send("DEFAULT", body(WAITED), wait=120)
            waited.set()

        got: dict[str, list[int]] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_room)
            with anyio.fail_after(30):
                while (await memory(a.url))["refused_sends"] == 4:
                    await anyio.sleep(0.02)  # polling the node's count of refusals under a deadline
            assert not waited.is_set(), "refused, so it waits"
            got = await drain(a.url, stored + 300 + 1, timeout=120)
        assert waited.is_set()
        acked[handles[0]].append(WAITED)
        for cid, numbers in (await by_conversation_id(a.url, acked)).items():
            assert got[cid] == numbers, "the producer's messages exactly once and in order"
        for i, h in enumerate(b_handles):
            assert got[b_ids[h]] == [1_000_000 * (i + 1) + k for k in range(100)], "the peer's, once and in order"
        async with aiobroker.connect(b.url) as client:
            assert (await client.status())["transmission"]["messages"] == 0

        # below the low watermark: sends are accepted again, and the log says so once
        mem = await memory(a.url)
        assert mem["over"] is False
        async with aiobroker.connect(a.url) as client:
            await client.dialog(handles[1]).send("DEFAULT", body(0))
        assert a.output().count("back below") == 1
    finally:
        a.stop()
        b.stop()


async def fill_past(url: str, handles: list[str], total: int, pid: int) -> tuple[dict[str, list[int]], int]:
    """Send ``total`` numbered messages round the conversations, every one acknowledged; returns the numbers per
    conversation and the largest resident size seen."""
    acked: dict[str, list[int]] = {h: [] for h in handles}
    peak = 0
    async with aiobroker.connect(url) as client:
        for i, n in enumerate(range(0, total, BATCH)):
            handle = handles[i % len(handles)]
            numbers = list(range(n, min(n + BATCH, total)))
            await client.dialog(handle).send_many([("DEFAULT", body(k)) for k in numbers])
            acked[handle].extend(numbers)
            if i % 20 == 0:
                peak = max(peak, rss(pid))
    return acked, max(peak, rss(pid))


@pytest.fixture(params=["sqlite", "postgresql"])
def paging_store(request: pytest.FixtureRequest) -> str:
    """A store that pages: SQLite, or a fresh database on the session's real PostgreSQL (tests/postgres.py)."""
    return str(request.getfixturevalue("pg_dsn")) if request.param == "postgresql" else "sqlite"


async def test_a_backlog_bigger_than_the_budget_waits_in_the_store_through_a_kill_and_a_restart(
    tmp_path: Path, paging_store: str
) -> None:
    # SQLite and PostgreSQL page: a queue keeps its window in memory (1,000 messages here) and the rest in the store only, so a
    # backlog three times the budget is taken, not refused, and the node stays within its budget while it fills,
    # after a kill -9 and a restart, and while a consumer drains it
    path = config(tmp_path, "a", BUDGET)
    path.write_text(path.read_text() + "queue_window = 1000\n")
    a = NodeProcess(tmp_path / "a", store=paging_store, http="127.0.0.1:0", extra=["--config", str(path)]).start()
    try:
        assert a.proc is not None
        async with aiobroker.connect(a.url) as client:
            handles = await setup_target(client)
        baseline = rss(a.proc.pid)
        total = 3 * BUDGET // BODY
        acked, peak = await fill_past(a.url, handles, total, a.proc.pid)
        assert peak - baseline <= BUDGET + RSS_OVERHEAD, f"grew {(peak - baseline) / MIB:.1f} MiB while filling"
        mem = await memory(a.url)
        assert mem["over"] is False and mem["refused_sends"] == 0
        assert mem["in_store_only"] == total - 1000, "the window in memory, the rest in the store only"
        ids = await by_conversation_id(a.url, acked)
        a.kill()

        a.start()
        assert a.proc is not None
        restarted = rss(a.proc.pid)
        mem = await memory(a.url)
        assert mem["in_store_only"] == total - 1000 and mem["over"] is False, "read back: the window only"
        assert restarted <= baseline + BUDGET + RSS_OVERHEAD, f"{restarted / MIB:.1f} MiB after the restart"
        shown = cli(a.url, "status").stdout
        assert re.search(rf"^\s+q\s+{total}\s+{total - 1000}\s", shown, re.M), f"waiting, and in the store only:\n{shown}"
        assert f"; {total - 1000} waiting message(s) (" in shown and ") in the store only" in shown
        async with httpx.AsyncClient(base_url=a.http_url(), timeout=10) as http:
            metrics = (await http.get("/metrics")).text
        assert f'aiobroker_queue_in_store_only_messages{{queue="q"}} {float(total - 1000)}' in metrics
        # half of it drained (every receive committed), then another kill -9 while pages are being read back, and
        # the rest after the second restart: nothing committed comes again, nothing else is missing
        first = await drain(a.url, total // 2, timeout=120)
        assert rss(a.proc.pid) <= baseline + BUDGET + RSS_OVERHEAD
        a.kill()
        a.start()
        assert a.proc is not None
        rest = await drain(a.url, total - sum(map(len, first.values())), timeout=120)
        got = {cid: first.get(cid, []) + rest.get(cid, []) for cid in ids}
        assert got == ids, "every acknowledged message, exactly once and in order"
        assert rss(a.proc.pid) <= baseline + BUDGET + RSS_OVERHEAD
        mem = await memory(a.url)
        assert mem["in_store_only"] == 0 and mem["held_bytes"] == 0
    finally:
        a.stop()


def cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiobroker", *args, "--address", address],
        capture_output=True, text=True, timeout=60, env={**os.environ, "AIOBROKER_TOKEN": ""},
    )


def test_queue_bounds_through_the_cli(tmp_path: Path) -> None:
    a = NodeProcess(tmp_path / "a", store="memory").start()
    try:
        url = a.url
        made = cli(url, "create", "queue", "q", "--max-messages", "2", "--max-bytes", "1000")
        assert made.returncode == 0, made.stderr
        assert "max messages 2, max bytes 1000" in made.stdout
        assert cli(url, "create", "queue", "qi").returncode == 0
        assert cli(url, "create", "service", "init", "--queue", "qi").returncode == 0, "service made"
        assert cli(url, "create", "service", "t", "--queue", "q", "--contract", "DEFAULT").returncode == 0
        first = cli(url, "send", "--from", "init", "--to", "t", "--body", "one")
        assert first.returncode == 0, first.stderr
        handle = first.stdout.split()[-1]
        assert cli(url, "send", "--handle", handle, "--body", "two").returncode == 0
        full = cli(url, "send", "--handle", handle, "--body", "three")
        assert full.returncode == 1
        assert "queue 'q' is full: it holds 2 message(s) and its max_messages is 2; nothing was sent" in full.stderr
        assert "aiobroker alter queue q --max-messages N" in full.stderr
        listed = cli(url, "list", "queues")
        assert re.search(r"^q\s+on\s+off\s+on\s+2\s+1000$", listed.stdout, re.M), listed.stdout
        bad = cli(url, "alter", "queue", "q", "--max-messages", "0")
        assert bad.returncode == 2 and 'expected a whole number >= 1, or "none"' in bad.stderr
        altered = cli(url, "alter", "queue", "q", "--max-messages", "none")
        assert altered.returncode == 0, altered.stderr
        assert "max messages none, max bytes 1000" in altered.stdout
        assert cli(url, "send", "--handle", handle, "--body", "three").returncode == 0
        received = cli(url, "receive", "q", "--max", "10")
        assert received.returncode == 0, received.stderr
        assert [w for w in ("one", "two", "three") if w in received.stdout] == ["one", "two", "three"]
    finally:
        a.stop()


def test_a_config_files_queue_bounds_apply_at_each_start(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[[queue]]\nname = "q"\nmax_messages = 5\n')
    a = NodeProcess(tmp_path / "a", extra=["--config", str(path)]).start()
    try:
        listed = cli(a.url, "list", "queues").stdout
        assert re.search(r"^q\s+on\s+off\s+on\s+5\s+-$", listed, re.M), listed
        a.stop()
        path.write_text('[[queue]]\nname = "q"\nmax_messages = 50\nmax_bytes = 4096\n')
        a.start()
        listed = cli(a.url, "list", "queues").stdout
        assert re.search(r"^q\s+on\s+off\s+on\s+50\s+4096$", listed, re.M), listed
        wait_for(lambda: "bounds from the config file" in a.output(), 10, "the log line for the new bounds")
    finally:
        a.stop()


async def test_a_peers_messages_to_a_full_queue_wait_at_the_peer_and_all_arrive_in_order(tmp_path: Path) -> None:
    a = NodeProcess(tmp_path / "a", store="memory").start()
    b_config = tmp_path / "b.toml"
    b_config.write_text("[federation]\nack_timeout = 1\n")  # how soon it sends again what was not acknowledged
    b = NodeProcess(tmp_path / "b", store="memory", extra=["--config", str(b_config)]).start()
    try:
        async with aiobroker.connect(a.url) as client:
            await client.create_queue("q", max_messages=2)
            await client.create_service("t", "q", ["DEFAULT"])
        async with aiobroker.connect(b.url) as client:
            await client.create_queue("qb")
            await client.create_service("init_b", "qb")
            await client.create_route("to-a", a.url, service_name="t")
            dialog = await client.begin_dialog("init_b", "t")
            await dialog.send_many([("DEFAULT", body(k)) for k in range(5)])

            async def held_back() -> int:
                return int((await client.status())["transmission"]["messages"])

            with anyio.fail_after(30):
                while await held_back() != 3:
                    await anyio.sleep(0.05)  # polling the peer's status under a deadline
        wait_for(lambda: "queue 'q' is full" in a.output(), 10, "the receiving node's word on the full queue")
        got = await drain(a.url, 5, timeout=60)
        assert list(got.values()) == [list(range(5))], "every message once, in order, as room was made"
        async with aiobroker.connect(b.url) as client:
            with anyio.fail_after(30):
                while (await client.status())["transmission"]["messages"]:
                    await anyio.sleep(0.05)  # the last acknowledgement on its way back
    finally:
        a.stop()
        b.stop()
