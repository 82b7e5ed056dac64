"""The example BCN application (examples/bcn_service.py) in its own process, answering a real node's requests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from node_process import NodeProcess, stop_by_pid

import aiobroker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "bcn_service.py"


async def test_the_bcn_application_creates_the_route_and_the_delayed_messages_go(tmp_path: Path) -> None:
    a = NodeProcess(tmp_path / "a").start()
    b = NodeProcess(tmp_path / "b").start()
    directory = tmp_path / "services.json"
    directory.write_text(json.dumps({"svcB": b.url}))
    log = open(tmp_path / "bcn.log", "wb")  # noqa: SIM115 - closed below
    app = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--address", a.url, "--directory", str(directory)], stdout=log, stderr=log
    )
    try:
        async with aiobroker.connect(a.url) as ca, aiobroker.connect(b.url) as cb:
            await ca.create_queue("qa")
            await ca.create_service("svcA", "qa")
            await cb.create_queue("qb")
            await cb.create_service("svcB", "qb", ["DEFAULT"])
            await cb.create_route("back", a.url, service_name="svcA")
            with anyio.fail_after(20):  # the application has declared the BCN service: dynamic routing is on
                while not (await ca.diagnose("svcB"))["dynamic_routing"]:
                    await anyio.sleep(0.05)
            dialogs = [await ca.begin_dialog("svcA", "svcB") for _ in range(30)]
            for i, d in enumerate(dialogs):
                await d.send_many([("DEFAULT", b"%d:%d" % (i, k)) for k in range(3)])
            got: dict[str, list[int]] = {}
            with anyio.move_on_after(30):
                while sum(len(v) for v in got.values()) < 90:
                    batch = await cb.receive("qb", max_messages=500, timeout=10)
                    for m in batch:
                        got.setdefault(m.conversation_id, []).append(int(m.body.split(b":")[1]))
                    await batch.commit()
            if sum(len(v) for v in got.values()) < 90:
                status = await ca.status()
                raise AssertionError(
                    f"only {sum(len(v) for v in got.values())} of 90 arrived; A's transmission queue:"
                    f" {json.dumps(status['transmission'], default=str)[:1500]}; dynamic routing:"
                    f" {json.dumps(status['dynamic_routing'], default=str)[:800]}"
                )
            assert all(v == [0, 1, 2] for v in got.values()) and len(got) == 30
            stats = (await ca.status())["dynamic_routing"]
            # one MissingRoute, then (the route known) one MissingRemoteServiceBinding, which this application
            # ends with an error: the thirty plain conversations go on unsecured
            assert stats["requests_made"] == 2, "one request of each kind for thirty waiting conversations"
            assert [r["address"] for r in await ca.list("route") if r["service_name"] == "svcB"] == [b.url]

            unknown = await ca.begin_dialog("svcA", "svcNowhere")
            await unknown.send("DEFAULT", b"waits")
            with anyio.fail_after(20):
                while True:
                    service = (await ca.status())["dynamic_routing"]["services"].get("svcNowhere") or {}
                    if (service.get("last") or {}).get("text", "").find("no address known") >= 0:
                        break
                    await anyio.sleep(0.05)
            assert service["delayed_messages"] == 1 and service["next_retry_in"] is not None
    finally:
        stop_by_pid(app)
        log.close()
        assert a.stop() == 0 and b.stop() == 0
    assert app.returncode == 0, (tmp_path / "bcn.log").read_text()


async def test_the_bcn_application_reconnects_when_its_node_restarts(tmp_path: Path) -> None:
    """Examples are programs users copy: a node restart must not end the BCN application (it used to exit)."""
    a = NodeProcess(tmp_path / "a").start()
    directory = tmp_path / "services.json"
    directory.write_text(json.dumps({"svcB": "tcp://127.0.0.1:9"}))
    log_path = tmp_path / "bcn.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    app = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--address", a.url, "--directory", str(directory)], stdout=log, stderr=log
    )
    try:
        async with aiobroker.connect(a.url) as ca:
            await ca.create_queue("qa")
            await ca.create_service("svcA", "qa")
            with anyio.fail_after(20):  # the application has declared the BCN service
                while not (await ca.diagnose("svcB"))["dynamic_routing"]:
                    await anyio.sleep(0.05)
        assert a.stop() == 0, a.output()
        a.start()
        with anyio.fail_after(20):
            while "lost the node" not in log_path.read_text():
                await anyio.sleep(0.05)  # polling the application's log, under a deadline
        async with aiobroker.connect(a.url) as ca:
            dialog = await ca.begin_dialog("svcA", "svcB")
            await dialog.send("DEFAULT", b"after the restart")
            with anyio.fail_after(30):  # answered by the reconnected application
                while not [r for r in await ca.list("route") if r["service_name"] == "svcB"]:
                    await anyio.sleep(0.05)
        assert app.poll() is None, "the application exited: " + log_path.read_text()
    finally:
        stop_by_pid(app)
        log.close()
        assert a.stop() == 0, a.output()
    assert app.returncode == 0, log_path.read_text()
