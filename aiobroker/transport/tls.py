"""Transport security: TLS on a node's listener, on its links to other nodes, and on clients.

A node with a certificate and key speaks TLS only, to clients and peers alike, and calls itself ``tls://host:port``.
With a CA file as well, it asks every connecting side for a certificate signed by that CA (mutual TLS) and checks
the certificate of every node it links to against the same CA; without one, clients need no certificate and links
trust the system's CAs. Nodes in one federation therefore either all use TLS or none do. A side that fails the
handshake is refused, and the node logs one line saying who and why.

Both ends of a failed handshake are told why: the side that refuses still sends the TLS alert OpenSSL wrote for
the other (anyio's own handshake drops it and just closes), and :func:`describe_tls_error` turns an ``ssl``
error, ours or the alert the other side sent, into words and what to do. With TLS 1.3 a client learns that the
node wanted its certificate only at its first read after the handshake, so readers translate too.

Independent of dialog security (end-to-end encryption of message bodies).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import anyio
from anyio import aclose_forcefully, get_cancelled_exc_class
from anyio.abc import AnyByteStream, ByteStream, SocketAttribute, TaskGroup
from anyio.streams.tls import TLSListener, TLSStream

from ..errors import ConfigError

log = logging.getLogger("aiobroker.tls")

#: How long a refusing side waits to hand its alert to the other side before it closes anyway.
ALERT_TIMEOUT = 1.0

#: Alerts a TLS peer sends (OpenSSL's reason for them, as ``ssl.SSLError.reason``) in words; ``{far}`` is the
#: side that sent it (``the node``), ``{near}`` the side that got it (``this client``).
_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "{far} requires a client certificate, and none was given{cert}",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "{far} refused the TLS handshake (with TLS 1.2 this is how a node that"
    " requires a client certificate says it got none){cert}",
    "TLSV1_ALERT_UNKNOWN_CA": "{far} does not trust {near}'s certificate (unknown CA): it must be signed by, or be"
    " one of, the certificates in {far}'s CA file",
    "SSLV3_ALERT_BAD_CERTIFICATE": "{far} refused {near}'s certificate (bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "{far} refused {near}'s certificate (certificate unknown)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "{far} says {near}'s certificate has expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "{far} says {near}'s certificate was revoked",
    "TLSV1_ALERT_ACCESS_DENIED": "{far} denied access",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the two sides share no TLS version (aiobroker needs TLS 1.2 or later)",
    "TLSV1_ALERT_DECRYPT_ERROR": "{far} could not check {near}'s signature (does its key match its certificate?)",
}
#: Failures found by this side, by reason.
_OWN = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "{far} gave no certificate, and one is required",
    "WRONG_VERSION_NUMBER": "{far} does not speak TLS (plain TCP on both ends is tcp://; TLS is a node with [tls]"
    " and clients that dial tls://)",
    "HTTP_REQUEST": "{far} speaks HTTP, not TLS",
    "NO_SHARED_CIPHER": "the two sides share no cipher",
    "UNSUPPORTED_PROTOCOL": "the two sides share no TLS version (aiobroker needs TLS 1.2 or later)",
}


def describe_tls_error(
    exc: ssl.SSLError,
    *,
    far: str = "the far side",
    near: str = "this side",
    ca: str = "the CA file",
    cert: str = "",
) -> str:
    """Why a TLS handshake (or the first read after it) failed, in words, with what to do where we know it.
    ``far`` names the other side in the words (``"the node"``), ``near`` this one (``"this client"``); ``ca``
    is how this side is given its CA file, ``cert`` (with its separator) how its certificate and key."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = str(exc.verify_message or exc.reason or exc)
        text = f"certificate verify failed: {detail.rstrip('.')}"
        if "mismatch" in detail:
            return text + (
                f" ({far}'s certificate must name the host dialled in its subject alternative names: make it with"
                " aiobroker cert create --dns NAME --ip ADDRESS)"
            )
        if "expired" in detail or "not yet valid" in detail:
            return text + f" ({far}'s certificate)"
        return text + (
            f" ({near} does not trust the CA that signed {far}'s certificate: give that CA's certificate, or"
            f" {far}'s own if it is self-signed, as {ca})"
        )
    reason = str(exc.reason or "")
    words = _ALERTS.get(reason) or _OWN.get(reason)
    if words is not None:
        return words.format(far=far, near=near, cert=cert)
    if isinstance(exc, ssl.SSLEOFError) or "EOF" in reason:
        return f"{far} closed the connection during the TLS handshake"
    return (reason.lower().replace("_", " ") or str(exc)) + " (a TLS error)"


def find_tls_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The ``ssl.SSLError`` behind ``exc`` (itself, or in its cause or context chain), if there is one."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, ssl.SSLError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


# ============================================================================================== contexts


#: What OpenSSL's reasons for refusing a file mean, and what to do.
_FILE_ERRORS = {
    "KEY_VALUES_MISMATCH": "the key is not the certificate's (make the two together: aiobroker cert create)",
    "NO_CERTIFICATE_OR_CRL_FOUND": "it holds no PEM certificate",
    "PEM_LIB": "they are not a PEM certificate and its key (an encrypted key is not supported)",
}


