"""The client's connection: node addresses, TLS options, dialling and the HELLO/WELCOME handshake, and the
reply a request waits on. :class:`~aiobroker.client.Client` holds what this makes."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

import anyio

from ..errors import (
    BrokerError,
    ConnectionLost,
    InvalidArgument,
    ProtocolError,
    Timeout,
    TLSError,
    error_from_code,
)
from ..transport import tls
from ..transport.connection import FramedConnection, describe_os_error
from ..wire.frames import Hello, Refused, Welcome

DEFAULT_PORT = 4022
#: How TLS errors name the two sides, in this client's words.
_WHO = {
    "far": "the node",
    "near": "this client",
    "ca": "the CA file (ca=; the CLI's --ca)",
    "cert": ": give cert= and key= (the CLI's --cert and --key)",
}
#: ``tcp://`` is plain TCP; ``tls://`` is TLS, to a node with ``[tls]`` (its own URL then says tls:// too).
SCHEMES = ("tcp", "tls")
CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0


def parse_url(url: str) -> tuple[str, int]:
    """``tcp://host:port`` or ``tls://host:port`` (or ``host:port``; IPv6 as ``[::1]:4022``) → (host, port)."""
    _, host, port = split_url(url)
    return host, port


def split_url(url: str) -> tuple[str, str, int]:
    """A node's address → ``(scheme, host, port)``; the scheme is ``"tcp"`` (also for a bare ``host:port``) or
    ``"tls"``, the port 4022 when none is given."""
    scheme, sep, text = url.partition("://")
    if not sep:
        scheme, text = "tcp", url
    elif scheme not in SCHEMES:
        raise InvalidArgument(
            f"node address {url!r}: the scheme must be tcp:// (plain TCP) or tls:// (a node with [tls]),"
            f" not {scheme}://"
        )
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep:
            raise InvalidArgument(f"node address {url!r}: unclosed '[' in IPv6 address")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        raise InvalidArgument(f"node address {url!r}: port {port_text!r} is not a number") from None
    if not host or not 0 < port < 65536:
        raise InvalidArgument(f"node address {url!r}: expected {scheme}://host:port")
    return scheme, host, port


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ssl_context_for(
    url: str,
    ca: str | os.PathLike[str] | None,
    cert: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None,
    ssl_context: ssl.SSLContext | None,
) -> ssl.SSLContext | None:
    """The TLS context a client of ``url`` dials with (None: plain TCP), from the options it was given; refuses
    TLS options for a ``tcp://`` address, and files given together with a ready context."""
    scheme, host, port = split_url(url)
    files = {name: value for name, value in (("ca", ca), ("cert", cert), ("key", key)) if value is not None}
    if scheme == "tcp" and (files or ssl_context is not None):
        given = ", ".join([*files, *(["ssl_context"] if ssl_context is not None else [])])
        raise InvalidArgument(
            f"{given} given for {url!r}, a plain-TCP address: write tls://{host_port(host, port)}"
            " to connect with TLS"
        )
    if scheme == "tls" and ssl_context is None:
        return tls.client_context(
            ca=Path(ca) if ca is not None else None,
            cert=Path(cert) if cert is not None else None,
            key=Path(key) if key is not None else None,
        )
    if files:
        raise InvalidArgument(f"give ssl_context or {', '.join(files)}, not both (the context holds the files)")
    return ssl_context


async def dial(
    url: str,
    ssl_context: ssl.SSLContext | None,
    token: str | None,
    connect_timeout: float,
    handshake_timeout: float,
) -> tuple[FramedConnection, Welcome]:
    """Connect to the node at ``url`` and shake hands: the open connection and the node's WELCOME. Every failure
    raises a :class:`~aiobroker.errors.BrokerError` in words that say what to check."""
    _, host, port = split_url(url)
    try:
        with anyio.fail_after(connect_timeout):
            if ssl_context is not None:
                stream: Any = await tls.connect(host, port, ssl_context)
            else:
                stream = await anyio.connect_tcp(host, port)
    except TimeoutError:
        raise Timeout(f"connecting to {url} took over {connect_timeout}s; is the node reachable?") from None
    except ssl.SSLError as exc:  # before OSError, its base: the TLS handshake failed, and we know why
        raise TLSError(f"TLS with {url} failed: {tls.describe_tls_error(exc, **_WHO)}") from exc
    except OSError as exc:
        raise ConnectionLost(
            f"cannot connect to {url}: {describe_os_error(exc)}; is a node running there"
            " (start one with: aiobroker serve)?"
        ) from exc
    except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:  # closed in the middle of the TLS handshake
        raise TLSError(
            f"TLS with {url} failed: the node closed the connection during the TLS handshake"
            " (does it speak TLS? a plain-TCP node is dialled tcp://)"
        ) from exc
    conn = FramedConnection(stream, peer=url)
    # Words for a handshake that failed on plain TCP: a node with [tls] answers plain TCP so.
    plain_hint = "" if ssl_context is not None else f" (if the node speaks TLS, dial tls://{host_port(host, port)})"
    try:
        with anyio.fail_after(handshake_timeout):
            info: dict[str, Any] = {"client": "aiobroker-python"}
            if token is not None:
                info["token"] = token
            conn.send_frame(Hello(role="client", info=info))
            await conn.flush()
            frame = await conn.receive_one()
    except TimeoutError:
        await conn.aclose()
        raise Timeout(f"{url} did not finish the handshake within {handshake_timeout}s{plain_hint}") from None
    except BrokerError as exc:
        await conn.aclose()
        tls_error = tls.find_tls_error(exc)
        if tls_error is not None:  # TLS 1.3: the node's verdict on our certificate arrives at the first read
            raise TLSError(f"{url} refused the connection: {tls.describe_tls_error(tls_error, **_WHO)}") from exc
        if isinstance(exc, ConnectionLost | ProtocolError) and ssl_context is None:
            raise type(exc)(f"{exc.message}{plain_hint}") from exc
        raise
    if isinstance(frame, Refused):
        await conn.aclose()
        raise error_from_code(frame.code, f"{url} refused the connection: {frame.message}")
    if not isinstance(frame, Welcome):
        await conn.aclose()
        raise ProtocolError(f"{url} answered the handshake with {type(frame).__name__.upper()}")
    return conn, frame


class PendingReply:
    """A request already sent; ``await pending.wait()`` gives its result (or raises its error)."""

    __slots__ = ("event", "result", "error")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.result: Any = None
        self.error: BrokerError | None = None

    @property
    def done(self) -> bool:
        """Whether the answer (or the error) has arrived."""
        return self.event.is_set()

    async def wait(self) -> Any:
        """The request's result, once the node has answered; raises its error."""
        await self.event.wait()
        if self.error is not None:
            raise self.error
        return self.result

