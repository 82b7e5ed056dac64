"""The ``create`` command, one sub-command per kind of object (message type, contract, queue, service, route,
identity, binding)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..client import Client
from ..core.catalog import SENT_BY, VALIDATIONS
from ..errors import SecurityError
from ..security import certs
from . import arguments
from .arguments import add_command
from .common import TOKEN_ENV, CommandError
from .objects import KIND_WORDS, KINDS, describe_object, queue_options, queue_switches
from .render import echo

# ================================================================================================ commands


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
        options = queue_switches(args)
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


# ================================================================================================= parsers


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
    queue_options(k)
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

