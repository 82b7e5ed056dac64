"""One error tree, rooted at :class:`BrokerError`.

Every error has a stable ``code`` (a short string that travels on the wire and that programs may match on) and a
message that says what was wrong and, where there is something to do, what to do next. Foreign errors (OSError,
msgpack, sqlite3) are translated at the boundary where they arise and chained with ``raise ... from``.

An error raised by the node for a client request travels back as ``(code, message)`` and is rebuilt on the client
as the same class (see :func:`error_from_code`), so ``except UnknownObject`` works across the network.
"""

from __future__ import annotations


class BrokerError(Exception):
    """The root of every error aiobroker raises on purpose."""

    code = "broker_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- configuration and start-up ------------------------------------------------------------------------------


class ConfigError(BrokerError):
    """A config file or command-line value is wrong; the message names the key and what is allowed."""

    code = "config_error"


class StoreError(BrokerError):
    """The store cannot be opened or written (corrupt file, no permission, disk full)."""

    code = "store_error"


# --- the wire -------------------------------------------------------------------------------------------------


class ProtocolError(BrokerError):
    """The peer sent bytes that are not a valid frame (garbage, oversized, wrong shape, wrong version).

    The connection that produced it is closed; nothing else is affected.
    """

    code = "protocol_error"


class ConnectionLost(BrokerError):
    """The connection to the node closed. A request in flight may or may not have taken effect."""

    code = "connection_lost"


class TLSError(ConnectionLost):
    """A TLS connection could not be had: the node refused this side's certificate (or wanted one), this side did
    not trust the node's, or one of the two does not speak TLS. The message says which, in words; retrying the
    same way will not help. The ``ssl`` error it translates is its ``__cause__``."""

    code = "tls_error"


class Timeout(BrokerError):
    """A named phase (connect, handshake, request) took longer than its time-out."""

    code = "timeout"


# --- requests -------------------------------------------------------------------------------------------------


class InvalidArgument(BrokerError):
    """A request's argument is malformed (bad name, wrong type, out of range)."""

    code = "invalid_argument"


class UnknownObject(BrokerError):
    """A request names a message type, contract, queue, service or conversation that does not exist."""

    code = "unknown_object"


class DuplicateObject(BrokerError):
    """An object of that kind and name exists already."""

    code = "duplicate_object"


class ObjectInUse(BrokerError):
    """An object cannot be dropped while others refer to it."""

    code = "object_in_use"


class ConversationError(BrokerError):
    """The conversation's state does not allow the operation (ended, errored, lifetime over)."""

    code = "conversation_error"


class ContractViolation(BrokerError):
    """The message type is not allowed by the conversation's contract for this side."""

    code = "contract_violation"


class MessageTooLarge(BrokerError):
    """A message body is over the node's ``max_message_size``."""

    code = "message_too_large"


class QueueDisabled(BrokerError):
    """The queue's status is off (by an administrator or by poison-message handling)."""

    code = "queue_disabled"


class LeaseExpired(BrokerError):
    """A receive lease ran out (or was already committed or rolled back); its messages went back to the queue."""

    code = "lease_expired"


class Standby(BrokerError):
    """The node reached is a standby: it waits to take over the store from the node that owns it, and serves
    nothing until then. ``owner`` is the owner's address (``tcp://host:port``) when the standby knows it: connect
    there (a client or a route given several addresses moves on by itself). ``since`` is when the standby began to
    wait (Unix time), when known."""

    code = "standby"

    def __init__(self, message: str, owner: str | None = None, since: float | None = None) -> None:
        super().__init__(message)
        self.owner = owner
        self.since = since


class Overloaded(BrokerError):
    """A bound was reached (messages waiting, connections); try again later or raise the limit."""

    code = "overloaded"


class QueueFull(Overloaded):
    """A send would take a queue past its own bound (``max_messages`` or ``max_bytes``); nothing of it was sent.
    Receive from the queue, or raise its bound."""

    code = "queue_full"


class InternalError(BrokerError):
    """A bug in aiobroker, found by a check of its own (a change of a conversation's state its table does not
    have): nothing the caller did wrong. The message says what was found; report it with the node's log."""

    code = "internal_error"


# --- security -------------------------------------------------------------------------------------------------


class SecurityError(BrokerError):
    """Dialog security cannot be had or was broken: no remote service binding where encryption is required, a
    certificate that does not parse, has expired or does not match its key, a session key that cannot be read."""

    code = "security_error"


class NotAuthorized(BrokerError):
    """The caller's identity lacks the right for this request (send to a service, receive from a queue,
    administer the node), or the caller did not authenticate. Nothing was changed."""

    code = "not_authorized"


_ALL: dict[str, type[BrokerError]] = {}


def _register(cls: type[BrokerError]) -> None:
    _ALL[cls.code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(BrokerError)


def register_error(cls: type[BrokerError]) -> None:
    """Make an error class defined elsewhere (resolvers, plug-ins) travel the wire as itself."""
    _register(cls)


def error_from_code(code: str, message: str) -> BrokerError:
    """Rebuild an error received from the wire; an unknown code becomes a plain :class:`BrokerError`."""
    cls = _ALL.get(code, BrokerError)
    err = cls(message)
    if cls is BrokerError and code != BrokerError.code:
        err.code = code  # keep the far side's code visible
    return err
