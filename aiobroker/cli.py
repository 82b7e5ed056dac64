"""The ``aiobroker`` command line: run a node (``serve``) and talk to one (every other command).

Each client command opens one connection to the node named by ``--address`` (or ``$AIOBROKER_ADDRESS``, else
``tcp://127.0.0.1:4022``), does one thing and exits. Results go to stdout (plain text for people, ``--json``
for programs); notes and errors go to stderr.

Exit status: 0 on success (also for ``receive`` when nothing arrived, with a note on stderr); 1 when the node or
the configuration refuses (one line, ``aiobroker: error: <message>``); 2 for a usage error (argparse's own);
130 when interrupted.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import anyio

from . import __version__
from .client import Client, Dialog, Message, connect
from .core.catalog import DEFAULT, DIALOG_TIMER, END_DIALOG, ERROR, SENT_BY, VALIDATIONS
from .errors import BrokerError

PROG = "aiobroker"
ADDRESS_ENV = "AIOBROKER_ADDRESS"
DEFAULT_ADDRESS = "tcp://127.0.0.1:4022"

#: Conversation states: the two-letter code and its name in words.
STATE_NAMES = {
    "SO": "started outbound",
    "CO": "conversing",
    "DI": "disconnected inbound",
    "ER": "error",
    "CD": "closed",
}
STATE_MEANINGS = {
    "SO": "begun here, nothing sent yet",
    "CO": "messages may flow both ways",
    "DI": "the far side ended it; this side may still receive, not send, and must end it",
    "ER": "an Error arrived or the lifetime ran out; this side must end it",
    "CD": "this side ended it; kept only until its last message is delivered",
}

#: Short names for the system message types in text output.
SYSTEM_TYPE_NAMES = {END_DIALOG: "EndDialog", ERROR: "Error", DIALOG_TIMER: "DialogTimer"}

#: CLI word → (catalog kind, words for messages, plural used by ``list``)
KINDS = {
    "message-type": ("message_type", "message type", "message-types"),
    "contract": ("contract", "contract", "contracts"),
    "queue": ("queue", "queue", "queues"),
    "service": ("service", "service", "services"),
}


class CommandError(Exception):
    """A local problem with a command (an unreadable --file): reported like a BrokerError, exit status 1."""


# ============================================================================================== argument types


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _message_rule(text: str) -> tuple[str, str]:
    name, sep, sent_by = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"expected TYPE=SENT_BY (SENT_BY: {'|'.join(SENT_BY)}), got {text!r}"
        )
    sent_by = sent_by.strip().lower()
    if sent_by not in SENT_BY:
        raise argparse.ArgumentTypeError(f"SENT_BY in {text!r} must be one of {', '.join(SENT_BY)}")
    return name, sent_by


# ================================================================================================== output


def _print(*parts: Any) -> None:
    print(*parts)


def _note(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr)


def _json(value: Any, *, indent: int | None = 2) -> str:
    def fallback(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return base64.b64encode(obj).decode("ascii")
        return str(obj)

    return json.dumps(value, indent=indent, ensure_ascii=False, default=fallback)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _onoff(value: Any) -> str:
    return "on" if value else "off"


def _type_name(message_type: str) -> str:
    return SYSTEM_TYPE_NAMES.get(message_type, message_type)


def _state_words(code: str) -> str:
    return f"{code} ({STATE_NAMES.get(code, 'unknown state')})"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        stamp = datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return str(ts)
    return f"{stamp} ({_relative(ts - time.time())})"


def _relative(delta: float) -> str:
    words = _duration(abs(delta))
    return f"in {words}" if delta >= 0 else f"{words} ago"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    if days >= 365:
        return f"{days / 365.25:.0f} years"
    if days:
        return f"{days}d {h}h {m}m"
    if hours:
        return f"{h}h {m}m {s}s"
    return f"{m}m {s}s"


def _size(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _escape_controls(text: str) -> str:
    """One line per message: control characters are shown escaped (\\n, \\t, \\x01); the rest as it is."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable() and ch != " ":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _message_line(m: Message) -> str:
    head = f"{m.conversation_handle} seq={m.sequence_number} type={_type_name(m.message_type)}"
    error = m.error
    if error is not None:
        code, description = error
        return f"{head} error {code}: {_escape_controls(description)}"
    if not m.body:
        return f"{head} body: (empty)"
    try:
        text = m.body.decode("utf-8")
    except UnicodeDecodeError:
        return f"{head} body (not UTF-8; {len(m.body)} bytes in hex): {m.body.hex()}"
    return f"{head} body: {_escape_controls(text)}"


