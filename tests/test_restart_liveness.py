"""After any start, everything stored moves on by itself: real node processes, real TCP, no new send to wake them.

The user's report: stop B; send A -> B; stop A; start B, then A. A's link said "not yet tried" with one
unacknowledged message for good, until a new send to B woke it. Each case here restarts the sender and then waits
(with a deadline) for the stored message to arrive at B, sending nothing new.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from node_process import NodeProcess, free_port

import aiobroker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: a restarted link tries at once (its back-off starts afresh); this leaves room for a slow machine
ARRIVAL_DEADLINE = 20.0


async def _make_target(url: str) -> None:
    async with aiobroker.connect(url) as client:
        await client.create_queue("qt")
        await client.create_service("//shop/Orders", "qt", ["DEFAULT"])


async def _send_one(url: str, body: bytes) -> None:
    """Create the initiating service on the node at ``url`` and store one message for //shop/Orders there."""
    async with aiobroker.connect(url) as client:
        await client.create_queue("qi")
        await client.create_service("//shop/Client", "qi")
        dialog = await client.begin_dialog("//shop/Client", "//shop/Orders")
        await dialog.send("DEFAULT", body)  # returns once the node has stored it


async def _unacknowledged(url: str) -> int:
    async with aiobroker.connect(url) as client:
        status = await client.status()
    return int(status["transmission"]["messages"])


async def _received_at(url: str) -> list[bytes]:
    async with aiobroker.connect(url) as client:
        with anyio.fail_after(ARRIVAL_DEADLINE + 5):
            batch = await client.receive("qt", max_messages=10, timeout=ARRIVAL_DEADLINE)
            await batch.commit()
    return [m.body for m in batch]


def _stop(node: NodeProcess, signum: signal.Signals) -> None:
    if signum == signal.SIGKILL:
        node.kill()
    else:
        assert node.stop(signum) == 0, node.output()


def _route_config(path: Path, address: str) -> Path:
    path.write_text(
        "[[route]]\n"
        'name = "to-orders"\n'
        'service_name = "//shop/Orders"\n'
        f'address = "{address}"\n'
    )
    return path


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
async def test_a_message_stored_for_a_stopped_peer_leaves_after_the_sender_restarts(
    tmp_path: Path, signum: signal.Signals
) -> None:
    b = NodeProcess(tmp_path / "b").start()
    await _make_target(b.url)
    assert b.stop() == 0, b.output()

    a = NodeProcess(tmp_path / "a").start()
    try:
        async with aiobroker.connect(a.url) as client:
            await client.create_route("to-orders", b.url, service_name="//shop/Orders")
        await _send_one(a.url, b"two apples")
        assert await _unacknowledged(a.url) == 1
        _stop(a, signum)

        b.start()
        a.start()
        assert await _received_at(b.url) == [b"two apples"]
        with anyio.fail_after(ARRIVAL_DEADLINE):
            while await _unacknowledged(a.url):  # the acknowledgement empties A's transmission queue
                await anyio.sleep(0.05)  # polling the other process, under the deadline
    finally:
        a.stop()
        b.stop()


async def test_a_conversation_delayed_at_shutdown_goes_when_its_route_exists_at_the_next_start(tmp_path: Path) -> None:
    """DELAYED for want of a route when A stopped; A starts again with a config file that routes the service."""
    b = NodeProcess(tmp_path / "b").start()
    try:
        await _make_target(b.url)
        a = NodeProcess(tmp_path / "a").start()
        try:
            await _send_one(a.url, b"delayed at shutdown")
            async with aiobroker.connect(a.url) as client:
                status = await client.status()
            assert status["delayed"]["//shop/Orders"]["messages"] == 1
        finally:
            assert a.stop(signal.SIGINT) == 0, a.output()

        config = _route_config(tmp_path / "a.toml", b.url)
        a = NodeProcess(tmp_path / "a", port=a.port, extra=["--config", str(config)]).start()
        try:
            assert await _received_at(b.url) == [b"delayed at shutdown"]
        finally:
            a.stop()
    finally:
        b.stop()


async def test_a_message_through_a_forwarder_leaves_after_the_sender_and_the_forwarder_restart(tmp_path: Path) -> None:
    """A -> F (forwarding) -> B with B down: F holds the message in memory only, so after A and F restart (F
    killed) it is A's stored copy, sent by A's restarted link, that reaches B."""
    b = NodeProcess(tmp_path / "b").start()
    await _make_target(b.url)
    assert b.stop() == 0, b.output()
    f_config = _route_config(tmp_path / "f.toml", b.url)
    f_config.write_text("[federation]\nforwarding = true\n\n" + f_config.read_text())
    f = NodeProcess(tmp_path / "f", port=free_port(), extra=["--config", str(f_config)]).start()
    a = NodeProcess(tmp_path / "a").start()
    try:
        async with aiobroker.connect(a.url) as client:
            await client.create_route("to-orders", f.url, service_name="//shop/Orders")
        await _send_one(a.url, b"via the forwarder")
        assert await _unacknowledged(a.url) == 1
        _stop(a, signal.SIGINT)
        f.kill()

        f.start()
        b.start()
        a.start()
        assert await _received_at(b.url) == [b"via the forwarder"]
    finally:
        a.stop()
        f.stop()
        b.stop()


#: run in a process of its own: the stop this checks used to spin without yielding, which no cancel scope can
#: interrupt, so only the process's time-out can fail it without hanging the suite
_STOP_WITH_A_LINK_TO_WAKE = """
import sys, anyio, aiobroker
from pathlib import Path

async def main(data_dir, address):
    config = aiobroker.NodeConfig(store="sqlite", data_dir=data_dir, listen_port=0)
    async with aiobroker.Node(config) as node:
        async with aiobroker.connect(node.url) as client:
            await client.create_route("to-orders", address, service_name="//shop/Orders")
            await client.create_queue("qi")
            await client.create_service("//shop/Client", "qi")
            dialog = await client.begin_dialog("//shop/Client", "//shop/Orders")
            await dialog.send("DEFAULT", b"waits for a peer that is not there")
        node.core.tx.ready_links.add(address)  # as a send leaves it while the link is busy
    async with aiobroker.Node(config) as node:  # and what it stored is all there at the next start
        assert node.core.tx.message_count == 1, node.core.tx.message_count
    print("stopped")

anyio.run(main, Path(sys.argv[1]), sys.argv[2])
"""


def test_a_node_stops_while_a_link_has_work_waiting_to_be_woken(tmp_path: Path) -> None:
    """At a stop no link runs, so a link still listed as having work must not keep the last write going for good.
    (A SIGINT hung a node whose link had just come up: the final drain waited for that list to empty, and only a
    running link empties it.)"""
    address = f"tcp://127.0.0.1:{free_port()}"
    try:
        done = subprocess.run(
            [sys.executable, "-c", _STOP_WITH_A_LINK_TO_WAKE, str(tmp_path / "data"), address],
            capture_output=True, text=True, timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the node did not stop within 30 s with a link waiting to be woken")
    assert done.returncode == 0 and done.stdout.strip() == "stopped", done.stderr
