"""The ``cert`` command: make a key pair and a self-signed certificate for an identity (talks to no node)."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .arguments import add_command, positive_int
from .common import EXIT_STATUS_LOCAL, CommandError
from .render import echo

MAX_DAYS = 36500


def _days(text: str) -> int:
    value = positive_int(text)
    if value > MAX_DAYS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_DAYS} days, got {text!r}")
    return value


def _write(path: Path, text: str, mode: int, *, force: bool) -> None:
    """Write ``text`` to ``path`` with ``mode`` (a new file: never over one that appeared meanwhile, unless
    ``force``)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        # the docs' --out certs/NAME is a folder of its own: make it (only the files' own modes are private)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CommandError(f"{path} exists already; give --force to overwrite it, or another --out") from None
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(f.fileno(), mode)  # an existing file (--force) keeps its mode otherwise
            f.write(text)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from exc


def run_cert_create(args: argparse.Namespace) -> None:
    from ..security import certs

    crt = Path(f"{args.out}.crt")
    key = Path(f"{args.out}.key")
    if not args.force:
        existing = [str(p) for p in (crt, key) if p.exists() or p.is_symlink()]
        if existing:
            raise CommandError(
                f"{' and '.join(existing)} exist{'s' if len(existing) == 1 else ''} already;"
                " give --force to overwrite, or another --out"
            )
    cert_pem, key_pem = certs.create_self_signed(
        args.name, days=args.days, key_type=args.key_type, dns_names=args.dns, ip_addresses=args.ip
    )
    _write(key, key_pem, 0o600, force=args.force)
    _write(crt, cert_pem, 0o644, force=args.force)
    creds = certs.credentials(cert_pem, what=f"certificate {str(crt)!r}")
    kind = "RSA 3072-bit" if args.key_type == "rsa" else "EC P-256"
    until = datetime.fromtimestamp(creds.not_after, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    names = [*args.dns, *args.ip]
    for_names = f" for {', '.join(names)}" if names else ""
    echo(
        f"wrote {crt}: certificate {creds.subject}{for_names}, {kind}, valid until {until},"
        f" fingerprint {creds.fingerprint}"
    )
    echo(f"wrote {key}: its private key (only you can read it; keep it private)")


def add_cert(commands: Any) -> None:
    p = add_command(
        commands,
        "cert",
        "make a key pair and a self-signed certificate for an identity (talks to no node)",
        ["aiobroker cert create --name alice --out certs/alice"],
        exit_status=EXIT_STATUS_LOCAL,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions")
    actions.required = True
    k = add_command(
        actions,
        "create",
        "write a new private key (PREFIX.key) and a self-signed certificate for it (PREFIX.crt)",
        [
            "aiobroker cert create --name alice --out alice",
            "aiobroker cert create --name node --out certs/node --key-type ec --days 730",
            "aiobroker cert create --name node1 --out certs/node1 --dns node1.lan --ip 10.0.0.2  # for [tls]",
        ],
        exit_status=EXIT_STATUS_LOCAL,
        details="The key file is readable by its owner alone. Give the certificate to the nodes that need it"
        " (an identity's certificate, a binding's certificate); keep the key on the node that owns the identity."
        "\n\nFor a node's [tls] certificate, name every address clients and peers dial it by with --dns and --ip:"
        "\na TLS client checks that the certificate names the host it dialled. Clients then trust it with"
        "\n--ca PREFIX.crt (it is its own CA).",
    )
    k.add_argument(
        "--name", required=True, metavar="NAME", help="the certificate's common name (e.g. the identity's name)"
    )
    k.add_argument(
        "--out", required=True, metavar="PREFIX", help="write PREFIX.crt and PREFIX.key (e.g. certs/alice)"
    )
    k.add_argument(
        "--days", type=_days, default=365, metavar="N", help="how long the certificate is valid (default 365)"
    )
    k.add_argument(
        "--key-type",
        choices=("rsa", "ec"),
        default="rsa",
        help="rsa (3072 bits) or ec (P-256; smaller and faster); default rsa",
    )
    k.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the certificate is for (a subject alternative name); repeat for several",
    )
    k.add_argument(
        "--ip",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="an IP address the certificate is for (a subject alternative name); repeat for several",
    )
    k.add_argument("--force", action="store_true", help="overwrite PREFIX.crt and PREFIX.key if they exist")
    k.set_defaults(run=run_cert_create)
