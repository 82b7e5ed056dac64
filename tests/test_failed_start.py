"""A start either completes or leaves the data directory as it found it: `aiobroker serve` run as a user runs it,
failing because its port is taken after it has read a config file full of objects."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from node_process import NodeProcess

import aiobroker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CONFIG = """\
[[queue]]
name = "from-config"

[[service]]
name = "//config/Service"
queue = "from-config"
contracts = ["DEFAULT"]
"""


def _serve_on_a_taken_port(data_dir: Path, config: Path) -> subprocess.CompletedProcess[str]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        return subprocess.run(
            [sys.executable, "-m", "aiobroker", "serve", "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(data_dir), "--config", str(config), "--http", "off"],
            capture_output=True, text=True, timeout=60,
        )


def test_a_failed_first_start_leaves_no_data_directory(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(CONFIG)
    data_dir = tmp_path / "data"
    done = _serve_on_a_taken_port(data_dir, config)
    assert done.returncode != 0
    assert "cannot listen on" in done.stderr and "choose another --listen address" in done.stderr
    assert not data_dir.exists(), f"the failed start left {sorted(p.name for p in data_dir.iterdir())}"


async def test_a_failed_start_creates_none_of_the_config_files_objects_in_an_existing_store(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = NodeProcess(data_dir).start()
    async with aiobroker.connect(node.url) as client:
        await client.create_queue("before")
    assert node.stop() == 0, node.output()
    before = sorted(p.name for p in data_dir.iterdir())

    config = tmp_path / "node.toml"
    config.write_text(CONFIG)
    done = _serve_on_a_taken_port(data_dir, config)
    assert done.returncode != 0 and "cannot listen on" in done.stderr

    assert sorted(p.name for p in data_dir.iterdir()) == before
    node = NodeProcess(data_dir, port=node.port).start()
    try:
        async with aiobroker.connect(node.url) as client:
            queues = [q["name"] for q in await client.list("queue")]
            assert "before" in queues and "from-config" not in queues
            assert "//config/Service" not in [s["name"] for s in await client.list("service")]
    finally:
        assert node.stop() == 0, node.output()


async def test_a_queue_that_poison_handling_turned_off_does_not_keep_the_node_from_starting_on_its_config(
    tmp_path: Path,
) -> None:
    """The config file says nothing of the queue's status (on, by default); poison-message handling turned it off.
    The stored status stands, with a warning, instead of 'exists with another definition' at every start."""
    config = tmp_path / "node.toml"
    config.write_text(CONFIG)
    node = NodeProcess(tmp_path / "data", extra=["--config", str(config)]).start()
    try:
        async with aiobroker.connect(node.url) as client:
            await client.create_queue("qi")
            await client.create_service("//config/Client", "qi")
            dialog = await client.begin_dialog("//config/Client", "//config/Service")
            await dialog.send("DEFAULT", b"poison")
            for _ in range(5):  # the default poison_rollbacks
                batch = await client.receive("from-config", timeout=5)
                assert len(batch) == 1
                await batch.rollback()
            [queue] = [q for q in await client.list("queue") if q["name"] == "from-config"]
            assert queue["status"] == "off"
    finally:
        assert node.stop() == 0, node.output()

    node = NodeProcess(tmp_path / "data", port=node.port, extra=["--config", str(config)]).start()
    try:
        async with aiobroker.connect(node.url) as client:
            [queue] = [q for q in await client.list("queue") if q["name"] == "from-config"]
        assert queue["status"] == "off"
        assert "queue 'from-config' is off although the config file says on; it stays off" in node.output()
    finally:
        assert node.stop() == 0, node.output()
