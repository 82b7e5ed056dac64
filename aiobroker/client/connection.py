"""The client's connection: node addresses, TLS options, dialling and the HELLO/WELCOME handshake, and the
reply a request waits on. :class:`~aiobroker.client.Client` holds what this makes.

An address may list several nodes, an owner and its standbys (``tcp://a:4022,b:4022``): :func:`dial_any` tries them
in order and connects to the one that serves. A standby refuses with the owner's address, which is tried next.
While none serves (the owner just died and a standby is taking over) it goes round the list again, with a short
back-off, for at most ``failover_timeout`` seconds; then it fails with every address's answer.
"""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path
from typing import Any

import anyio

from ..errors import (
    BrokerError,
    ConnectionLost,
    InvalidArgument,
    ProtocolError,
    Standby,
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
#: seconds a client given several addresses keeps going round them while none serves: long enough for a standby
#: to take over from an owner that died (a few seconds), short enough that a client of a federation that is down
#: hears about it
FAILOVER_TIMEOUT = 30.0
#: the pause between rounds of the addresses, doubling up to a second
FAILOVER_BACKOFF = (0.05, 1.0)


def split_urls(url: str) -> list[str]:
    """A client's address, one node's or several separated by commas (``tcp://a:4022,b:4022``), as one full URL
    each. The first address's scheme goes for all; one that names another is refused (every node of a group
    speaks TLS, or none does)."""
    parts = [part.strip() for part in url.split(",")]
    if not all(parts):
        raise InvalidArgument(f"node address {url!r}: an empty address between commas; write tcp://a:4022,b:4022")
    first, sep, _ = parts[0].partition("://")
    scheme = first if sep else "tcp"
    urls = []
    for part in parts:
        full = part if "://" in part else f"{scheme}://{part}"
        if split_url(full)[0] != scheme:
            raise InvalidArgument(
                f"node address {url!r}: {part!r} does not speak {scheme}:// as the first address does; the nodes"
                " of one address all speak TLS or none does"
            )
        urls.append(full)
    return urls


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
        if frame.code == Standby.code:
            owner, since = frame.info.get("owner"), frame.info.get("since")
            raise Standby(
                frame.message,
                owner=owner if isinstance(owner, str) else None,
                since=float(since) if isinstance(since, int | float) else None,
            )
        raise error_from_code(frame.code, f"{url} refused the connection: {frame.message}")
    if not isinstance(frame, Welcome):
        await conn.aclose()
        raise ProtocolError(f"{url} answered the handshake with {type(frame).__name__.upper()}")
    return conn, frame


async def dial_any(
    urls: list[str],
    ssl_context: ssl.SSLContext | None,
    token: str | None,
    timeouts: tuple[float, float, float],
    follow_owner: bool = True,
) -> tuple[FramedConnection, Welcome, str]:
    """Connect to the first node of ``urls`` that serves: the connection, its WELCOME and its address.

    An address that cannot be reached (refused, timed out, closed during the handshake) or that is a standby is
    passed over; a standby's owner is tried next (unless ``follow_owner`` is false). With several addresses, while
    none serves, the list is tried again after a pause, for at most ``timeouts[2]`` seconds in all (``timeouts``:
    connect, handshake, fail-over). Any other refusal (TLS, authorization, protocol) is raised at once: another
    node of the group would say the same. What each address said is in the error: a :class:`Standby` if one was a
    standby (its owner named), else :class:`ConnectionLost`."""
    connect_timeout, handshake_timeout, failover_timeout = timeouts
    deadline = time.monotonic() + failover_timeout
    said: dict[str, BrokerError] = {}
    standby: Standby | None = None
    pause, longest = FAILOVER_BACKOFF
    while True:
        queue, tried = list(urls), set()
        while queue:
            url = queue.pop(0)
            if url in tried:
                continue
            tried.add(url)
            left = deadline - time.monotonic()
            if len(urls) > 1 and left <= 0:
                break
            try:
                # with several addresses, no one address may take longer than the whole fail-over's time (a paused
                # node accepts the connection and never answers the handshake)
                single = len(urls) == 1
                conn, welcome = await dial(
                    url, ssl_context, token, connect_timeout if single else min(connect_timeout, left),
                    handshake_timeout if single else min(handshake_timeout, left),
                )
                return conn, welcome, url
            except TLSError:
                raise
            except Standby as exc:
                said[url], standby = exc, standby or exc
                if follow_owner and exc.owner is not None and exc.owner not in tried:
                    queue.insert(0, exc.owner)
            except (ConnectionLost, Timeout) as exc:
                said[url] = exc
        if len(urls) == 1 or time.monotonic() + pause > deadline:
            break
        await anyio.sleep(pause)  # a back-off between rounds, bounded by the deadline
        pause = min(pause * 2, longest)
    if len(said) == 1:  # one address, one answer: as it was
        raise next(iter(said.values()))
    listing = "; ".join(f"{url}: {exc.message}" for url, exc in said.items())
    where = f"none of {', '.join(urls)} serves" + (f" (tried for {failover_timeout:g}s)" if len(urls) > 1 else "")
    if standby is not None:
        raise Standby(f"{where}: {listing}", owner=standby.owner, since=standby.since)
    raise ConnectionLost(f"{where}: {listing}")


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

