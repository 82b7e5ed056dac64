"""The catalog commands: ``create``, ``alter``, ``list`` and ``drop`` of message types, contracts, queues,
services, routes, identities and bindings (``list conversations`` too, as it shares the listing)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..client import Client
from ..core.catalog import SENT_BY, VALIDATIONS
from ..durations import duration
from ..errors import SecurityError
from ..security import certs
from . import arguments
from .arguments import add_command
from .common import TOKEN_ENV, CommandError
from .render import echo, note, onoff, state_words, table, to_json, when

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


def read_pem_file(option: str, file: str | None) -> str | None:
    """The PEM text of a --certificate or --private-key file; a problem is a one-line CommandError."""
    if file is None:
        return None
    try:
        return certs.read_pem_file(Path(file))
    except FileNotFoundError:
        raise CommandError(f"{option} {file}: no such file") from None
    except SecurityError as exc:
        raise CommandError(f"{option} {file}: {exc.message}") from None


def read_security_files(args: argparse.Namespace) -> None:
    """Read the files ``create identity`` and ``create binding`` send, before connecting."""
    args.certificate_pem = read_pem_file("--certificate", args.certificate)
    args.private_key_pem = read_pem_file("--private-key", getattr(args, "private_key", None))


def expiry_words(expires_at: Any) -> str:
    if expires_at is None:
        return "no expiry"
    left = float(expires_at) - time.time()
    return f"expires in {duration(left)}" if left > 0 else f"expired {duration(-left)} ago (ignored for new routing)"


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
    elif kind == "identity":
        result = await client.create_identity(
            args.name,
            certificate=args.certificate_pem,
            private_key=args.private_key_pem,
            tokens=args.tokens or [],
            send=args.send or [],
            receive=args.receive or [],
            admin=args.admin,
            peer=args.peer,
        )
    elif kind == "binding":
        assert args.certificate_pem is not None  # --certificate is required
        result = await client.create_binding(
            args.name,
            to_service=args.to_service,
            certificate=args.certificate_pem,
            identity=args.identity,
            anonymous=args.anonymous,
        )
    else:
        result = await client.create_service(args.name, args.queue, args.contract or [], owner=args.owner)
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


def add_create(commands: Any, client: argparse.ArgumentParser, address_only: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "create",
        f"create a {KIND_WORDS}",
        parents=[client],
        examples=[
            "aiobroker create queue orders",
            "aiobroker create service //shop/Orders --queue orders --contract DEFAULT",
            "aiobroker create identity alice --certificate alice.crt --token \"$ALICE_TOKEN\" --send //shop/Orders",
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
    k.add_argument(
        "--owner",
        metavar="IDENTITY",
        help="the identity (with a private key) whose key reads secured conversations to it"
        " (default: the node's [security] identity)",
    )
    k = add_command(
        kinds,
        "route",
        "create a route: where messages for a service (or any service) go",
        [
            "aiobroker create route to-orders tcp://10.0.0.2:4022 --service-name //shop/Orders",
            "aiobroker create route everything-else tcp://hub:4022   # a wildcard route",
        ],
        details="ADDRESS is tcp://host:port, LOCAL (this node) or TRANSPORT (the address is the start of the"
        " service name). Routing picks, in order: routes naming the service and the conversation's instance,"
        " the service alone, the service with some instance, then wildcard routes.",
        parents=[client],
    )
    k.add_argument("name", metavar="NAME")
    k.add_argument("route_address", metavar="ADDRESS", help="tcp://host:port, LOCAL or TRANSPORT")
    k.add_argument(
        "--service-name",
        "--service",
        dest="service",
        metavar="S",
        help="the service it is for (default: any service); service_name in a config file and in list routes",
    )
    k.add_argument("--broker-instance", metavar="I", help="the broker instance it names (default: any)")
    k.add_argument("--lifetime", type=arguments.seconds, metavar="SECONDS", help="expires after this (default: never)")
    k.add_argument("--weight", type=arguments.positive_int, default=1, metavar="W", help="load share (default 1)")
    _add_create_identity(kinds, address_only)
    _add_create_binding(kinds, client)
    for sub in kinds.choices.values():
        sub.set_defaults(run=cmd_create)


def _add_create_identity(kinds: Any, address_only: argparse.ArgumentParser) -> None:
    k = add_command(
        kinds,
        "identity",
        "create an identity: who a client, service owner or remote user is, and what it may do",
        [
            "aiobroker create identity alice --certificate alice.crt --token \"$ALICE_TOKEN\" --send //shop/Orders"
            " --receive replies",
            "aiobroker create identity node --certificate node.crt --private-key node.key",
            "aiobroker create identity ops --token \"$OPS_TOKEN\" --admin",
            "AIOBROKER_TOKEN=\"$ADMIN_TOKEN\" aiobroker create identity public --send //shop/Status"
            "   # rights for clients that give no token",
        ],
        details="Files are read here and sent as PEM text. A certificate alone identifies a remote user or a TLS"
        " client (by its fingerprint); with its private key the identity can own services (create service"
        " --owner) and sign bindings. The node keeps only the SHA-256 of each token, and list identities never"
        " shows a key or a token. 'aiobroker cert create --name NAME --out PREFIX' makes a key pair and a"
        " self-signed certificate.\n\n"
        "Here --token is a token the new identity may authenticate with. To authenticate this command itself,"
        f" set ${TOKEN_ENV} or put --token before the command: aiobroker --token ADMIN_TOKEN create identity ...",
        parents=[address_only],
    )
    k.add_argument("name", metavar="NAME")
    k.add_argument("--certificate", metavar="FILE", help="its X.509 certificate, PEM (RSA >= 2048 bits or EC)")
    k.add_argument(
        "--private-key", metavar="FILE", help="its private key, PEM, unencrypted (a local identity only)"
    )
    k.add_argument(
        "--token",
        dest="tokens",
        action="append",
        metavar="T",
        help="a bearer token it may authenticate with (at least 8 characters); repeatable",
    )
    k.add_argument(
        "--send", action="append", metavar="SERVICE", help='a service it may send to ("*": any); repeatable'
    )
    k.add_argument(
        "--receive", action="append", metavar="QUEUE", help='a queue it may receive from ("*": any); repeatable'
    )
    k.add_argument("--admin", action="store_true", help="it may create, alter and drop objects")
    k.add_argument(
        "--peer", action="store_true",
        help="another node presenting it (its [federation] link_token or TLS certificate) may link to this one",
    )  # fmt: skip
    k.set_defaults(prepare=read_security_files)


def _add_create_binding(kinds: Any, client: argparse.ArgumentParser) -> None:
    k = add_command(
        kinds,
        "binding",
        "create a remote service binding: how to secure conversations to a service on another node",
        [
            "aiobroker create binding to-orders --to-service //shop/Orders --certificate orders-owner.crt",
            "aiobroker create binding to-orders --to-service //shop/Orders --certificate orders-owner.crt"
            " --identity shop",
            "aiobroker create binding to-news --to-service //news/Feed --certificate feed-owner.crt --anonymous",
        ],
        details="Conversations to the service get a session key wrapped for the remote owner's certificate"
        " (read here and sent as PEM), signed by the local identity (--identity, else the node's [security]"
        " identity), which needs a private key. With --anonymous nothing is signed and the target sees 'public'."
        " One binding per service.",
        parents=[client],
    )
    k.add_argument("name", metavar="NAME")
    k.add_argument("--to-service", required=True, metavar="S", help="the remote service it is for")
    k.add_argument(
        "--certificate", required=True, metavar="FILE", help="the remote service owner's certificate, PEM"
    )
    k.add_argument(
        "--identity", metavar="I", help="the local identity that signs (default: the node's [security] identity)"
    )
    k.add_argument("--anonymous", action="store_true", help="sign nothing: the target does not learn who began it")
    k.set_defaults(prepare=read_security_files)


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
    k.add_argument("--service-name", "--service", dest="service", metavar="S", help="the service it is for")
    k.add_argument("--broker-instance", metavar="I", help="the broker instance it names")
    k.add_argument("--weight", type=arguments.positive_int, metavar="W", help="load share")
    k.add_argument("--lifetime", type=arguments.seconds, metavar="SECONDS", help="expires this long from now")
    k.set_defaults(run=cmd_alter)


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