def _message_json(m: Message) -> str:
    try:
        body, is_b64 = m.body.decode("utf-8"), False
    except UnicodeDecodeError:
        body, is_b64 = base64.b64encode(m.body).decode("ascii"), True
    obj: dict[str, Any] = {
        "queue": m.queue,
        "handle": m.conversation_handle,
        "conversation_id": m.conversation_id,
        "group_id": m.conversation_group_id,
        "sequence_number": m.sequence_number,
        "message_type": m.message_type,
        "service": m.service_name,
        "far_service": m.far_service_name,
        "contract": m.contract,
        "is_initiator": m.is_initiator,
        "enqueued_at": m.enqueued_at,
        "body": body,
        "body_base64": is_b64,
    }
    error = m.error
    if error is not None:
        obj["error"] = {"code": error[0], "description": error[1]}
    return _json(obj, indent=None)


# =============================================================================================== commands

ClientAction = Callable[[Client, argparse.Namespace], Awaitable[None]]


async def _with_client(address: str, action: ClientAction, args: argparse.Namespace) -> None:
    async with connect(address) as client:
        await action(client, args)


# --- catalog ------------------------------------------------------------------------------------------------


def _describe_object(kind: str, d: dict[str, Any]) -> str:
    if kind == "message_type":
        return f"validation {d.get('validation')}"
    if kind == "contract":
        return ", ".join(f"{t} sent by {s}" for t, s in d.get("messages", {}).items())
    if kind == "queue":
        return (
            f"status {_onoff(d.get('status'))}, retention {_onoff(d.get('retention'))},"
            f" poison message handling {_onoff(d.get('poison_message_handling'))}"
        )
    if kind == "service":
        contracts = d.get("contracts") or []
        accepts = ", ".join(contracts) if contracts else "no contract (it can only begin conversations)"
        return f"on queue {d.get('queue')}, accepts {accepts}"
    return _json(d, indent=None)


async def cmd_create(client: Client, args: argparse.Namespace) -> None:
    kind, words, _ = KINDS[args.kind]
    if kind == "message_type":
        result = await client.create_message_type(args.name, args.validation)
    elif kind == "contract":
        messages: dict[str, str] = {}
        for name, sent_by in args.message:
            messages[name] = sent_by
        result = await client.create_contract(args.name, messages)
    elif kind == "queue":
        options = {
            k: v
            for k, v in (
                ("status", args.status),
                ("retention", args.retention),
                ("poison_message_handling", args.poison_message_handling),
            )
            if v is not None
        }
        result = await client.create_queue(args.name, **options)
    else:
        result = await client.create_service(args.name, args.queue, args.contract or [])
    _print(f"created {words} {result.get('name', args.name)!r}: {_describe_object(kind, result)}")


async def cmd_alter(client: Client, args: argparse.Namespace) -> None:
    result = await client.alter_queue(args.name, **args.changes)
    _print(f"altered queue {args.name!r}: {_describe_object('queue', result)}")


async def cmd_drop(client: Client, args: argparse.Namespace) -> None:
    kind, words, _ = KINDS[args.kind]
    await client.drop(kind, args.name)
    _print(f"dropped {words} {args.name!r}")


