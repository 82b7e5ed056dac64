"""A client of one node, run as its own process (inside a host's network namespace in the federation tests).

The root namespace cannot reach addresses inside the namespaces, so the producing and consuming clients of
``tests/test_federation_hosts.py`` run where their node runs, as this script. Every command prints JSON, one object
per line, flushed at once, so the test can follow it with a deadline:

``produce --url U --from S --to T --count N --batch B [--conversations K] [--interval SECONDS]``
    Begins K conversations from S to T and sends N numbered messages (bodies ``b"0"``, ``b"1"``, ...) on each, in
    batches of B; ``--interval`` paces the batches (a rate, not a wait for anything). Prints
    ``{"begun": [...]}``, then ``{"conv": i, "acked": n, "total": t}`` after each batch the node acknowledged
    (stored), then ``{"summary": {"conversations": [{"conversation_id", "handle", "sent", "acked"}, ...]}}``.
    A send whose connection broke is reported as ``{"conv": i, "error": ...}`` and that conversation stops.

``consume --url U --queue Q --count N --timeout T [--reply BODY]``
    Receives (and commits) until N messages came or T seconds passed, then asks once more without waiting, to
    catch anything beyond N (a duplicate would show there). Prints ``{"batch": [[conversation_id, seq, type,
    body], ...]}`` per batch, in the order received. With ``--reply`` it then sends BODY once on every
    conversation it received from. Ends with ``{"summary": {"received": n, "replied": [...]}}``.

``status --url U``
    Prints the node's status as one JSON object.

Every command is bounded in time (``--limit``, default 120 s): a driver never outlives its test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import anyio

import aiobroker


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


async def produce(args: argparse.Namespace) -> int:
    async with aiobroker.connect(args.url) as client:
        dialogs = [await client.begin_dialog(args.from_service, args.to_service) for _ in range(args.conversations)]
        emit(
            {
                "begun": [
                    {"conv": i, "handle": d.handle, "conversation_id": d.conversation_id} for i, d in enumerate(dialogs)
                ]
            }
        )
        sent = [0] * len(dialogs)
        acked = [0] * len(dialogs)
        failed = False

        async def sender(i: int) -> None:
            nonlocal failed
            dialog = dialogs[i]
            while sent[i] < args.count:
                first = sent[i]
                last = min(args.count, first + args.batch)
                sent[i] = last
                try:
                    await dialog.send_many([("DEFAULT", b"%d" % n) for n in range(first, last)])
                except aiobroker.BrokerError as exc:
                    failed = True
                    emit({"conv": i, "error": f"{type(exc).__name__}: {exc}"})
                    return
                acked[i] = last
                emit({"conv": i, "acked": last, "total": sum(acked)})
                if args.interval > 0 and sent[i] < args.count:
                    await anyio.sleep(args.interval)  # pacing the stream, not waiting for a condition

        async with anyio.create_task_group() as tg:
            for i in range(len(dialogs)):
                tg.start_soon(sender, i)
    emit(
        {
            "summary": {
                "conversations": [
                    {"conversation_id": d.conversation_id, "handle": d.handle, "sent": sent[i], "acked": acked[i]}
                    for i, d in enumerate(dialogs)
                ]
            }
        }
    )
    return 1 if failed else 0


async def consume(args: argparse.Namespace) -> int:
    received = 0
    conversations: dict[str, str] = {}  # conversation id -> handle here
    deadline = time.monotonic() + args.timeout
    async with aiobroker.connect(args.url) as client:

        async def take(timeout: float) -> int:
            batch = await client.receive(args.queue, max_messages=500, timeout=timeout)
            if batch:
                rows = []
                for m in batch:
                    conversations.setdefault(m.conversation_id, m.conversation_handle)
                    rows.append(
                        [m.conversation_id, m.sequence_number, m.message_type, m.body.decode("utf-8", "replace")]
                    )
                emit({"batch": rows})
                await batch.commit()
            return len(batch)

        while received < args.count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            received += await take(min(remaining, 1.0))
        received += await take(0)  # anything beyond the count (there should be nothing)
        replied = []
        if args.reply is not None:
            for conversation_id, handle in conversations.items():
                await client.dialog(handle).send("DEFAULT", args.reply.encode())
                replied.append(conversation_id)
    emit({"summary": {"received": received, "replied": replied}})
    return 0


async def status(args: argparse.Namespace) -> int:
    async with aiobroker.connect(args.url) as client:
        emit(await client.status())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=float, default=120.0, help="seconds this driver may run at most")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("produce")
    p.add_argument("--url", required=True)
    p.add_argument("--from", dest="from_service", required=True)
    p.add_argument("--to", dest="to_service", required=True)
    p.add_argument("--count", type=int, required=True, help="messages per conversation")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--conversations", type=int, default=1)
    p.add_argument("--interval", type=float, default=0.0, help="seconds between a conversation's batches")
    p.set_defaults(run=produce)
    c = commands.add_parser("consume")
    c.add_argument("--url", required=True)
    c.add_argument("--queue", required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--timeout", type=float, required=True)
    c.add_argument("--reply", default=None)
    c.set_defaults(run=consume)
    s = commands.add_parser("status")
    s.add_argument("--url", required=True)
    s.set_defaults(run=status)
    args = parser.parse_args()

    async def bounded() -> int:
        with anyio.fail_after(args.limit):
            code: int = await args.run(args)
            return code

    return anyio.run(bounded, backend="asyncio")


if __name__ == "__main__":
    sys.exit(main())
