"""Who an HTTP request is, and whether it may read what it asks for: the wire's rights, over HTTP.

With the node's ``[security] authorization`` off, every request may read everything (as every client may on the
wire). With it on, a request names its identity with the identity's token as ``Authorization: Bearer TOKEN``;
the token is checked as the wire's handshake checks it (:func:`aiobroker.node.sessions.authenticate`), and the
operation's rule from :mod:`aiobroker.node.rights` decides, looked up on every request like the wire does: reading
the node's state needs an identity other than ``public``. No token is 401 (with ``WWW-Authenticate: Bearer``); an
unknown token is 401; a known identity without the right is 403. Each says what to do.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ...core.broker import BrokerCore
from ...errors import NotAuthorized
from ..rights import rule_for
from ..sessions import authenticate

HOW = (
    "send an identity's token as the header 'Authorization: Bearer TOKEN' (an [[identity]] with tokens in the"
    " node's config file, or aiobroker create identity NAME --token ...)"
)


class Denied(Exception):
    """A request refused for want of rights: the HTTP status and the words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Denied(401, f"the Authorization header must be 'Bearer TOKEN'; {HOW}")
    return token.strip()


def check(core: BrokerCore, request: Request, op: str, args: dict[str, Any] | None = None) -> str:
    """The request's identity, once it may do the wire's ``op`` (with ``args``); else :class:`Denied`."""
    token = bearer_token(request)
    try:
        identity = authenticate(core, {"token": token} if token is not None else None, None)
    except NotAuthorized as exc:
        raise Denied(401, f"{exc.message.split(';')[0]}; {HOW}") from None
    if not core.authorization:
        return identity
    try:
        rule_for(op)(core, identity, args or {})
    except NotAuthorized as exc:
        if token is None:
            raise Denied(401, f"this endpoint needs an authenticated identity; {HOW}") from None
        raise Denied(403, exc.message) from None
    return identity
