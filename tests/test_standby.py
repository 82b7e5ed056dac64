"""A standby node (``aiobroker serve --standby``), the owner it waits for, and what clients see of both.

Real processes on one SQLite data directory for what is about processes (the refusal on the wire, ``status``,
``/readyz``, the take-over on the same port); a fake store in-process for stepping down (SQLite cannot lose its
flock while the process lives; the PostgreSQL store can lose its lock), and the address forms as pure functions.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import httpx
import pytest
from node_process import NodeProcess, free_port, wait_for
from raw_peer import talk

import aiobroker
from aiobroker import NodeConfig
from aiobroker.client import split_urls
from aiobroker.core.records import Snapshot, WriteBatch
from aiobroker.config import load_config
from aiobroker.errors import ConfigError, ConnectionLost, InvalidArgument, ProtocolError, Standby
from aiobroker.names import parse_tcp_addresses
from aiobroker.node.serve import EXIT_STEPPED_DOWN, run_until_stopped
from aiobroker.store.base import Store, StoreFenced
from aiobroker.wire.codec import encode_frame
from aiobroker.wire.frames import Refused, parse_frame

pytestmark = pytest.mark.anyio


def aiobroker_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiobroker", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """An owner, and a standby on its data directory (with HTTP monitoring), refusing by the time this yields."""
    data = tmp_path / "data"
    owner = NodeProcess(data).start()
    config = tmp_path / "standby.toml"  # the config file's form (tests/test_takeover.py uses --standby)
    config.write_text("[node]\nstandby = true\n")
    standby = NodeProcess(data, http=f"127.0.0.1:{free_port()}", extra=["--config", str(config)])
    try:
        standby.start()  # it accepts connections while it waits
        wait_for(lambda: "waiting to take over" in standby.output(), 20, "the standby to say it waits")
        yield owner, standby
    finally:
        owner.stop()
        standby.stop()


# ------------------------------------------------------------------------------------------- through processes


@pytest.mark.slow
async def test_a_standby_refuses_clients_and_peers_naming_the_owner(pair: tuple[NodeProcess, NodeProcess]) -> None:
    owner, standby = pair
    with pytest.raises(Standby) as caught:
        async with aiobroker.connect(standby.url, follow_owner=False):
            pass
    assert caught.value.owner == owner.url
    assert caught.value.since is not None and caught.value.since <= time.time()
    assert f"is a standby: it waits to take over the store (sqlite) from its owner at {owner.url}; connect there" in (
        caught.value.message
    )
    # a peer node's HELLO gets the same refusal, with the owner in the frame's info
    hello = encode_frame([1, "aiobroker", 1, "peer", {"broker_instance": "elsewhere"}])
    frames = await anyio.to_thread.run_sync(talk, standby.port, hello)
    assert len(frames) == 1 and frames[0][:2] == [3, "standby"], frames
    assert frames[0][3]["owner"] == owner.url
    # the owner serves all the while
    async with aiobroker.connect(owner.url) as client:
        assert (await client.status())["node"]["role"] == "owner"


@pytest.mark.slow
def test_status_readyz_and_healthz_of_a_standby(pair: tuple[NodeProcess, NodeProcess]) -> None:
    owner, standby = pair
    shown = aiobroker_cli("status", "--address", standby.url)
    assert shown.returncode == 0, shown.stderr
    assert "role       standby since" in shown.stdout
    assert f"owner      {owner.url}" in shown.stdout
    as_json = aiobroker_cli("status", "--json", "--address", standby.url)
    assert as_json.returncode == 0, as_json.stderr
    assert '"role": "standby"' in as_json.stdout and f'"owner": "{owner.url}"' in as_json.stdout
    # given both addresses, status asks the first that serves: the owner
    both = aiobroker_cli("status", "--address", f"{standby.url},{owner.url}")
    assert both.returncode == 0 and "role       owner" in both.stdout, both.stdout + both.stderr

    base = f"http://{standby.http}"
    ready = httpx.get(base + "/readyz", timeout=5)
    assert ready.status_code == 503
    assert ready.json()["reason"] == f"standby: waiting to take over the store (sqlite) from its owner at {owner.url}"
    assert httpx.get(base + "/healthz", timeout=5).status_code == 200


@pytest.mark.slow
async def test_the_standby_takes_over_on_its_port_when_the_owner_goes(pair: tuple[NodeProcess, NodeProcess]) -> None:
    owner, standby = pair
    async with aiobroker.connect(owner.url) as client:
        await client.create_queue("kept")
    owner.kill()
    line = wait_for(lambda: "took over the store" in standby.output() and standby.output(), 20, "the take-over line")
    assert "took over the store (sqlite) after waiting" in line and "loading it and starting to serve took" in line
    async with aiobroker.connect(standby.url) as client:  # the same port, now serving what the owner stored
        assert "kept" in [q["name"] for q in await client.list("queue")]
        assert (await client.status())["node"]["role"] == "owner"
    ready = httpx.get(f"http://{standby.http}/readyz", timeout=5)
    assert ready.status_code == 200


@pytest.mark.slow
def test_sigterm_stops_a_waiting_standby_at_once(pair: tuple[NodeProcess, NodeProcess]) -> None:
    owner, standby = pair
    assert standby.stop(timeout=5) == 0, standby.output()  # not killed after the time-out: stopped by the signal
    assert "received SIGTERM; stopping" in standby.output()
    assert "stopped while waiting for the store (sqlite)" in standby.output()
    shown = aiobroker_cli("status", "--address", owner.url)  # and the owner serves on, untouched
    assert shown.returncode == 0 and "role       owner" in shown.stdout, shown.stderr


@pytest.mark.slow
async def test_a_client_given_both_addresses_reaches_the_owner(pair: tuple[NodeProcess, NodeProcess]) -> None:
    owner, standby = pair
    # the standby first: its refusal sends the client to the owner
    async with aiobroker.connect(f"{standby.url},{owner.url}") as client:
        assert client.node_url == owner.url
    # the standby alone: it names the owner, and the client follows
    async with aiobroker.connect(standby.url) as client:
        assert client.node_url == owner.url


async def test_when_no_address_serves_the_error_lists_what_each_said(tmp_path: Path) -> None:
    dead = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(ConnectionLost) as caught:
        async with aiobroker.connect(",".join(dead), failover_timeout=0.5):
            pass
    assert time.monotonic() - started < 5  # bounded by failover_timeout (and one connect each)
    message = caught.value.message
    assert message.startswith(f"none of {dead[0]}, {dead[1]} serves (tried for 0.5s): ")
    assert f"{dead[0]}: cannot connect to {dead[0]}" in message and f"{dead[1]}: cannot connect to {dead[1]}" in message


def test_refused_carries_info_when_there_is_some() -> None:
    plain = Refused(code="idle", message="idle for 600 s")
    assert plain.to_wire() == [3, "idle", "idle for 600 s"]  # as before: a client that reads three elements works
    standby = Refused(code="standby", message="a standby", info={"owner": "tcp://a:1", "since": 1.5})
    assert parse_frame(standby.to_wire()) == standby
    with pytest.raises(ProtocolError, match=r"REFUSED is \[3, code \(str\), message \(str\)\] or"):
        parse_frame([3, "standby", "a standby", "tcp://a:1"])


def test_standby_in_the_config_file_must_be_a_boolean(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nstandby = "yes"\n')
    with pytest.raises(ConfigError, match=r"\[node\] standby"):
        load_config(config)
    config.write_text("[node]\nstandby = true\n")
    assert load_config(config).standby is True
    assert load_config(None).standby is False


def test_client_and_route_addresses_may_list_several_nodes() -> None:
    assert split_urls("tcp://a:4022,b:4023") == ["tcp://a:4022", "tcp://b:4023"]
    assert split_urls("tls://a:1, tls://[::1]:2") == ["tls://a:1", "tls://[::1]:2"]
    assert split_urls("a:1") == ["tcp://a:1"]
    with pytest.raises(InvalidArgument, match="does not speak tcp:// as the first address does"):
        split_urls("tcp://a:1,tls://b:2")
    with pytest.raises(InvalidArgument, match="an empty address between commas"):
        split_urls("tcp://a:1,")
    assert parse_tcp_addresses("tcp://a:1,b:2") == [("tcp://a:1", "a", 1), ("tcp://b:2", "b", 2)]
    with pytest.raises(InvalidArgument, match="one scheme for all"):
        parse_tcp_addresses("tcp://a:1,tls://b:2")


async def test_a_route_may_list_several_addresses_and_a_bad_one_is_refused() -> None:
    async with aiobroker.Node(NodeConfig(store="memory", listen_port=0)) as node:
        async with aiobroker.connect(node.url) as client:
            await client.create_route("r", "tcp://127.0.0.1:1,127.0.0.1:2", service_name="far")
            with pytest.raises(InvalidArgument, match="one scheme for all"):
                await client.create_route("bad", "tcp://127.0.0.1:1,tls://127.0.0.1:2", service_name="far")


# ------------------------------------------------------------------------------------ stepping down (in-process)


class LosableStore(Store):
    """A store that keeps batches in a list and can be told it lost its owner, as a shared store can; a write can
    be held (``hold``) until the test lets it go."""

    name = "losable"
    durable = True

    def __init__(self) -> None:
        self.batches: list[WriteBatch] = []
        self.lost: Callable[[str], None] | None = None
        self.fenced = False
        self.refused = 0
        self.announced: list[str] = []
        self.hold = False
        self.holding = threading.Event()
        self.release = threading.Event()

    def open(self) -> Snapshot:
        return Snapshot()

    def write(self, batch: WriteBatch) -> None:
        if self.fenced:
            self.refused += 1
            raise StoreFenced("another node holds the store's lock now (epoch 2; this node had 1)")
        if self.hold:
            self.holding.set()
            self.release.wait(10)
        self.batches.append(batch)

    def close(self) -> None:
        pass

    def announce(self, url: str) -> None:
        self.announced.append(url)

    def watch(self, lost: Callable[[str], None]) -> None:
        self.lost = lost


async def _serving(
    store: LosableStore, result: list[int | None], *, task_status: anyio.abc.TaskStatus[aiobroker.Node]
) -> None:
    """Run a node on ``store`` as ``aiobroker serve`` does (start, then serve until stopped), in one task; hands
    back the node once it listens, and appends what serving returned (the exit status) to ``result``."""
    node = aiobroker.Node(NodeConfig(store="memory", listen_port=0), store=store)
    await node.start()
    task_status.started(node)
    result.append(await run_until_stopped(node, anyio.Event()))  # no signal comes


async def _returned(result: list[int | None]) -> int | None:
    with anyio.fail_after(10):
        while not result:
            await anyio.sleep(0.01)  # polling the result of the node's task, under a deadline
    return result[0]


async def test_a_node_told_it_lost_its_store_steps_down_writing_nothing_more(caplog: pytest.LogCaptureFixture) -> None:
    """The store's word comes from another thread while a batch is being written and another request waits for
    the next one: the node stops, and the waiting request's change is never written, not even on stopping."""
    store = LosableStore()
    result: list[int | None] = []
    with caplog.at_level(logging.ERROR, logger="aiobroker.node"):
        async with anyio.create_task_group() as tg:
            node = await tg.start(_serving, store, result)
            assert store.announced == [node.url] and store.lost is not None
            async with aiobroker.connect(node.url) as client:
                await client.create_queue("before")
                written = len(store.batches)
                store.hold = True
                during = client.start_request("create", {"kind": "queue", "definition": {"name": "during"}})
                await anyio.to_thread.run_sync(store.holding.wait, 10)  # its batch is being written
                served = node.requests_served
                waiting = client.start_request("create", {"kind": "queue", "definition": {"name": "waiting"}})
                with anyio.fail_after(10):
                    while node.requests_served == served:
                        await anyio.sleep(0.01)  # polling a counter the node's reader advances, under a deadline
                thread = threading.Thread(target=store.lost, args=("the database's lock was taken by another session",))
                thread.start()  # from another thread, as a store's watcher calls it
                thread.join()
                with anyio.fail_after(10):
                    while node.ownership.step_down is None or node.ownership.step_down.reason is None:
                        await anyio.sleep(0.01)  # polling for the loop to have run the call, under a deadline
                store.release.set()
                assert await _returned(result) == EXIT_STEPPED_DOWN
                for pending in (during, waiting):  # neither was acknowledged: the node stepped down first
                    with pytest.raises(ConnectionLost):
                        await pending.wait()
    assert len(store.batches) == written + 1  # the batch being written when the word came; nothing after it
    assert (
        "stepping down: another node took over the store (the database's lock was taken by another session);"
        " nothing more is written" in caplog.text
    )


async def test_a_fenced_write_makes_the_node_step_down(caplog: pytest.LogCaptureFixture) -> None:
    store = LosableStore()
    result: list[int | None] = []
    with caplog.at_level(logging.ERROR, logger="aiobroker.node"):
        async with anyio.create_task_group() as tg:
            node = await tg.start(_serving, store, result)
            async with aiobroker.connect(node.url) as client:
                await client.create_queue("before")
                store.fenced = True
                with pytest.raises(ConnectionLost):  # never acknowledged: the batch holding it was refused
                    await client.create_queue("refused")
                assert await _returned(result) == EXIT_STEPPED_DOWN
    assert store.refused == 1  # the writer stopped at the first refusal; stopping tried no other batch
    assert "stepping down: another node took over the store (another node holds the store's lock now" in caplog.text
