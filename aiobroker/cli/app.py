"""``main``: parse the command line, run the command, and turn its outcome into an exit status."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable

import anyio

from ..client import Client, connect
from ..errors import BrokerError
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
from .parser import build_parser, check_usage

#: A client command; it may return an exit status other than 0 that is not an error (``receive``: nothing arrived).
ClientAction = Callable[[Client, argparse.Namespace], Awaitable[int | None]]


async def _with_client(
    address: str, token: str | None, action: ClientAction, args: argparse.Namespace
) -> int | None:
    async with connect(address, token=token) as client:
        return await action(client, args)


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
        if args.command in ("serve", "cert"):  # the commands that talk to no node
            args.run(args)
        else:
            if args.command == "send":
                args.body_bytes = read_body(args)
            prepare = getattr(args, "prepare", None)
            if prepare is not None:  # local work before connecting (reading certificate files)
                prepare(args)
            address = args.address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
            token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None
            status = anyio.run(_with_client, address, token, args.run, args, backend="asyncio")
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
