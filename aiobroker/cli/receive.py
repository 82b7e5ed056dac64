"""The ``receive`` command: take messages of one conversation group (or several) off a queue, print them, commit."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import anyio

from ..client import Client
from ..durations import duration
from ..errors import BrokerError
from . import arguments
from .arguments import add_command
from .common import EXIT_NOTHING_RECEIVED, EXIT_STATUS_RECEIVE
from .render import echo, message_json, message_line, note


async def cmd_receive(client: Client, args: argparse.Namespace) -> int | None:
    """Print and commit one batch; nothing received is exit status 3 (a script's loop can tell it from an error)."""
    batch = await client.receive(args.queue, max_messages=args.max, timeout=args.timeout, max_groups=args.max_groups)
    if not batch:
        note(f"no message arrived within {duration(args.timeout)} on queue {args.queue!r}")
        return EXIT_NOTHING_RECEIVED
    try:
        for message in batch:
            echo(message_json(message) if args.json else message_line(message))
        sys.stdout.flush()
    except BaseException:
        with anyio.CancelScope(shield=True):
            try:
                await batch.rollback()
            except BrokerError:
                pass
        raise
    if args.rollback:
        await batch.rollback()
        note(f"rolled back: {len(batch)} message(s) stay in queue {args.queue!r}")
    else:
        await batch.commit()
    return None


def add_receive(commands: Any, client: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "receive",
        "receive messages of one conversation group, print them, and commit",
        ["aiobroker receive orders --timeout 5", "aiobroker receive orders --max 100 --json",
         "aiobroker receive orders --max 1000 --max-groups 100"],
        details="Text output is one line per message: handle, sequence number, message type, body. With"
        " --rollback the messages go back to the queue (this counts toward poison-message handling).",
        parents=[client],
        exit_status=EXIT_STATUS_RECEIVE,
    )
    p.add_argument("queue", metavar="QUEUE")
    p.add_argument(
        "--max", type=arguments.positive_int, default=100, metavar="N", help="at most N messages (default 100)"
    )
    p.add_argument(
        "--max-groups",
        type=arguments.positive_int,
        default=1,
        metavar="G",
        help="take up to G ready conversation groups at once, committed or rolled back together (default 1)",
    )
    p.add_argument(
        "--timeout",
        type=arguments.seconds,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for a message (default 0: do not wait)",
    )
    p.add_argument(
        "--rollback", action="store_true", help="leave the messages in the queue instead of removing them"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per message and line (body as UTF-8, or base64 with body_base64 true)",
    )
    p.set_defaults(run=cmd_receive)
