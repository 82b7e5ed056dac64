"""The argparse tree: the top-level parser, the options every client command shares, the commands in the order
``--help`` lists them, and the usage rules argparse cannot say by itself."""

from __future__ import annotations

import argparse
from typing import NoReturn

from ..version import __version__
from ..core.catalog import DEFAULT
from . import bench, cert, conversations, create, listing, objects, receive, serve, status, store
from .arguments import Formatter
from .common import ADDRESS_ENV, CA_ENV, CERT_ENV, DEFAULT_ADDRESS, KEY_ENV, PROG, TOKEN_ENV

#: The TLS options of every command that talks to a node: (flag, environment variable, help).
TLS_OPTIONS = (
    ("--ca", CA_ENV, "for a tls:// address: the PEM file of the CA to trust, or the node's self-signed certificate"
     f" (default: ${CA_ENV}, else the system's trust store)"),
    ("--cert", CERT_ENV, "for a tls:// address: this client's certificate, PEM, for a node that requires one; with"
     f" --key (default: ${CERT_ENV})"),
    ("--key", KEY_ENV, f"the private key of --cert, PEM (default: ${KEY_ENV})"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="aiobroker: an asyncio message broker with Service Broker's conversations.\n\n"
        "Run a node with 'aiobroker serve'; 'aiobroker cert create' makes a key pair;\nevery other command talks to a running node.",
        epilog="examples:\n"
        "  aiobroker serve --data-dir /var/lib/aiobroker\n"
        "  aiobroker create queue orders\n"
        "  aiobroker send --from //shop/Client --to //shop/Orders --body 'one order'\n"
        "  aiobroker receive orders --timeout 5\n"
        "  AIOBROKER_TOKEN=... aiobroker list queues   # a node with authorization on\n"
        "  aiobroker --address tls://node1:4022 --ca ca.crt status   # a node with [tls]\n\n"
        "exit status:\n"
        "  0 done, 1 error (one line on stderr: aiobroker: error: ...), 2 usage error,\n"
        "  3 receive: nothing arrived within --timeout, 130 interrupted\n\n"
        "'aiobroker COMMAND --help' describes each command.",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    address_help = (
        f"the node to talk to: tcp://host:port, or tls://host:port for a node with [tls]; several, an owner and its"
        f" standbys, with commas: tcp://a:4022,b:4022 (default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS})"
    )
    parser.add_argument("--address", metavar="URL", help=address_help)
    token_help = (
        f"authenticate as the identity holding this token, on a node with authorization on (default:"
        f" ${TOKEN_ENV}; none: public). The environment keeps it out of the process list"
    )
    parser.add_argument("--token", metavar="TOKEN", help=token_help)
    for flag, _, text in TLS_OPTIONS:
        parser.add_argument(flag, metavar="FILE", help=text)
    # the same options after the command word; SUPPRESS keeps a value given before it
    address_only = argparse.ArgumentParser(add_help=False)
    address_only.add_argument("--address", metavar="URL", default=argparse.SUPPRESS, help=address_help)
    for flag, _, text in TLS_OPTIONS:
        address_only.add_argument(flag, metavar="FILE", default=argparse.SUPPRESS, help=text)
    client = argparse.ArgumentParser(add_help=False, parents=[address_only])
    client.add_argument("--token", metavar="TOKEN", default=argparse.SUPPRESS, help=token_help)
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    commands.required = True
    serve.add_serve(commands)
    cert.add_cert(commands)
    store.add_store(commands)
    create.add_create(commands, client, address_only)
    objects.add_alter(commands, client)
    listing.add_list(commands, client, as_json)
    objects.add_drop(commands, client)
    conversations.add_begin(commands, client)
    conversations.add_send(commands, client)
    receive.add_receive(commands, client)
    conversations.add_end(commands, client)
    conversations.add_timer(commands, client)
    conversations.add_conversation(commands, client, as_json)
    status.add_status(commands, client, as_json)
    bench.add_bench(commands, client)
    status.add_diagnose(commands, client, as_json)
    return parser


def check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rules argparse cannot say by itself; a breach is a usage error (exit status 2)."""

    def fail(subcommand: str, message: str) -> NoReturn:
        sub = _subparser(parser, subcommand)
        sub.error(message)

    if args.command == "alter" and args.kind == "route":
        args.changes = {
            k: v
            for k, v in (
                ("address", args.route_address),
                ("service_name", args.service),
                ("broker_instance", args.broker_instance),
                ("weight", args.weight),
                ("lifetime", args.lifetime),
            )
            if v is not None
        }
        if not args.changes:
            fail("alter route", "nothing to change: give --to, --service-name, --broker-instance, --weight or --lifetime")
    elif args.command == "alter":
        args.changes = objects.queue_switches(args)
        if not args.changes:
            fail(
                "alter queue",
                "nothing to change: give --status, --retention, --poison-message-handling, --max-messages or --max-bytes",
            )
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
