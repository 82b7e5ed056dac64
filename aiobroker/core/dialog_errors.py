"""The broker's own conversation error codes (negative; codes > 0 belong to applications) and the Error body.

An ``Error`` message's body is the seeds' XML::

    <Error xmlns="http://schemas.microsoft.com/SQL/ServiceBroker/Error"><Code>-1</Code>
    <Description>the conversation's lifetime ran out</Description></Error>

:func:`error_body` writes it and :func:`parse_error_body` reads it back (the client shows it as ``message.error``).
"""

from __future__ import annotations

import enum
from xml.etree import ElementTree
from xml.sax.saxutils import escape

ERROR_NS = "http://schemas.microsoft.com/SQL/ServiceBroker/Error"


class BrokerErrorCode(enum.IntEnum):
    LIFETIME_EXPIRED = -1  #: the conversation's lifetime ran out
    VALIDATION_FAILED = -2  #: a message failed its type's validation at the receiving side
    CONTRACT_NOT_ACCEPTED = -3  #: the target service does not accept the conversation's contract
    CONTRACT_VIOLATION = -4  #: a message type the contract does not allow for the sending side
    SERVICE_GONE = -5  #: the target service was dropped while the conversation was open
    DELAYED_MESSAGES_DROPPED = -6  #: the conversation ended while messages waited for a route
    SECURITY = -7  #: dialog security cannot be had (no binding where encryption is required, a certificate expired)
    NOT_AUTHORIZED = -8  #: the initiator's identity may not send to the target service


def error_body(code: int, description: str) -> bytes:
    return (
        f'<Error xmlns="{ERROR_NS}"><Code>{int(code)}</Code>'
        f"<Description>{escape(description)}</Description></Error>"
    ).encode()


def parse_error_body(body: bytes) -> tuple[int, str]:
    """``(code, description)``; a body that is not the expected XML gives code 0 and the raw text."""
    try:
        root = ElementTree.fromstring(body)  # the broker wrote it; a DTD never appears in it
        code = int(root.findtext(f"{{{ERROR_NS}}}Code") or "0")
        return code, root.findtext(f"{{{ERROR_NS}}}Description") or ""
    except (ElementTree.ParseError, ValueError):
        return 0, body.decode("utf-8", "replace")


#: the reason for refusing a verified first message from another node: (dialog error code, description)
Refusal = tuple[int, str]
