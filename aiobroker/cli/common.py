"""Names every part of the command line shares: the program's name, where it finds a node, how it authenticates
(a token; for a tls:// address the CA, certificate and key files), its own error."""

from __future__ import annotations

PROG = "aiobroker"
ADDRESS_ENV = "AIOBROKER_ADDRESS"
TOKEN_ENV = "AIOBROKER_TOKEN"
#: For a tls:// address: the CA file to trust (else the system's), and this client's certificate and key.
CA_ENV = "AIOBROKER_CA"
CERT_ENV = "AIOBROKER_CERT"
KEY_ENV = "AIOBROKER_KEY"
DEFAULT_ADDRESS = "tcp://127.0.0.1:4022"

# Exit statuses. 1 stays "the node or the command refused" (scripts test for it); "nothing received" is not an
# error, so it gets a status of its own, as grep's "no match" does (grep's 1 is taken by errors here).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # argparse's own
EXIT_NOTHING_RECEIVED = 3
EXIT_INTERRUPTED = 130

#: The ``exit status`` section of ``--help``: for client commands, for ``receive``, for ``serve`` and ``cert``.
EXIT_STATUS_CLIENT = (
    "exit status:\n  0 done, 1 refused by the node or could not reach it (one line on stderr: aiobroker: error: ...),"
    "\n  2 usage error, 130 interrupted"
)
EXIT_STATUS_RECEIVE = (
    "exit status:\n  0 messages received (and committed, or rolled back with --rollback),"
    "\n  3 nothing arrived within --timeout (a note on stderr, nothing on stdout),"
    "\n  1 refused by the node or could not reach it, 2 usage error, 130 interrupted"
)
EXIT_STATUS_SERVE = (
    "exit status:\n  0 stopped cleanly by SIGINT or SIGTERM, 1 could not start (a bad config file, the port in use,"
    "\n  another node on the data directory), 2 usage error, 3 stepped down (another node took the store over)"
)
EXIT_STATUS_LOCAL = "exit status:\n  0 done, 1 failed (one line on stderr: aiobroker: error: ...), 2 usage error"


class CommandError(Exception):
    """A local problem with a command (an unreadable --file): reported like a BrokerError, exit status 1."""