async def cmd_list(client: Client, args: argparse.Namespace) -> None:
    what = args.what
    items: list[dict[str, Any]]
    if what == "conversations":
        items = await client.list_conversations(args.limit)
    else:
        kind = next(kind for kind, _, plural in KINDS.values() if plural == what)
        items = list(await client.list(kind))
    if args.json:
        _print(_json(items))
        return
    if not items:
        _print(f"no {what.replace('-', ' ')}")
        return
    if what == "message-types":
        _print(_table(["NAME", "VALIDATION"], [[d.get("name"), d.get("validation")] for d in items]))
    elif what == "contracts":
        rows = []
        for d in items:
            for i, (mt, sent_by) in enumerate(d.get("messages", {}).items()):
                rows.append([d.get("name") if i == 0 else "", mt, sent_by])
        _print(_table(["NAME", "MESSAGE TYPE", "SENT BY"], rows))
    elif what == "queues":
        rows = [
            [
                d.get("name"),
                _onoff(d.get("status")),
                _onoff(d.get("retention")),
                _onoff(d.get("poison_message_handling")),
            ]
            for d in items
        ]
        _print(_table(["NAME", "STATUS", "RETENTION", "POISON MESSAGE HANDLING"], rows))
    elif what == "services":
        rows = [[d.get("name"), d.get("queue"), ", ".join(d.get("contracts") or []) or "-"] for d in items]
        _print(_table(["NAME", "QUEUE", "CONTRACTS"], rows))
    else:
        rows = [
            [
                d.get("handle"),
                _state_words(str(d.get("state"))),
                "initiator" if d.get("is_initiator") else "target",
                d.get("service"),
                d.get("far_service"),
                d.get("contract"),
            ]
            for d in items
        ]
        _print(_table(["HANDLE", "STATE", "SIDE", "SERVICE", "FAR SERVICE", "CONTRACT"], rows))
        if len(items) >= args.limit:
            _note(f"showing the first {args.limit} conversations; raise --limit to see more")


# --- conversations ------------------------------------------------------------------------------------------


async def cmd_begin(client: Client, args: argparse.Namespace) -> None:
    dialog = await client.begin_dialog(
        args.from_service, args.to_service, args.contract, lifetime=args.lifetime
    )
    _print(dialog.handle)


def _read_body(args: argparse.Namespace) -> bytes:
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
    began = args.handle is None
    if began:
        dialog = await client.begin_dialog(
            args.from_service, args.to_service, args.contract, lifetime=args.lifetime
        )
    else:
        dialog = client.dialog(args.handle)
    try:
        await dialog.send(args.type, args.body_bytes)
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
    _print(dialog.handle)


async def cmd_receive(client: Client, args: argparse.Namespace) -> None:
    batch = await client.receive(args.queue, max_messages=args.max, timeout=args.timeout)
    if not batch:
        _note(f"no message arrived within {args.timeout:g} s on queue {args.queue!r}")
        return
    try:
        for message in batch:
            _print(_message_json(message) if args.json else _message_line(message))
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
        _note(f"rolled back: {len(batch)} message(s) stay in queue {args.queue!r}")
    else:
        await batch.commit()


async def cmd_end(client: Client, args: argparse.Namespace) -> None:
    error = (args.error, args.description) if args.error is not None else None
    await client.dialog(args.handle).end(error=error, cleanup=args.cleanup)
    how = " (cleanup: nothing sent)" if args.cleanup else (f" with error {args.error}" if error else "")
    _print(f"ended conversation {args.handle}{how}")


async def cmd_timer(client: Client, args: argparse.Namespace) -> None:
    await client.dialog(args.handle).begin_timer(args.seconds)
    _print(f"timer set: a DialogTimer message arrives on conversation {args.handle} in {args.seconds:g} s")


async def cmd_conversation(client: Client, args: argparse.Namespace) -> None:
    info = await Dialog(client, args.handle).info()
    if args.json:
        _print(_json(info))
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
        ("state", f"{_state_words(state)}: {STATE_MEANINGS.get(state, '')}".rstrip(": ")),
        ("messages sent", info.get("send_seq")),
        ("messages received", info.get("recv_seq")),
        ("lifetime ends", _when(info.get("expires_at"))),
        ("timer", _when(info.get("timer_at")) if info.get("timer_at") is not None else "none"),
    ]
    error = info.get("error")
    if error:
        rows.append(("error", f"{error[0]}: {error[1]}"))
    if info.get("delayed"):
        rows.append(("delayed", info.get("delayed")))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        _print(f"{key + ':':<{width + 1}} {value}")


