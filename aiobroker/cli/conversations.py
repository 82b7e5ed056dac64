"""The conversation commands: ``begin``, ``send``, ``end``, ``timer`` and ``conversation`` (show one)."""

from __future__ import annotations

import argparse
import difflib
import shlex
import sys
from pathlib import Path
from typing import Any

import anyio

from ..client import Client, Dialog
from ..core.catalog import DEFAULT
from ..durations import duration
from ..errors import BrokerError
from ..tracecontext import make_trace
from . import arguments
from .arguments import add_command
from .common import CommandError
from .render import note, STATE_MEANINGS, echo, state_words, to_json, when

# ================================================================================================ commands


async def cmd_begin(client: Client, args: argparse.Namespace) -> None:
    dialog = await client.begin_dialog(
        args.from_service, args.to_service, args.contract, lifetime=args.lifetime
    )
    echo(dialog.handle)
    await warn_if_nowhere(client, args.to_service, args.from_service)


async def warn_if_nowhere(client: Client, service: str, sender: str) -> None:
    """Say so on stderr when nothing routes ``service``: no route, no dynamic routing, no local service of that
    name. The message is stored all the same and waits DELAYED (that is the model: the service may appear
    later), but a typo in ``--to`` must not look like success. Names the nearest local services (not the
    sender's own)."""
    try:
        diagnosis = await client.diagnose(service)
        if diagnosis.get("decision") != "delayed" or diagnosis.get("dynamic_routing"):
            return
        names = [s["name"] for s in await client.list("service") if s["name"] != sender]
    except BrokerError:
        return  # a warning is a courtesy: a node that cannot answer (rights, an older node) gets none
    close = difflib.get_close_matches(service, names, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(n) for n in close)}?" if close else ""
    note(
        f"warning: no route, resolver or local service matches {service!r}; the message is stored and waits"
        f" DELAYED until a route or the service appears (aiobroker diagnose {shlex.quote(service)} explains)."
        + hint
    )


def read_body(args: argparse.Namespace) -> bytes:
    """The body for ``send``: --body, else --file, else stdin unless it is a terminal (else empty)."""
    if args.body is not None:
        return str(args.body).encode("utf-8", "surrogateescape")
    if args.file is not None:
        try:
            return Path(args.file).read_bytes()
        except OSError as exc:
            raise CommandError(f"cannot read --file {args.file}: {exc.strerror or exc}") from None
    stdin = sys.stdin
    if stdin is None or stdin.closed:
        return b""
    try:
        if stdin.isatty():
            return b""
        return stdin.buffer.read()
    except (OSError, ValueError):
        return b""


async def cmd_send(client: Client, args: argparse.Namespace) -> None:
    make_trace(args.traceparent, args.tracestate)  # refused before a conversation is begun for it
    began = args.handle is None
    if began:
        dialog = await client.begin_dialog(
            args.from_service, args.to_service, args.contract, lifetime=args.lifetime
        )
    else:
        dialog = client.dialog(args.handle)
    try:
        await dialog.send(args.type, args.body_bytes, traceparent=args.traceparent, tracestate=args.tracestate)
    except BrokerError:
        if began:
            # Do not leave behind a conversation nobody knows the handle of; the original error is what matters.
            with anyio.CancelScope(shield=True):
                try:
                    await dialog.end(cleanup=True)
                except BrokerError:
                    pass
        raise
    if args.end:
        await dialog.end()
    echo(dialog.handle)
    if began:
        await warn_if_nowhere(client, args.to_service, args.from_service)


async def cmd_end(client: Client, args: argparse.Namespace) -> None:
    error = (args.error, args.description) if args.error is not None else None
    dropped = await client.dialog(args.handle).end(error=error, cleanup=args.cleanup)
    how = " (cleanup: nothing sent)" if args.cleanup else (f" with error {args.error}" if error else "")
    echo(f"ended conversation {args.handle}{how}")
    if dropped:
        note(f"{dropped} message(s) still waiting for a route were dropped (they had not left this node)")


async def cmd_timer(client: Client, args: argparse.Namespace) -> None:
    await client.dialog(args.handle).begin_timer(args.seconds)
    echo(f"timer set: a DialogTimer message arrives on conversation {args.handle} in {duration(args.seconds)}")


