"""One client connection: the session, its handshake and how it authenticates.

A connection starts with HELLO; the listener answers WELCOME (or REFUSED, and closes) once it knows who the other
side is: a token in HELLO's ``info``, else a TLS client certificate, else ``public``. With the node's
``[security] authorization`` on, an unknown token or certificate is refused here, and a peer node needs the peer
right. What a session may do afterwards is :mod:`aiobroker.node.rights`' business.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

import anyio
from anyio.streams.tls import TLSAttribute

from ..version import __version__
from ..config import NodeConfig
from ..core.broker import BrokerCore
from ..core.identities import PUBLIC, token_digest
from ..errors import BrokerError, NotAuthorized, Overloaded, ProtocolError
from ..transport.connection import FramedConnection
from ..wire.frames import PROTOCOL_VERSION, Failed, Hello, Refused, Welcome, reply_wire
from .admission import FAREWELL_TIMEOUT, Admission, Ticket

log = logging.getLogger("aiobroker.node")

HANDSHAKE_TIMEOUT = 10.0


class Session:
    """One client connection: its framed stream, who it authenticated as, and the owner of the leases it takes."""

    __slots__ = ("conn", "peer", "id", "identity", "ticket", "_after_commit")

    _ids = itertools.count(1)

    def __init__(
        self, conn: FramedConnection, peer: str, ticket: Ticket, after_commit: Callable[[Callable[[], None]], None]
    ) -> None:
        self.conn = conn
        self.peer = peer
        self.id = next(self._ids)
        #: the identity it authenticated as at the handshake (a token, a TLS client certificate), else ``public``
        self.identity = PUBLIC
        #: its place among the node's connections (aiobroker.node.admission)
        self.ticket = ticket
        #: the store writer's: run a callback once what the requests so far changed is stored
        self._after_commit = after_commit

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def reply_now(self, rid: int, result: Any) -> None:
        self.conn.send(reply_wire(rid, result))

    def reply_durable(self, rid: int, result: Any) -> None:
        """Answer once what this request changed is stored."""
        send = self.conn.send
        self._after_commit(lambda: send(reply_wire(rid, result)))

    def fail(self, rid: int, exc: BrokerError) -> None:
        self.conn.send_frame(Failed(request_id=rid, code=exc.code, message=exc.message))

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.peer} as {self.identity}>"


async def handshake(
conn: FramedConnection,
session: Session,
certificate: bytes | None,
core: BrokerCore,
config: NodeConfig,
admission: Admission,
) -> str | None:
    """HELLO/WELCOME; returns the peer's role ("client" or "peer"), or None if it was refused. A client's
    identity (see :func:`authenticate`) goes in ``session.identity``."""
    peer = session.peer
    with anyio.move_on_after(HANDSHAKE_TIMEOUT):
        frame = await conn.receive_one()
        if not isinstance(frame, Hello):
            raise ProtocolError(f"expected HELLO as the first frame, got {type(frame).__name__.upper()}")
        if frame.version != PROTOCOL_VERSION:
            msg = (
                f"protocol version {frame.version} is not spoken here (this node speaks {PROTOCOL_VERSION});"
                " upgrade the older side"
            )
            log.warning("refused %s: %s", peer, msg, extra={"peer": peer})
            await conn.send_last(Refused(code="protocol_error", message=msg))
            return None
        # a peer node authenticates like a client, and needs the peer right when authorization is on (its
        # conversations' initiators are checked again, per conversation, by the core)
        who = "peer node" if frame.role == "peer" else "client"
        try:
            session.identity = authenticate(core, frame.info, certificate)
            if frame.role == "peer" and core.authorization:
                if not core.catalog.may(session.identity, "peer", ""):
                    raise NotAuthorized(
                        f"identity {session.identity!r} may not link to this node as a peer node; an"
                        " administrator gives an identity peer = true, and the linking node presents its token"
                        " ([federation] link_token) or its TLS certificate"
                    )
            # administrators and peer nodes may use the reserved connections (the peer right was checked above)
            privileged = frame.role == "peer" or core.catalog.may(session.identity, "admin", "")
            admission.admit(session.ticket, privileged=privileged)
        except NotAuthorized as exc:
            log.warning("refused %s %s at the handshake: %s", who, peer, exc.message, extra={"peer": peer})
            await conn.send_last(Refused(code=exc.code, message=exc.message))
            return None
        except Overloaded as exc:  # logged by the admission, at most once a minute
            await conn.send_last(Refused(code=exc.code, message=exc.message))
            return None
        conn.send_frame(
            Welcome(
                version=PROTOCOL_VERSION,
                broker_instance=core.broker_instance,
                info={
                    "server": f"aiobroker {__version__}",
                    "max_message_size": config.max_message_size,
                    "max_frame_size": config.max_frame_size,
                    "identity": session.identity,
                    # this node takes a send as one type and its bodies (docs/protocol.md); a client that does
                    # not see this sends [type, body] pairs, which every node takes
                    "send_bodies": True,
                },
            )
        )
        return frame.role
    log.warning(
        "client %s did not finish the handshake within %gs; closed", peer, HANDSHAKE_TIMEOUT, extra={"peer": peer}
    )
    with anyio.move_on_after(FAREWELL_TIMEOUT):  # say why, unless it does not even read
        await conn.send_last(
            Refused(code="timeout", message=f"no HELLO within {HANDSHAKE_TIMEOUT:g} s of connecting; closed")
        )
    return None

def authenticate(core: BrokerCore, info: Any, certificate: bytes | None) -> str:
    """The identity a client's HELLO names: its ``token``, else its TLS client certificate, else ``public``.

    With authorization on, a token or certificate that matches no identity raises NotAuthorized (the client
    is refused). With it off, tokens and certificates are accepted as they are; a match is still recorded
    (for the log and the client's WELCOME).
    """
    catalog = core.catalog
    enforce = core.authorization
    token = info.get("token") if isinstance(info, dict) else None
    if token is not None:
        if not isinstance(token, str) or not token:
            if enforce:
                raise NotAuthorized("the token must be a non-empty string")
            return PUBLIC
        ident = catalog.identity_by_token_digest(token_digest(token))
        if ident is not None:
            log.debug("client authenticated by token as identity %r", ident.name)
            return ident.name
        if enforce:
            raise NotAuthorized(
                "the token given matches no identity on this node; check it (aiobroker.connect(url, token=...),"
                " --token or $AIOBROKER_TOKEN), or ask an administrator to add it to an identity"
                " (aiobroker create identity NAME --token ...); connect without a token to be 'public'"
            )
        return PUBLIC
    if certificate:
        fingerprint = hashlib.sha256(certificate).hexdigest()
        ident = catalog.identity_by_fingerprint(fingerprint)
        if ident is not None:
            log.debug("client authenticated by TLS certificate as identity %r", ident.name)
            return ident.name
        if enforce:
            raise NotAuthorized(
                f"the TLS client certificate (SHA-256 fingerprint {fingerprint}) matches no identity on this"
                " node; ask an administrator to create an identity with this certificate"
                " (aiobroker create identity NAME --certificate FILE), or authenticate with a token"
            )
    return PUBLIC


def peer_certificate(stream: Any) -> bytes | None:
    """The DER certificate a TLS client presented (the listener asks for one when ``[tls] ca`` is set)."""
    try:
        der = stream.extra(TLSAttribute.peer_certificate_binary, None)
    except Exception:  # noqa: BLE001 - no certificate is the answer for any stream that cannot say
        return None
    return der if isinstance(der, bytes) and der else None
