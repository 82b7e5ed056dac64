"""``main``: parse the command line, run the command, and turn its outcome into an exit status."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable

import anyio

from ..client import Client, connect, split_url, split_urls
from ..errors import BrokerError, Standby
from .common import (
    ADDRESS_ENV,
    DEFAULT_ADDRESS,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    PROG,
    TOKEN_ENV,
    CommandError,
)
from .conversations import read_body
from .parser import TLS_OPTIONS, build_parser, check_usage

#: A client command; it may return an exit status other than 0 that is not an error (``receive``: nothing arrived).
ClientAction = Callable[[Client, argparse.Namespace], Awaitable[int | None]]


async def _with_client(
    address: str, token: str | None, tls_files: dict[str, str], action: ClientAction, args: argparse.Namespace
) -> int | None:
    # A command that can say something of a standby (status) asks the address given, not the owner it names
    on_standby: Callable[[Standby, argparse.Namespace], int | None] | None = getattr(args, "on_standby", None)
    try:
        async with connect(address, token=token, follow_owner=on_standby is None, **tls_files) as client:
            return await action(client, args)
    except Standby as exc:
        if on_standby is None:
            raise
        return on_standby(exc, args)


def _tls_files(args: argparse.Namespace, address: str) -> dict[str, str]:
    """``ca``, ``cert`` and ``key`` for :func:`connect`: each from its flag, else its environment variable.

    Only a tls:// address uses them: with a tcp:// one a flag is a mistake worth saying, while the environment
    (set once for a shell, maybe for another node) is left unused."""
    scheme, host, port = split_url(split_urls(address)[0])  # several nodes' addresses share one scheme
    flags = {flag[2:]: (flag, getattr(args, flag[2:], None)) for flag, _, _ in TLS_OPTIONS}
    if scheme != "tls":
        given = [flag for flag, value in flags.values() if value]
        if given:
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise CommandError(
                f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for a TLS node, and {address} is plain"
                f" TCP; dial tls://{shown} (a node with [tls] prints its tls:// address at start)"
            )
        return {}
    files: dict[str, str] = {}
    source: dict[str, str] = {}
    for flag, env, _ in TLS_OPTIONS:
        name = flag[2:]
        value = flags[name][1]
        source[name] = flag
        if not value:
            value, source[name] = os.environ.get(env) or None, f"${env}"
        if value:
            _check_file(source[name], value)
            files[name] = os.path.expanduser(value)
    if ("cert" in files) != ("key" in files):
        have, missing = ("cert", "key") if "cert" in files else ("key", "cert")
        raise CommandError(
            f"--cert and --key go together: {source[have]} is given, and no --{missing} (or ${_env(missing)})"
        )
    return files


def _env(name: str) -> str:
    return next(env for flag, env, _ in TLS_OPTIONS if flag == f"--{name}")


def _check_file(source: str, value: str) -> None:
    """A file named by a TLS option must be there before we dial (so the error names the option)."""
    path = os.path.expanduser(value)
    if not os.path.exists(path):
        raise CommandError(f"{source} {value}: no such file")
    if os.path.isdir(path):
        raise CommandError(f"{source} {value}: is a directory, not a PEM file")


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
    """Run one command; the exit statuses are in ``common`` (EXIT_*) and each command's ``--help``."""
    status: int | None = None
    parser = build_parser()
    args = parser.parse_args(argv)
    check_usage(parser, args)
    try:
        if args.command in ("serve", "cert", "store"):  # the commands that talk to no node
            status = args.run(args)
        else:
            if args.command == "send":
                args.body_bytes = read_body(args)
            prepare = getattr(args, "prepare", None)
            if prepare is not None:  # local work before connecting (reading certificate files)
                prepare(args)
            address = args.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
            token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None
            tls_files = _tls_files(args, address)
            status = anyio.run(_with_client, address, token, tls_files, args.run, args, backend="asyncio")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of our output went away (e.g. `| head`); say nothing more on a closed pipe
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        except OSError:
            pass
        return EXIT_ERROR
    except (
        BaseException
    ) as exc:  # expected errors are reported in one line; anything else is a bug: re-raised
        expected = _broker_error(exc)
        if expected is None:
            raise
        message = expected.message if isinstance(expected, BrokerError) else str(expected)
        print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK if status is None else status
