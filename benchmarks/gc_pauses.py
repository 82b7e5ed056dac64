"""The garbage collector's pauses in a node that holds a backlog: every collection timed, Python's defaults
against the policy ``aiobroker serve`` applies (``aiobroker/node/collector.py``).

One process, a node on the memory store and a client on loopback: ``--backlog`` messages are sent and left waiting,
then ``--messages`` more are sent, received and committed in batches of 1,000. ``gc.callbacks`` times every
collection from the moment the node has started. Each mode runs in a process of its own, alternating, ``--rounds``
times::

    .venv/bin/python benchmarks/gc_pauses.py                 # 100,000 waiting, 200,000 through, 2 rounds
    .venv/bin/python benchmarks/gc_pauses.py --backlog 0 --messages 50000 --rounds 1

The figures go into benchmarks/README.md ("The garbage collector"): collections per generation, their total time,
the longest one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

MODES = ("python", "node")
BATCH = 1000
RUN_TIMEOUT = 300


def measure(mode: str, messages: int, backlog: int) -> dict[str, Any]:
    """One run in this process (``python gc_pauses.py run MODE MESSAGES BACKLOG``)."""
    import gc

    import anyio

    import aiobroker

    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    async def run() -> float:
        async with aiobroker.Node(aiobroker.NodeConfig(store="memory", listen_port=0)) as node:
            if mode == "node":
                from aiobroker.node.collector import apply_node_policy

                apply_node_policy()
            gc.callbacks.append(timed)
            async with aiobroker.connect(node.url) as client:
                await client.create_queue("qi")
                await client.create_queue("qt")
                await client.create_service("init", "qi")
                await client.create_service("target", "qt", ["DEFAULT"])
                dialog = await client.begin_dialog("init", "target")
                body = b"x" * 128
                for _ in range(backlog // BATCH):  # a standing backlog the collector has to live with
                    await dialog.send_many([("DEFAULT", body)] * BATCH)
                t0 = time.perf_counter()
                received = 0
                for _ in range(messages // BATCH):
                    await dialog.send_many([("DEFAULT", body)] * BATCH)
                    goal = received + BATCH
                    while received < goal:
                        batch = await client.receive("qt", max_messages=BATCH, timeout=5)
                        if not batch:
                            raise SystemExit(f"no message within 5 s after {received}: the node is broken")
                        received += len(batch)
                        await batch.commit()
                return time.perf_counter() - t0

    elapsed = anyio.run(run, backend="asyncio")
    return {
        "mode": mode,
        "msg_per_s": round(messages / elapsed),
        "collections": {g: len(p) for g, p in pauses.items()},
        "total_ms": round(sum(sum(p) for p in pauses.values()) * 1e3, 1),
        "longest_ms": round(max((max(p) for p in pauses.values() if p), default=0.0) * 1e3, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Run it as shown at the top of the file.")
    p.add_argument("--messages", type=int, default=200_000, help="messages sent, received and committed (default 200,000)")
    p.add_argument("--backlog", type=int, default=100_000, help="messages left waiting first (default 100,000)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each mode, alternating (default 2)")
    args = p.parse_args(argv)
    if args.messages < BATCH or args.messages % BATCH or args.backlog % BATCH or args.rounds < 1:
        p.error(f"--messages and --backlog must be multiples of {BATCH}, --rounds at least 1")
    for r in range(args.rounds):
        for mode in MODES:
            print(f"round {r + 1}/{args.rounds}, {mode} ...", file=sys.stderr, flush=True)
            done = subprocess.run(
                [sys.executable, __file__, "run", mode, str(args.messages), str(args.backlog)],
                capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
            )
            if done.returncode != 0:
                raise SystemExit(f"the {mode} run failed ({done.returncode}):\n{done.stderr[-2000:]}")
            print(done.stdout.strip())
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "run":
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        raise SystemExit(main())
