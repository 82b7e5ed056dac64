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


class CommandError(Exception):
    """A local problem with a command (an unreadable --file): reported like a BrokerError, exit status 1."""