async def cmd_status(client: Client, args: argparse.Namespace) -> None:
    st = await client.status()
    if args.json:
        _print(_json(st))
        return
    node = st.get("node", {})
    store = st.get("store", {})
    _print(
        f"node       {node.get('listen', client.url)}  (aiobroker {node.get('version', '?')}, pid {node.get('pid', '?')})"
    )
    uptime = node.get("uptime_seconds")
    _print(f"uptime     {_duration(float(uptime)) if isinstance(uptime, int | float) else '?'}")
    _print(
        f"clients    {node.get('connections', '?')} connection(s), {node.get('requests_served', '?')} request(s)"
        f" served, {node.get('waiting_receives', 0)} receive(s) waiting"
    )
    store_line = f"store      {store.get('store', '?')}"
    if store.get("path"):
        store_line += f" at {store['path']}"
    details = []
    if store.get("durability"):
        details.append(f"durability {store['durability']}")
    if "size" in store:
        details.append(f"{_size(store.get('size'))} + WAL {_size(store.get('wal_size'))}")
    if not store.get("durable", True):
        details.append("nothing kept across restarts")
    if details:
        store_line += f" ({', '.join(details)})"
    _print(store_line)
    _print(f"instance   {st.get('broker_instance', '?')}")
    objects = st.get("objects", {})
    if objects:
        _print("objects    " + ", ".join(f"{n} {k.replace('_', ' ')}(s)" for k, n in objects.items()))
    _print(f"leases     {st.get('leases', 0)} receive lease(s) held")

    _print()
    queues = st.get("queues", [])
    if queues:
        _print("queues")
        rows = [
            [
                "  " + str(q.get("name")),
                q.get("waiting"),
                q.get("locked"),
                q.get("retained"),
                q.get("status"),
                q.get("disabled_reason") or ("-" if q.get("status") == "on" else "status off"),
            ]
            for q in queues
        ]
        _print(_table(["  NAME", "WAITING", "LOCKED", "RETAINED", "STATUS", "DISABLED BECAUSE"], rows))
    else:
        _print("queues: none")

    _print()
    by_state = st.get("conversations_by_state", {})
    _print(f"conversations: {st.get('conversations', sum(by_state.values()))} endpoint(s)")
    codes = list(STATE_NAMES) + [c for c in by_state if c not in STATE_NAMES]
    _print(
        _table(
            ["  STATE", "", "COUNT"], [["  " + c, STATE_NAMES.get(c, "?"), by_state.get(c, 0)] for c in codes]
        )
    )

    _print()
    delayed = st.get("delayed", {})
    if delayed:
        _print("delayed messages (waiting for a route)")
        rows = [
            ["  " + service, d.get("conversations"), d.get("messages"), d.get("reason") or "-"]
            for service, d in delayed.items()
        ]
        _print(_table(["  TO SERVICE", "CONVERSATIONS", "MESSAGES", "REASON"], rows))
    else:
        _print("delayed messages: none")


# --- serve --------------------------------------------------------------------------------------------------


def run_serve(args: argparse.Namespace) -> None:
    from . import serve
    from .config import load_config, parse_listen

    overrides: dict[str, Any] = {
        "data_dir": args.data_dir,
        "store": args.store,
        "durability": args.durability,
        "log_level": args.log_level,
    }
    if args.listen is not None:
        try:
            overrides["listen_host"], overrides["listen_port"] = parse_listen(args.listen)
        except BrokerError as exc:
            exc.message = f"--listen: {exc.message}"
            raise
    config = load_config(Path(args.config) if args.config is not None else None, overrides)
    serve.run(config)


