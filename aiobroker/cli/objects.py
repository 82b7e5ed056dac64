"""The catalog's objects on the command line: the kinds and how a line describes one, and the ``alter`` and
``drop`` commands. ``create`` is in ``create.py``, ``list`` in ``listing.py``; both describe objects with
this module's words."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..client import Client
from ..durations import duration
from . import arguments
from .arguments import add_command
from .render import echo, onoff, to_json, when

#: CLI word → (catalog kind, words for messages, plural used by ``list``)
KINDS = {
    "message-type": ("message_type", "message type", "message-types"),
    "contract": ("contract", "contract", "contracts"),
    "queue": ("queue", "queue", "queues"),
    "service": ("service", "service", "services"),
    "route": ("route", "route", "routes"),
    "identity": ("identity", "identity", "identities"),
    "binding": ("binding", "binding", "bindings"),
}
KIND_WORDS = "message type, contract, queue, service, route, identity or binding"

# ================================================================================================ commands


def describe_object(kind: str, d: dict[str, Any]) -> str:
    if kind == "message_type":
        return f"validation {d.get('validation')}"
    if kind == "contract":
        return ", ".join(f"{t} sent by {s}" for t, s in d.get("messages", {}).items())
    if kind == "queue":
        return (
            f"status {onoff(d.get('status'))}, retention {onoff(d.get('retention'))},"
            f" poison message handling {onoff(d.get('poison_message_handling'))},"
            f" max messages {d.get('max_messages') or 'none'}, max bytes {d.get('max_bytes') or 'none'}"
        )
    if kind == "service":
        contracts = d.get("contracts") or []
        accepts = ", ".join(contracts) if contracts else "no contract (it can only begin conversations)"
        return f"on queue {d.get('queue')}, accepts {accepts}"
    if kind == "route":
        return (
            f"service {d.get('service_name') or '(any)'}, instance {d.get('broker_instance') or '(any)'}"
            f" -> {d.get('address')}, weight {d.get('weight')}, {expiry_words(d.get('expires_at'))}"
        )
    if kind == "identity":
        return (
            f"{certificate_words(d)}, private key {'yes' if d.get('has_private_key') else 'no'},"
            f" {d.get('tokens', 0)} token(s), send {names_words(d.get('send'))},"
            f" receive {names_words(d.get('receive'))}, admin {'yes' if d.get('admin') else 'no'}"
            f"{', may link as a peer node' if d.get('peer') else ''}"
        )
    if kind == "binding":
        return (
            f"to service {d.get('to_service')}, signed by {signer_words(d)}, remote owner's {certificate_words(d)}"
        )
    return to_json(d, indent=None)


def certificate_words(d: dict[str, Any]) -> str:
    """A certificate as ``list`` shows it: subject, fingerprint, expiry (never the PEM)."""
    if d.get("fingerprint") is None:
        return "no certificate"
    return f"certificate {d.get('subject') or '(no subject)'} (SHA-256 {d.get('fingerprint')}, expires {when(d.get('not_after'))})"


def names_words(names: Any) -> str:
    if not names:
        return "-"
    return "any" if "*" in names else ", ".join(str(n) for n in names)


def signer_words(d: dict[str, Any]) -> str:
    if d.get("anonymous"):
        return "nobody (anonymous)"
    return str(d.get("identity") or "the node's identity")


def short_fingerprint(fp: Any) -> str:
    return f"{fp[:16]}..." if isinstance(fp, str) else "-"


def expiry_words(expires_at: Any) -> str:
    if expires_at is None:
        return "no expiry"
    left = float(expires_at) - time.time()
    return f"expires in {duration(left)}" if left > 0 else f"expired {duration(-left)} ago (ignored for new routing)"


async def cmd_alter(client: Client, args: argparse.Namespace) -> None:
    if args.kind == "route":
        result = await client.alter_route(args.name, **args.changes)
        echo(f"altered route {args.name!r}: {describe_object('route', result)}")
        return
    result = await client.alter_queue(args.name, **args.changes)
    echo(f"altered queue {args.name!r}: {describe_object('queue', result)}")


async def cmd_drop(client: Client, args: argparse.Namespace) -> None:
    kind, words, _ = KINDS[args.kind]
    await client.drop(kind, args.name)
    echo(f"dropped {words} {args.name!r}")


# ================================================================================================= parsers


def queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", type=arguments.on_off, metavar="on|off", help="receiving allowed (default on)")
    parser.add_argument(
        "--retention",
        type=arguments.on_off,
        metavar="on|off",
        help="keep received messages until their conversation ends (default off)",
    )
    parser.add_argument(
        "--poison-message-handling",
        type=arguments.on_off,
        metavar="on|off",
        help="turn the queue off when one conversation group is rolled back too often in a row"
        " (the node's poison_rollbacks, 5 by default); default on",
    )
    parser.add_argument(
        "--max-messages",
        type=arguments.bound,
        metavar="N|none",
        help="the most messages the queue holds (waiting, locked, retained); a send past it is refused (default none)",
    )
    parser.add_argument(
        "--max-bytes",
        type=arguments.bound,
        metavar="N|none",
        help="the most bytes of message bodies the queue holds; a send past it is refused (default none)",
    )


def queue_switches(args: argparse.Namespace) -> dict[str, Any]:
    """The queue switches given on the command line (``create queue`` and ``alter queue``), by their field names."""
    given = {
        "status": args.status,
        "retention": args.retention,
        "poison_message_handling": args.poison_message_handling,
        "max_messages": args.max_messages,
        "max_bytes": args.max_bytes,
    }
    return {k: v for k, v in given.items() if v is not None}


def add_alter(commands: Any, client: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "alter",
        "change a queue's settings or a route",
        parents=[client],
        examples=["aiobroker alter queue orders --status on", "aiobroker alter route to-orders --to tcp://10.0.0.3:4022"],
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", title="kinds")
    kinds.required = True
    k = add_command(
        kinds,
        "queue",
        "change a queue's status, retention, poison-message handling or bounds",
        [
            "aiobroker alter queue orders --status on   # re-enable after poison-message handling turned it off",
            "aiobroker alter queue orders --max-messages 100000   # refuse sends once it holds that many",
        ],
        parents=[client],
    )
    k.add_argument("name", metavar="NAME")
    queue_options(k)
    k.set_defaults(run=cmd_alter)
    k = add_command(
        kinds,
        "route",
        "change a route's address, service, instance, weight or lifetime",
        ["aiobroker alter route to-orders --to tcp://10.0.0.3:4022 --weight 2"],
        parents=[client],
    )
    k.add_argument("name", metavar="NAME")
    k.add_argument("--to", dest="route_address", metavar="ADDRESS", help="the new address: tcp://host:port, LOCAL or TRANSPORT")
    k.add_argument("--service-name", "--service", dest="service", metavar="S", help="the service it is for")
    k.add_argument("--broker-instance", metavar="I", help="the broker instance it names")
    k.add_argument("--weight", type=arguments.positive_int, metavar="W", help="load share")
    k.add_argument("--lifetime", type=arguments.seconds, metavar="SECONDS", help="expires this long from now")
    k.set_defaults(run=cmd_alter)


def add_drop(commands: Any, client: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "drop",
        f"drop a {KIND_WORDS}",
        parents=[client],
        examples=["aiobroker drop service //shop/Orders", "aiobroker drop identity alice"],
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", title="kinds")
    kinds.required = True
    for word, (_, words, _plural) in KINDS.items():
        article = "an" if words[0] in "aeiou" else "a"
        k = add_command(kinds, word, f"drop {article} {words}", [f"aiobroker drop {word} NAME"], parents=[client])
        k.add_argument("name", metavar="NAME")
        k.set_defaults(run=cmd_drop)
