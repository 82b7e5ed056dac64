"""The garbage collector's policy of a node process (``aiobroker/node/collector.py``), through a real
``aiobroker serve``: once started it has frozen what start-up made and raised the young generation's threshold, and
it still serves (a backlog restored before the freeze is delivered whole)."""

from __future__ import annotations

import re
from pathlib import Path

import anyio

import aiobroker
from aiobroker.node.collector import YOUNG_THRESHOLD
from node_process import NodeProcess, wait_for

LINE = re.compile(r"garbage collector: (\d+) start-up object\(s\) frozen; collection thresholds \((\d+), (\d+), (\d+)\)")


def test_a_node_process_freezes_its_start_up_and_raises_the_young_threshold(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "data").start()
    try:
        found = wait_for(lambda: LINE.search(node.output()), 10, "the collector's start-up line")
        frozen, young = int(found.group(1)), int(found.group(2))
        # modules, classes and functions of a started node: tens of thousands of objects, never walked again
        assert frozen > 10_000, found.group(0)
        assert young == YOUNG_THRESHOLD == 10_000

        async def fill() -> None:
            async with aiobroker.connect(node.url) as client:
                await client.create_queue("q")
                await client.create_service("s", "q", ["DEFAULT"])
                dialog = await client.begin_dialog("s", "s")
                await dialog.send_many([("DEFAULT", b"%d" % i) for i in range(2000)])

        anyio.run(fill)
    finally:
        assert node.stop() == 0

    node.start()  # the backlog is restored, then frozen with the rest of start-up
    try:
        async def drain() -> list[bytes]:
            bodies: list[bytes] = []
            async with aiobroker.connect(node.url) as client:
                while len(bodies) < 2000:
                    batch = await client.receive("q", max_messages=1000, timeout=5)
                    assert batch, f"only {len(bodies)} of 2000 messages came back after the restart"
                    bodies += [m.body for m in batch]
                    await batch.commit()
            return bodies

        assert anyio.run(drain) == [b"%d" % i for i in range(2000)]
    finally:
        assert node.stop() == 0