def _check_file(what: str, path: Path) -> None:
    """A clear ConfigError naming ``path`` if it is not a readable file (ssl's own errors may name no file)."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None


def _load(action: Any, *paths: tuple[str, Path]) -> None:
    """``action(*paths)`` (an SSLContext loader), each path checked first; ConfigError naming what failed."""
    for what, path in paths:
        _check_file(what, path)
    try:
        action(*[str(p) for _, p in paths])
    except (ssl.SSLError, OSError, ValueError) as exc:
        shown = " and ".join(f"{what} {path}" for what, path in paths)
        reason = str(getattr(exc, "reason", None) or "")
        why = _FILE_ERRORS.get("PEM_LIB" if reason == "PEM_LIB" or "PEM lib" in str(exc) else reason)
        raise ConfigError(f"{shown} cannot be used: {why or exc}") from exc


def server_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """For the listener: present ``cert``; with ``ca``, require and check the other side's certificate. (Errors
    name the files by their keys in the config, ``[tls] cert``.)"""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx.load_cert_chain, ("[tls] cert", cert), ("[tls] key", key))
    if ca is not None:
        _load(ctx.load_verify_locations, ("[tls] ca", ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    *, ca: Path | None = None, cert: Path | None = None, key: Path | None = None, check_hostname: bool = True
) -> ssl.SSLContext:
    """For connecting (a client to a node, or a node to a peer): trust ``ca`` (else the system's CAs, as any TLS
    client does), and present ``cert`` when the far side asks for one. ``check_hostname`` checks the certificate
    names the address dialled (its subject alternative names must hold the host name or IP address)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        _load(ctx.load_verify_locations, ("TLS CA file", Path(ca)))
    if cert is not None or key is not None:
        if cert is None or key is None:
            missing = "key (the certificate's private key)" if key is None else "cert (the key's certificate)"
            raise ConfigError(f"TLS: a client certificate needs both cert and key; {missing} is missing")
        _load(ctx.load_cert_chain, ("TLS certificate", Path(cert)), ("key", Path(key)))
    ctx.check_hostname = check_hostname
    return ctx


# ============================================================================================== handshakes


async def handshake(
    transport: AnyByteStream,
    ctx: ssl.SSLContext,
    *,
    server_side: bool,
    hostname: str | None = None,
    standard_compatible: bool = False,
) -> TLSStream:
    """Wrap ``transport`` in TLS (by default not ``standard_compatible``, as everywhere in aiobroker: no closing
    handshake, which framed messages do not need), as anyio's ``TLSStream.wrap`` does, except that a failed handshake still sends the alert it produced, so the other side
    learns why (a certificate required, an unknown CA) instead of seeing the connection just close."""
    read_bio, write_bio = ssl.MemoryBIO(), ssl.MemoryBIO()
    ssl_object = ctx.wrap_bio(read_bio, write_bio, server_side=server_side, server_hostname=hostname)
    stream = TLSStream(
        transport_stream=transport,
        standard_compatible=standard_compatible,
        _ssl_object=ssl_object,
        _read_bio=read_bio,
        _write_bio=write_bio,
    )
    try:
        await stream._call_sslobject_method(ssl_object.do_handshake)
    except ssl.SSLError:
        alert = write_bio.read()  # still readable after anyio marked the BIO's end
        if alert:
            with anyio.move_on_after(ALERT_TIMEOUT):
                try:
                    await transport.send(alert)
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # the other side is gone already; nobody to tell
        raise
    return stream


async def connect(host: str, port: int, ctx: ssl.SSLContext) -> TLSStream:
    """A TLS connection to ``host:port`` (``host`` goes in SNI, and the certificate must name it when ``ctx``
    checks host names).
    A failed handshake raises ``ssl.SSLError`` (or anyio's EndOfStream when the far side just closes)."""
    tcp = await anyio.connect_tcp(host, port)
    try:
        return await handshake(tcp, ctx, server_side=False, hostname=host)
    except BaseException:
        await aclose_forcefully(tcp)
        raise


class RefusingTLSListener(TLSListener):
    """A TLS listener that sends a failed handshake's alert to the other side, and logs one line with the reason
    (not a traceback)."""

    async def serve(self, handler: Callable[[TLSStream], Any], task_group: TaskGroup | None = None) -> None:
        @wraps(handler)
        async def handler_wrapper(stream: ByteStream) -> None:
            try:
                with anyio.fail_after(self.handshake_timeout):
                    wrapped = await handshake(
                        stream, self.ssl_context, server_side=True, standard_compatible=self.standard_compatible
                    )
            except BaseException as exc:
                await self.handle_handshake_error(exc, stream)
            else:
                await handler(wrapped)

        await self.listener.serve(handler_wrapper, task_group)

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
        tls_error = find_tls_error(exc)
        if tls_error is not None:
            reason = describe_tls_error(tls_error, far="the other side", near="this node", ca="[tls] ca")
        elif isinstance(exc, TimeoutError):
            reason = "no TLS handshake within the time allowed"
        elif isinstance(exc, anyio.EndOfStream | anyio.BrokenResourceError):
            reason = "the other side closed the connection during the TLS handshake"
        else:
            reason = str(exc) or type(exc).__name__
        log.warning("TLS handshake with %s failed (%s); connection refused", who, reason, extra={"peer": who})