# ================================================================================================== parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def _command(
    subparsers: Any,
    name: str,
    summary: str,
    examples: Sequence[str] = (),
    parents: Sequence[argparse.ArgumentParser] = (),
    details: str = "",
    **kwargs: Any,
) -> argparse.ArgumentParser:
    description = summary[0].upper() + summary[1:] + "."
    if details:
        description += "\n\n" + details
    epilog = None
    if examples:
        epilog = (
            "example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {e}" for e in examples)
        )
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=_Formatter,
        parents=list(parents),
        **kwargs,
    )
    return parser


def _queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", type=_on_off, metavar="on|off", help="receiving allowed (default on)")
    parser.add_argument(
        "--retention",
        type=_on_off,
        metavar="on|off",
        help="keep received messages until their conversation ends (default off)",
    )
    parser.add_argument(
        "--poison-message-handling",
        type=_on_off,
        metavar="on|off",
        help="turn the queue off when one conversation group is rolled back too often in a row"
        " (the node's poison_rollbacks, 5 by default); default on",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="aiobroker: an asyncio message broker with Service Broker's conversations.\n\n"
        "Run a node with 'aiobroker serve'; every other command talks to a running node.",
        epilog="examples:\n"
        "  aiobroker serve --data-dir /var/lib/aiobroker\n"
        "  aiobroker create queue orders\n"
        "  aiobroker send --from //shop/Client --to //shop/Orders --body 'one order'\n"
        "  aiobroker receive orders --timeout 5\n\n"
        "'aiobroker COMMAND --help' describes each command.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    address_help = f"the node to talk to (default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS})"
    parser.add_argument("--address", metavar="URL", help=address_help)
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--address", metavar="URL", default=argparse.SUPPRESS, help=address_help)
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    commands.required = True

    # --- serve
    p = _command(
        commands,
        "serve",
        "run a node in the foreground until SIGINT or SIGTERM",
        [
            "aiobroker serve",
            "aiobroker serve --listen 0.0.0.0:4022 --data-dir /var/lib/aiobroker --durability full",
            "aiobroker serve --config aiobroker.toml",
        ],
        details="Flags override the config file, which overrides the built-in defaults.",
    )
    p.add_argument("--config", metavar="FILE", help="a TOML config file (see aiobroker.config)")
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:4022; port 0 picks one)",
    )
    p.add_argument(
        "--data-dir", metavar="DIR", help="where the sqlite store keeps its files (default ./aiobroker-data)"
    )
    p.add_argument(
        "--store",
        choices=("sqlite", "memory"),
        help="sqlite (durable) or memory (keeps nothing; default sqlite)",
    )
    p.add_argument(
        "--durability",
        choices=("normal", "full"),
        help="normal (survives a process crash) or full (fsync per commit; survives power loss); default normal",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="default info")
    p.set_defaults(run=run_serve)

    # --- create
    p = _command(
        commands,
        "create",
        "create a message type, contract, queue or service",
        parents=[client],
        examples=[
            "aiobroker create queue orders",
            "aiobroker create service //shop/Orders --queue orders --contract DEFAULT",
        ],
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", title="kinds")
    kinds.required = True
    k = _command(
        kinds,
        "message-type",
        "create a message type",
        ["aiobroker create message-type //shop/Order --validation json"],
        parents=[client],
    )
    k.add_argument("name", metavar="NAME")
    k.add_argument(
        "--validation", choices=VALIDATIONS, default="none", help="what a body must be (default none)"
    )
    k = _command(
        kinds,
        "contract",
        "create a contract: which message types each side may send",
        [
            "aiobroker create contract //shop/OrderContract --message //shop/Order=initiator --message //shop/Ack=target"
        ],
        parents=[client],
    )
    k.add_argument("name", metavar="NAME")
    k.add_argument(
        "--message",
        type=_message_rule,
        action="append",
        required=True,
        metavar="TYPE=SENT_BY",
        help=f"a message type and who may send it ({'|'.join(SENT_BY)}); repeat for each type",
    )
    k = _command(
        kinds, "queue", "create a queue", ["aiobroker create queue orders --retention on"], parents=[client]
    )
    k.add_argument("name", metavar="NAME")
    _queue_options(k)
    k = _command(
        kinds,
        "service",
        "create a service: a name for conversations, on a queue",
        ["aiobroker create service //shop/Orders --queue orders --contract //shop/OrderContract"],
        details="A service with no --contract can only begin conversations, not accept them.",
        parents=[client],
    )
    k.add_argument("name", metavar="NAME")
    k.add_argument("--queue", required=True, metavar="Q", help="the queue its messages arrive on")
    k.add_argument(
        "--contract", action="append", metavar="C", help="a contract it accepts as a target; repeatable"
    )
    for sub in kinds.choices.values():
        sub.set_defaults(run=cmd_create)

    # --- alter
    p = _command(
        commands,
        "alter",
        "change a queue's settings",
        parents=[client],
        examples=["aiobroker alter queue orders --status on"],
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", title="kinds")
    kinds.required = True
    k = _command(
        kinds,
        "queue",
        "change a queue's status, retention or poison-message handling",
        [
            "aiobroker alter queue orders --status on   # re-enable after poison-message handling turned it off"
        ],
        parents=[client],
    )
    k.add_argument("name", metavar="NAME")
    _queue_options(k)
    k.set_defaults(run=cmd_alter)

    # --- list
    p = _command(
        commands,
        "list",
        "list message types, contracts, queues, services or conversations",
        parents=[client],
        examples=["aiobroker list queues", "aiobroker list conversations --json"],
    )
    whats = p.add_subparsers(dest="what", metavar="WHAT", title="what")
    whats.required = True
    for word, (_, words, plural) in KINDS.items():
        k = _command(
            whats,
            plural,
            f"list the {words}s",
            [f"aiobroker list {plural} --json"],
            parents=[client, as_json],
            aliases=[word],
        )
        k.set_defaults(what=plural)
    k = _command(
        whats,
        "conversations",
        "list conversation endpoints and their states",
        ["aiobroker list conversations"],
        parents=[client, as_json],
        aliases=["conversation"],
    )
    k.add_argument(
        "--limit", type=_positive_int, default=1000, metavar="N", help="show at most N (default 1000)"
    )
    k.set_defaults(what="conversations")
    for sub in whats.choices.values():
        sub.set_defaults(run=cmd_list)

    # --- drop
    p = _command(
        commands,
        "drop",
        "drop a message type, contract, queue or service",
        parents=[client],
        examples=["aiobroker drop service //shop/Orders"],
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", title="kinds")
    kinds.required = True
    for word, (_, words, _plural) in KINDS.items():
        k = _command(kinds, word, f"drop a {words}", [f"aiobroker drop {word} NAME"], parents=[client])
        k.add_argument("name", metavar="NAME")
        k.set_defaults(run=cmd_drop)

    # --- begin
    p = _command(
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
        "--lifetime", type=_positive_seconds, metavar="SECONDS", help="end it in error after this long"
    )
    p.set_defaults(run=cmd_begin)

    # --- send
    p = _command(
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
        "--lifetime", type=_positive_seconds, metavar="S", help="lifetime of the new conversation"
    )
    p.add_argument("--type", default=DEFAULT, metavar="T", help="message type (default DEFAULT)")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body", metavar="TEXT", help="the body, as UTF-8 text")
    body.add_argument("--file", metavar="PATH", help="read the body from this file")
    p.add_argument("--end", action="store_true", help="end the conversation after sending")
    p.set_defaults(run=cmd_send)

    # --- receive
    p = _command(
        commands,
        "receive",
        "receive messages of one conversation group, print them, and commit",
        ["aiobroker receive orders --timeout 5", "aiobroker receive orders --max 100 --json"],
        details="Text output is one line per message: handle, sequence number, message type, body. With"
        " --rollback the messages go back to the queue (this counts toward poison-message handling).",
        parents=[client],
    )
    p.add_argument("queue", metavar="QUEUE")
    p.add_argument(
        "--max", type=_positive_int, default=100, metavar="N", help="at most N messages (default 100)"
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
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

    # --- end
    p = _command(
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
    p.add_argument("--error", type=_positive_int, metavar="CODE", help="end with an Error of this code (> 0)")
    p.add_argument("--description", metavar="TEXT", help="the Error's description (with --error)")
    p.add_argument("--cleanup", action="store_true", help="remove this side without telling the far side")
    p.set_defaults(run=cmd_end)

    # --- timer
    p = _command(
        commands,
        "timer",
        "set a conversation timer: a DialogTimer message arrives after SECONDS",
        ["aiobroker timer $H 30"],
        parents=[client],
    )
    p.add_argument("handle", metavar="HANDLE")
    p.add_argument("seconds", type=_seconds, metavar="SECONDS")
    p.set_defaults(run=cmd_timer)

    # --- conversation
    p = _command(
        commands,
        "conversation",
        "show one conversation endpoint and its state",
        ["aiobroker conversation $H"],
        parents=[client, as_json],
    )
    p.add_argument("handle", metavar="HANDLE")
    p.set_defaults(run=cmd_conversation)

    # --- status
    p = _command(
        commands,
        "status",
        "show the node, its queues' depth, conversations by state and delayed messages",
        ["aiobroker status", "aiobroker status --json"],
        parents=[client, as_json],
    )
    p.set_defaults(run=cmd_status)
    return parser


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rules argparse cannot say by itself; a breach is a usage error (exit status 2)."""

    def fail(subcommand: str, message: str) -> NoReturn:
        sub = _subparser(parser, subcommand)
        sub.error(message)

    if args.command == "alter":
        args.changes = {
            k: v
            for k, v in (
                ("status", args.status),
                ("retention", args.retention),
                ("poison_message_handling", args.poison_message_handling),
            )
            if v is not None
        }
        if not args.changes:
            fail("alter queue", "nothing to change: give --status, --retention or --poison-message-handling")
    elif args.command == "send":
        if args.handle is not None:
            extra = [
                flag
                for flag, v in (
                    ("--from", args.from_service),
                    ("--to", args.to_service),
                    ("--contract", args.contract),
                    ("--lifetime", args.lifetime),
                )
                if v is not None
            ]
            if extra:
                fail("send", f"{', '.join(extra)} begin(s) a new conversation; not allowed with --handle")
        else:
            missing = [
                flag for flag, v in (("--from", args.from_service), ("--to", args.to_service)) if v is None
            ]
            if missing:
                fail(
                    "send",
                    f"give --handle, or --from and --to to begin a conversation (missing {' and '.join(missing)})",
                )
            if args.contract is None:
                args.contract = DEFAULT
    elif args.command == "end":
        if (args.error is None) != (args.description is None):
            fail("end", "--error CODE and --description TEXT go together")
        if args.error is not None and args.cleanup:
            fail("end", "--cleanup sends nothing, so it takes no --error")


def _subparser(parser: argparse.ArgumentParser, path: str) -> argparse.ArgumentParser:
    for word in path.split():
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


# ==================================================================================================== main


def _broker_error(exc: BaseException) -> BaseException | None:
    """The expected error inside ``exc`` (possibly wrapped in exception groups), or None if it is a bug."""
    if isinstance(exc, BrokerError | CommandError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [_broker_error(e) for e in exc.exceptions]
        if found and all(e is not None for e in found):
            return found[0]
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_usage(parser, args)
    try:
        if args.command == "serve":
            args.run(args)
        else:
            if args.command == "send":
                args.body_bytes = _read_body(args)
            address = args.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
            anyio.run(_with_client, address, args.run, args, backend="asyncio")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader of our output went away (e.g. `| head`); say nothing more on a closed pipe
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        except OSError:
            pass
        return 1
    except (
        BaseException
    ) as exc:  # expected errors are reported in one line; anything else is a bug: re-raised
        expected = _broker_error(exc)
        if expected is None:
            raise
        message = expected.message if isinstance(expected, BrokerError) else str(expected)
        print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
        return 1
    return 0
