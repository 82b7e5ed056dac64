"""Names every part of the command line shares: the program's name, where it finds a node, how it authenticates,
its own error."""

from __future__ import annotations

PROG = "aiobroker"
ADDRESS_ENV = "AIOBROKER_ADDRESS"
TOKEN_ENV = "AIOBROKER_TOKEN"
DEFAULT_ADDRESS = "tcp://127.0.0.1:4022"


class CommandError(Exception):
    """A local problem with a command (an unreadable --file): reported like a BrokerError, exit status 1."""
