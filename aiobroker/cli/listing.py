"""The ``list`` command: the objects of one kind, or the conversations, as a table or JSON."""

from __future__ import annotations

import argparse
from typing import Any

from ..client import Client
from . import arguments
from .arguments import add_command
from .objects import KINDS, expiry_words, names_words, short_fingerprint, signer_words
from .render import echo, note, onoff, state_words, table, to_json, when

# ================================================================================================ commands


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
                d.get("max_messages") or "-",
                d.get("max_bytes") or "-",
            ]
            for d in items
        ]
        echo(table(["NAME", "STATUS", "RETENTION", "POISON MESSAGE HANDLING", "MAX MESSAGES", "MAX BYTES"], rows))
    elif what == "services":
        rows = [
            [d.get("name"), d.get("queue"), ", ".join(d.get("contracts") or []) or "-", d.get("owner") or "-"]
            for d in items
        ]
        echo(table(["NAME", "QUEUE", "CONTRACTS", "OWNER"], rows))
    elif what == "identities":  # never a key or a token: list shows whether there is one
        rows = [
            [
                d.get("name"),
                "yes" if d.get("admin") else "no",
                names_words(d.get("send")),
                names_words(d.get("receive")),
                d.get("tokens", 0),
                "yes" if d.get("has_private_key") else "no",
                d.get("subject") or "-",
                short_fingerprint(d.get("fingerprint")),
                when(d.get("not_after")) if d.get("not_after") is not None else "-",
            ]
            for d in items
        ]
        echo(
            table(
                ["NAME", "ADMIN", "SEND", "RECEIVE", "TOKENS", "KEY", "SUBJECT", "FINGERPRINT", "EXPIRES"], rows
            )
        )
    elif what == "bindings":
        rows = [
            [
                d.get("name"),
                d.get("to_service"),
                signer_words(d),
                d.get("subject") or "-",
                short_fingerprint(d.get("fingerprint")),
                when(d.get("not_after")) if d.get("not_after") is not None else "-",
                d.get("origin"),
                expiry_words(d.get("expires_at")),
            ]
            for d in items
        ]
        echo(
            table(
                ["NAME", "TO SERVICE", "SIGNED BY", "SUBJECT", "FINGERPRINT", "CERT EXPIRES", "ORIGIN", "LIFETIME"],
                rows,
            )
        )
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


def add_list(commands: Any, client: argparse.ArgumentParser, as_json: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "list",
        "list message types, contracts, queues, services, routes, identities, bindings or conversations",
        parents=[client],
        examples=["aiobroker list queues", "aiobroker list identities", "aiobroker list conversations --json"],
    )
    whats = p.add_subparsers(dest="what", metavar="WHAT", title="what")
    whats.required = True
    for word, (kind, _words, plural) in KINDS.items():
        k = add_command(
            whats,
            plural,
            f"list the {plural.replace('-', ' ')}"
            + (" (never a key or a token)" if kind in ("identity", "binding") else ""),
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

