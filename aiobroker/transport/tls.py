"""Transport security: TLS on a node's listener and on its links to other nodes.

A node with a certificate and key speaks TLS only, to clients and peers alike. With a CA file as well, it asks
every connecting side for a certificate signed by that CA (mutual TLS) and checks the certificate of every node it
links to against the same CA; without one, clients need no certificate and links trust the system's CAs. Nodes in
one federation therefore either all use TLS or none do. A side that fails the handshake is refused, and the node
logs one line saying who and why.

Independent of dialog security (end-to-end encryption of message bodies), which a later change adds.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from anyio import aclose_forcefully, get_cancelled_exc_class
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSListener

from ..errors import ConfigError

log = logging.getLogger("aiobroker.tls")


def _load(ctx: ssl.SSLContext, what: str, action: Any, *paths: Path) -> None:
    try:
        action(*[str(p) for p in paths])
    except FileNotFoundError as exc:
        raise ConfigError(f"TLS {what}: {exc.filename} does not exist") from exc
    except (ssl.SSLError, OSError, ValueError) as exc:
        shown = " and ".join(str(p) for p in paths)
        raise ConfigError(f"TLS {what} {shown} cannot be used: {exc}; check it is PEM and matches") from exc


def server_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """For the listener: present ``cert``; with ``ca``, require and check the other side's certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, "certificate and key", ctx.load_cert_chain, cert, key)
    if ca is not None:
        _load(ctx, "CA file", ctx.load_verify_locations, ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    *, ca: Path | None = None, cert: Path | None = None, key: Path | None = None, check_hostname: bool = True
) -> ssl.SSLContext:
    """For connecting (a client to a node, or a node to a peer): trust ``ca`` (else the system's CAs), and
    present ``cert`` when the far side asks for one. ``check_hostname`` checks the certificate names the address
    dialled (its subject alternative names must hold the host name or IP address)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        _load(ctx, "CA file", ctx.load_verify_locations, ca)
    if cert is not None or key is not None:
        if cert is None or key is None:
            raise ConfigError("TLS: a client certificate needs both cert and key")
        _load(ctx, "certificate and key", ctx.load_cert_chain, cert, key)
    ctx.check_hostname = check_hostname
    return ctx


class RefusingTLSListener(TLSListener):
    """A TLS listener that logs a failed handshake as one line with the reason, not a traceback."""

    @staticmethod
    async def handle_handshake_error(exc: BaseException, stream: Any) -> None:
        try:
            addr = stream.extra(SocketAttribute.remote_address)
            who = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        except Exception:  # noqa: BLE001 - the address is only for the log line
            who = "?"
        await aclose_forcefully(stream)
        if isinstance(exc, get_cancelled_exc_class()) or not isinstance(exc, Exception):
            raise exc
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        log.warning("TLS handshake with %s failed (%s); connection refused", who, reason)
