"""Instructions per message through one node, counted by valgrind's callgrind: a measure that does not move with
the machine's load, for comparing two trees where msg/s swings by tens of percent from run to run.

A fixed loop in one process: a node on the memory store, a client on loopback, N messages of 128 bytes sent in
batches of 1,000, each batch received and committed. It runs twice under callgrind, with N messages and with none;
the difference over N is what a message costs on the whole path (client, wire, node, core), start-up left out.
Count, not seconds: repeatable to about 0.1% for the same tree and interpreter.

    .venv/bin/python benchmarks/instructions.py                       # this tree
    .venv/bin/python benchmarks/instructions.py --python ../other/.venv/bin/python   # another tree's venv
    .venv/bin/python benchmarks/instructions.py --gc node      # with aiobroker serve's collector policy (or off)

Needs valgrind (Debian: apt-get install valgrind). Takes about a minute (callgrind runs code ~50x slower).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 1000
#: the callgrind runs are ~50x slower than native; this bounds each (a healthy run takes ~30 s)
RUN_TIMEOUT = 600
GC_MODES = ("python", "node", "off")


def loop(messages: int, gc_mode: str = "python") -> None:
    """The measured work (run under callgrind by :func:`main`). ``gc_mode``: Python's collector as it comes
    (``python``), the policy ``aiobroker serve`` applies once started (``node``), or no collector (``off``)."""
    import gc

    import anyio

    import aiobroker

    if gc_mode == "off":
        gc.disable()

    async def run() -> None:
        async with aiobroker.Node(aiobroker.NodeConfig(store="memory", listen_port=0)) as node:
            if gc_mode == "node":
                from aiobroker.node.collector import apply_node_policy

                apply_node_policy()
            async with aiobroker.connect(node.url) as client:
                await client.create_queue("qi")
                await client.create_queue("qt")
                await client.create_service("init", "qi")
                await client.create_service("target", "qt", ["DEFAULT"])
                dialog = await client.begin_dialog("init", "target")
                body = b"x" * 128
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

    anyio.run(run, backend="asyncio")


def count(python: str, messages: int, gc_mode: str = "python") -> int:
    """Instructions callgrind counts for one run of the loop with ``messages``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, __file__, "loop", str(messages),
               gc_mode]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise SystemExit(f"the run with {messages} messages failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Run it as shown at the top of the file.")
    p.add_argument("--messages", type=int, default=40_000, help="messages in the measured run (default 40,000)")
    p.add_argument("--python", default=sys.executable, help="the interpreter of the tree to measure (its venv's)")
    p.add_argument("--gc", choices=GC_MODES, default="python",
                   help="the garbage collector in the loop: as Python sets it (default), the policy aiobroker serve"
                        " applies (node; trees that have aiobroker/node/collector.py), or off")
    args = p.parse_args(argv)
    if args.messages < BATCH or args.messages % BATCH:
        p.error(f"--messages must be a multiple of {BATCH}")
    if shutil.which("valgrind") is None:
        p.error("valgrind is not installed (Debian: apt-get install valgrind)")
    started = time.monotonic()
    print(f"counting start-up alone (0 messages) with {args.python} ...", flush=True)
    base = count(args.python, 0, args.gc)
    print(f"  {base:,} instructions ({time.monotonic() - started:.0f} s); now {args.messages:,} messages ...", flush=True)
    full = count(args.python, args.messages, args.gc)
    per = (full - base) / args.messages
    print(f"  {full:,} instructions ({time.monotonic() - started:.0f} s)")
    print(f"{per:,.0f} instructions per message (128 B, batches of {BATCH}, memory store, client and node)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "loop":
        loop(int(sys.argv[2]), sys.argv[3])
    else:
        raise SystemExit(main())
