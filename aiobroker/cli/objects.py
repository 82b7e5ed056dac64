"""The catalog commands: ``create``, ``alter``, ``list`` and ``drop`` of message types, contracts, queues and
services (``list conversations`` too, as it shares the listing)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..client import Client
from ..core.catalog import SENT_BY, VALIDATIONS
from . import arguments
from .arguments import add_command
from .render import echo, note, onoff, state_words, table, to_json

#: CLI word → (catalog kind, words for messages, plural used by ``list``)
KINDS = {
    "message-type": ("message_type", "message type", "message-types"),
    "contract": ("contract", "contract", "contracts"),
    "queue": ("queue", "queue", "queues"),
    "service": ("service", "service", "services"),
    "route": ("route", "route", "routes"),
}

# ================================================================================================ commands


def describe_object(kind: str, d: dict[str, Any]) -> str:
    if kind == "message_type":
        return f"validation {d.get('validation')}"
    if kind == "contract":
        return ", ".join(f"{t} sent by {s}" for t, s in d.get("messages", {}).items())
    if kind == "queue":
        return (
            f"status {onoff(d.get('status'))}, retention {onoff(d.get('retention'))},"
            f" poison message handling {onoff(d.get('poison_message_handling'))}"
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
    return to_json(d, indent=None)


def expiry_words(expires_at: Any) -> str:
    if expires_at is None:
        return "no expiry"
    left = float(expires_at) - time.time()
    return f"expires in {left:.0f}s" if left > 0 else f"expired {-left:.0f}s ago (ignored for new routing)"


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
    elif kind == "route":
        result = await client.create_route(
            args.name,
            args.route_address,
            service_name=args.service,
            broker_instance=args.broker_instance,
            lifetime=args.lifetime,
            weight=args.weight,
        )
    else:
        result = await client.create_service(args.name, args.queue, args.contract or [])
    echo(f"created {words} {result.get('name', args.name)!r}: {describe_object(kind, result)}")


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


async def cmd_list(client: Client, args: argparse.Namespace) -> None:
    what = args.what
    items: list[dict[str, Any]]
    if what == "conversations":
        items = await client.list_conversations(args.limit)
    else:
        kind = next(kind for kind, _, plural in KINDS.values() if plural == what)
        items = list(await client.list(kind))
    if args.json:
        echo(to_json(items))
        return
    if not items:
        echo(f"no {what.replace('-', ' ')}")
        return
    if what == "message-types":
        echo(table(["NAME", "VALIDATION"], [[d.get("name"), d.get("validation")] for d in items]))
    elif what == "contracts":
        rows = []
        for d in items:
            for i, (mt, sent_by) in enumerate(d.get("messages", {}).items()):
                rows.append([d.get("name") if i == 0 else "", mt, sent_by])
        echo(table(["NAME", "MESSAGE TYPE", "SENT BY"], rows))
    elif what == "queues":
        rows = [
            [
                d.get("name"),
                onoff(d.get("status")),
                onoff(d.get("retention")),
                onoff(d.get("poison_message_handling")),
            ]
            for d in items
        ]
        echo(table(["NAME", "STATUS", "RETENTION", "POISON MESSAGE HANDLING"], rows))
    elif what == "services":
        rows = [[d.get("name"), d.get("queue"), ", ".join(d.get("contracts") or []) or "-"] for d in items]
        echo(table(["NAME", "QUEUE", "CONTRACTS"], rows))
    elif what == "routes":
        rows = [
            [
                d.get("name"),
                d.get("service_name") or "(any)",
                d.get("broker_instance") or "(any)",
                d.get("address"),
                d.get("weight"),
                expiry_words(d.get("expires_at")),
                d.get("origin"),
            ]
            for d in items
        ]
        echo(table(["NAME", "SERVICE", "INSTANCE", "ADDRESS", "WEIGHT", "LIFETIME", "ORIGIN"], rows))
    else:
        rows = [
            [
                d.get("handle"),
                state_words(str(d.get("state"))),
                "initiator" if d.get("is_initiator") else "target",
                d.get("service"),
                d.get("far_service"),
                d.get("contract"),
            ]
            for d in items
        ]
        echo(table(["HANDLE", "STATE", "SIDE", "SERVICE", "FAR SERVICE", "CONTRACT"], rows))
        if len(items) >= args.limit:
            note(f"showing the first {args.limit} conversations; raise --limit to see more")


# ================================================================================================= parsers


def _queue_options(parser: argparse.ArgumentParser) -> None:
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


def add_create(commands: Any, client: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "create",
        "create a message type, contract, queue, service or route",
        parents=[client],
        examples=[
            "aiobroker create queue orders",
            "aiobroker create service //shop/Orders --queue orders --contract DEFAULT",
        ],
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", title="kinds")
    kinds.required = True
    k = add_command(
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
    k = add_command(
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
        type=arguments.message_rule,
        action="append",
        required=True,
        metavar="TYPE=SENT_BY",
        help=f"a message type and who may send it ({'|'.join(SENT_BY)}); repeat for each type",
    )
    k = add_command(
        kinds, "queue", "create a queue", ["aiobroker create queue orders --retention on"], parents=[client]
    )
    k.add_argument("name", metavar="NAME")
    _queue_options(k)
    k = add_command(
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
    k = add_command(
        kinds,
        "route",
        "create a route: where messages for a service (or any service) go",
        [
            "aiobroker create route to-orders tcp://10.0.0.2:4022 --service //shop/Orders",
            "aiobroker create route everything-else tcp://hub:4022   # a wildcard route",
        ],
        details="ADDRESS is tcp://host:port, LOCAL (this node) or TRANSPORT (the address is the start of the"
        " service name). Routing picks, in order: routes naming the service and the conversation's instance,"
        " the service alone, the service with some instance, then wildcard routes.",
        parents=[client],
    )
    k.add_argument("name", metavar="NAME")
    k.add_argument("route_address", metavar="ADDRESS", help="tcp://host:port, LOCAL or TRANSPORT")
    k.add_argument("--service", metavar="S", help="the service it is for (default: any service)")
    k.add_argument("--broker-instance", metavar="I", help="the broker instance it names (default: any)")
    k.add_argument("--lifetime", type=arguments.seconds, metavar="SECONDS", help="expires after this (default: never)")
    k.add_argument("--weight", type=arguments.positive_int, default=1, metavar="W", help="load share (default 1)")
    for sub in kinds.choices.values():
        sub.set_defaults(run=cmd_create)


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
        "change a queue's status, retention or poison-message handling",
        [
            "aiobroker alter queue orders --status on   # re-enable after poison-message handling turned it off"
        ],
        parents=[client],
    )
    k.add_argument("name", metavar="NAME")
    _queue_options(k)
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
    k.add_argument("--service", metavar="S", help="the service it is for")
    k.add_argument("--broker-instance", metavar="I", help="the broker instance it names")
    k.add_argument("--weight", type=arguments.positive_int, metavar="W", help="load share")
    k.add_argument("--lifetime", type=arguments.seconds, metavar="SECONDS", help="expires this long from now")
    k.set_defaults(run=cmd_alter)


def add_list(commands: Any, client: argparse.ArgumentParser, as_json: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "list",
        "list message types, contracts, queues, services, routes or conversations",
        parents=[client],
        examples=["aiobroker list queues", "aiobroker list conversations --json"],
    )
    whats = p.add_subparsers(dest="what", metavar="WHAT", title="what")
    whats.required = True
    for word, (_, words, plural) in KINDS.items():
        k = add_command(
            whats,
            plural,
            f"list the {words}s",
            [f"aiobroker list {plural} --json"],
            parents=[client, as_json],
            aliases=[word],
        )
        k.set_defaults(what=plural)
    k = add_command(
        whats,
        "conversations",
        "list conversation endpoints and their states",
        ["aiobroker list conversations"],
        parents=[client, as_json],
        aliases=["conversation"],
    )
    k.add_argument(
        "--limit", type=arguments.positive_int, default=1000, metavar="N", help="show at most N (default 1000)"
    )
    k.set_defaults(what="conversations")
    for sub in whats.choices.values():
        sub.set_defaults(run=cmd_list)


def add_drop(commands: Any, client: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "drop",
        "drop a message type, contract, queue, service or route",
        parents=[client],
        examples=["aiobroker drop service //shop/Orders"],
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", title="kinds")
    kinds.required = True
    for word, (_, words, _plural) in KINDS.items():
        k = add_command(kinds, word, f"drop a {words}", [f"aiobroker drop {word} NAME"], parents=[client])
        k.add_argument("name", metavar="NAME")
        k.set_defaults(run=cmd_drop)