async def cmd_conversation(client: Client, args: argparse.Namespace) -> None:
    info = await Dialog(client, args.handle).info()
    if args.json:
        echo(to_json(info))
        return
    state = str(info.get("state"))
    rows: list[tuple[str, Any]] = [
        ("handle", info.get("handle")),
        ("conversation id", info.get("conversation_id")),
        ("group id", info.get("group_id")),
        ("side", "initiator" if info.get("is_initiator") else "target"),
        ("service", info.get("service")),
        ("far service", info.get("far_service")),
        ("contract", info.get("contract")),
        ("state", f"{state_words(state)}: {STATE_MEANINGS.get(state, '')}".rstrip(": ")),
        ("messages sent", info.get("send_seq")),
        ("messages received", info.get("recv_seq")),
        ("lifetime ends", when(info.get("expires_at"))),
        ("timer", when(info.get("timer_at")) if info.get("timer_at") is not None else "none"),
    ]
    error = info.get("error")
    if error:
        rows.append(("error", f"{error[0]}: {error[1]}"))
    if info.get("delayed"):
        rows.append(("delayed", info.get("delayed")))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        echo(f"{key + ':':<{width + 1}} {value}")


# ================================================================================================= parsers


def add_begin(commands: Any, client: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "begin",
        "begin a conversation and print its handle",
        ["H=$(aiobroker begin //shop/Client //shop/Orders --contract //shop/OrderContract)"],
        parents=[client],
    )
    p.add_argument("from_service", metavar="FROM_SERVICE", help="a service on this node")
    p.add_argument("to_service", metavar="TO_SERVICE", help="the target service (it may not exist yet)")
    p.add_argument("--contract", default=DEFAULT, metavar="C", help="default DEFAULT")
    p.add_argument(
        "--lifetime", type=arguments.positive_seconds, metavar="SECONDS", help="end it in error after this long"
    )
    p.set_defaults(run=cmd_begin)


def add_send(commands: Any, client: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "send",
        "send a message on a conversation (or begin one) and print its handle",
        [
            "aiobroker send --from //shop/Client --to //shop/Orders --body 'one order'",
            "aiobroker send --handle $H --type //shop/Ack --file ack.json --end",
            "echo hello | aiobroker send --handle $H",
        ],
        details="The body comes from --body, --file, or stdin when neither is given and stdin is not a terminal"
        " (otherwise it is empty).",
        parents=[client],
    )
    target = p.add_argument_group("conversation (--handle, or --from and --to to begin one)")
    target.add_argument("--handle", metavar="H", help="an existing conversation's handle")
    target.add_argument(
        "--from", dest="from_service", metavar="F", help="begin a conversation from this service"
    )
    target.add_argument("--to", dest="to_service", metavar="T", help="... to this service")
    target.add_argument("--contract", metavar="C", help="contract of the new conversation (default DEFAULT)")
    target.add_argument(
        "--lifetime", type=arguments.positive_seconds, metavar="S", help="lifetime of the new conversation"
    )
    p.add_argument("--type", default=DEFAULT, metavar="T", help="message type (default DEFAULT)")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body", metavar="TEXT", help="the body, as UTF-8 text")
    body.add_argument("--file", metavar="PATH", help="read the body from this file")
    p.add_argument("--end", action="store_true", help="end the conversation after sending")
    p.add_argument(
        "--traceparent",
        metavar="TP",
        help="W3C trace context the message carries to its receiver: 00-<32 hex trace id>-<16 hex span id>-<2 hex"
        " flags>",
    )
    p.add_argument("--tracestate", metavar="TS", help="W3C tracestate to carry with --traceparent")
    p.set_defaults(run=cmd_send)


def add_end(commands: Any, client: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "end",
        "end this side of a conversation",
        [
            "aiobroker end $H",
            "aiobroker end $H --error 42 --description 'order rejected'",
            "aiobroker end $H --cleanup",
        ],
        details="Sends EndDialog after what is queued; with --error an Error message instead. --cleanup removes"
        " this side only and sends nothing.",
        parents=[client],
    )
    p.add_argument("handle", metavar="HANDLE")
    p.add_argument(
        "--error", type=arguments.positive_int, metavar="CODE", help="end with an Error of this code (> 0)"
    )
    p.add_argument("--description", metavar="TEXT", help="the Error's description (with --error)")
    p.add_argument("--cleanup", action="store_true", help="remove this side without telling the far side")
    p.set_defaults(run=cmd_end)


def add_timer(commands: Any, client: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "timer",
        "set a conversation timer: a DialogTimer message arrives after SECONDS",
        ["aiobroker timer $H 30"],
        parents=[client],
    )
    p.add_argument("handle", metavar="HANDLE")
    p.add_argument("seconds", type=arguments.seconds, metavar="SECONDS")
    p.set_defaults(run=cmd_timer)


def add_conversation(commands: Any, client: argparse.ArgumentParser, as_json: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "conversation",
        "show one conversation endpoint and its state",
        ["aiobroker conversation $H"],
        parents=[client, as_json],
    )
    p.add_argument("handle", metavar="HANDLE")
    p.set_defaults(run=cmd_conversation)
