"""A client of one node for ``tests/test_dialog_security_hosts.py``, run as its own process (inside a host's network
namespace in the ``netns`` variant, whose addresses the test process cannot reach).

One invocation does, in this order, whichever of these it is given, and prints JSON, one object per line:

``--setup FILE``
    Creates the objects listed in FILE (JSON: ``[[kind, definition], ...]``, PEM text inline) with the generic
    ``client.create(kind, definition)``. Prints ``{"created": [[kind, name], ...]}``.
``--dialog FROM TO ENCRYPTION PREFIX COUNT`` (repeatable)
    Begins a conversation FROM -> TO (``begin_dialog(encryption=ENCRYPTION == "encrypted")``) and sends COUNT
    bodies ``PREFIX%d`` (0..COUNT-1) in batches of ``--batch``, each batch acknowledged (stored) by the node.
    Prints ``{"dialog": {"to", "conversation_id", "encryption", "sent"}}`` per conversation.
``--wait-delivered SECONDS``
    Polls the node's status until its transmission queue is empty (every message acknowledged by the far side),
    failing after SECONDS. Prints ``{"delivered_after": seconds}``.
``--consume QUEUE COUNT`` (repeatable)
    Receives (and commits) from QUEUE until COUNT messages came (bounded by ``--consume-timeout``), then asks once
    more without waiting, to catch anything beyond COUNT. Prints ``{"received": {"queue", "messages": [[conversation_id,
    seq, message_type, body as latin-1 text], ...]}}``.
``--status``
    Prints ``{"status": ...}``, the node's status.

Every invocation is bounded in time (``--limit``, default 60 s): a driver never outlives its test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import anyio

import aiobroker

POLL = 0.05  # seconds between two status polls within --wait-delivered's deadline


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> int:
    async with aiobroker.connect(args.url) as client:
        if args.setup:
            with open(args.setup) as f:
                objects = json.load(f)
            created = []
            for kind, definition in objects:
                await client.create(kind, definition)
                created.append([kind, definition["name"]])
            emit({"created": created})
        for from_service, to_service, encryption, prefix, count in args.dialog:
            if encryption not in ("encrypted", "plain"):
                raise SystemExit(f"--dialog: ENCRYPTION is 'encrypted' or 'plain', not {encryption!r}")
            dialog = await client.begin_dialog(from_service, to_service, encryption=encryption == "encrypted")
            n = int(count)
            for first in range(0, n, args.batch):
                bodies = [("DEFAULT", b"%s%d" % (prefix.encode(), i)) for i in range(first, min(n, first + args.batch))]
                await dialog.send_many(bodies)
            emit({"dialog": {"to": to_service, "conversation_id": dialog.conversation_id, "encryption": encryption,
                             "sent": n}})  # fmt: skip
        if args.wait_delivered is not None:
            start = time.monotonic()
            deadline = start + args.wait_delivered
            while (await client.status())["transmission"]["messages"] != 0:
                if time.monotonic() > deadline:
                    emit({"status": await client.status()})
                    raise SystemExit(f"the transmission queue did not empty within {args.wait_delivered}s")
                await anyio.sleep(POLL)  # a poll interval inside the deadline
            emit({"delivered_after": time.monotonic() - start})
        for queue, count in args.consume:
            want = int(count)
            got: list[list[Any]] = []
            deadline = time.monotonic() + args.consume_timeout

            async def take(timeout: float, queue: str = queue, got: list[list[Any]] = got) -> None:
                batch = await client.receive(queue, max_messages=500, timeout=timeout)
                for m in batch:
                    got.append([m.conversation_id, m.sequence_number, m.message_type, m.body.decode("latin-1")])
                if batch:
                    await batch.commit()

            while len(got) < want and time.monotonic() < deadline:
                await take(min(1.0, max(0.0, deadline - time.monotonic())))
            await take(0)  # anything beyond the count (there should be nothing)
            emit({"received": {"queue": queue, "messages": got}})
        if args.status:
            emit({"status": await client.status()})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--limit", type=float, default=60.0, help="seconds this driver may run at most")
    parser.add_argument("--setup", default=None, metavar="FILE")
    parser.add_argument("--dialog", nargs=5, action="append", default=[],
                        metavar=("FROM", "TO", "ENCRYPTION", "PREFIX", "COUNT"))  # fmt: skip
    parser.add_argument("--batch", type=int, default=10, help="messages per send_many")
    parser.add_argument("--wait-delivered", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--consume", nargs=2, action="append", default=[], metavar=("QUEUE", "COUNT"))
    parser.add_argument("--consume-timeout", type=float, default=20.0)
    parser.add_argument("--status", action="store_true")
    args = parser.parse_args()

    async def bounded() -> int:
        with anyio.fail_after(args.limit):
            return await run(args)

    return anyio.run(bounded, backend="asyncio")


if __name__ == "__main__":
    sys.exit(main())
