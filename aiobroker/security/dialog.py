"""Dialog security: a session key per conversation, carried to the target wrapped for its service owner's
certificate and signed by the initiator's identity (unless anonymous), and every message body sealed with it.

Theory of operation
-------------------
The initiating node makes a random 32-byte session key when a conversation to a service on another node is
secured (a remote service binding names the target's certificate). Its first message (sequence 0) carries a
*key header*: the key wrapped for the target certificate's public key (RSA-OAEP-SHA256, or for EC keys ECIES:
ephemeral ECDH + HKDF-SHA256 + AES-GCM), and, unless the binding is anonymous, the initiator's certificate (DER)
and its signature over the conversation id, both service names and the wrapped key (RSA-PSS-SHA256 or
ECDSA-SHA256). Every message body in both directions is sealed with AES-256-GCM under the session key; the nonce
is the direction and the sequence number (unique per key: sequence numbers never repeat in a direction, and a
resend of the same number is the same plaintext), and the associated data binds the conversation id, the
direction, the sequence number and the message type, so a body moved to another message, reordered, or changed
in any bit fails to open. A forwarding node sees the routing headers alone.

Wire formats (all fields fixed-size or length-prefixed, so no two different inputs encode alike):

- nonce (12 bytes): direction (1 from the initiator, 0 from the target), three zero bytes, the sequence number
  (8 bytes, big endian);
- a body's associated data: ``len + b"aiobroker dialog body v1"``, ``len + conversation id``,
  ``len + message type``, then the nonce (so the direction and the sequence number); ``len`` is 4 bytes, big
  endian;
- a body with trace context (``seal_traced``): the plaintext is the trace context's length (2 bytes, big endian),
  the trace context (ASCII), then the body; the associated data is as above but begins with
  ``len + b"aiobroker dialog body+trace v1"``, so a body sealed with a context never opens as one without, nor the
  other way round (a forwarder can neither strip the context nor claim one);
- a wrapped key: an algorithm tag (1 byte), then for RSA (tag 1) the OAEP ciphertext, for EC (tag 2) the ephemeral
  public point (X9.62 uncompressed, on the recipient's curve) and the AES-GCM sealed session key (48 bytes) under
  HKDF-SHA256(ECDH shared secret, info ``b"aiobroker dialog key wrap v1"``) with a zero nonce (safe: the key
  encryption key is new every time);
- the signed header: ``len + b"aiobroker dialog v1"``, ``len + conversation id``, ``len + from service``,
  ``len + to service``, ``len + wrapped key``.

Every failure is a :class:`~aiobroker.errors.SecurityError` (cryptography's own errors are chained to it).
"""

from __future__ import annotations

import os
import struct
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import SecurityError

SESSION_KEY_BYTES = 32

_TAG_RSA_OAEP = 1
_TAG_ECIES = 2
_TAG_NAMES = {_TAG_RSA_OAEP: "an RSA", _TAG_ECIES: "an EC"}
_WRAP_INFO = b"aiobroker dialog key wrap v1"
_SIGN_LABEL = b"aiobroker dialog v1"
_BODY_LABEL = b"aiobroker dialog body v1"
_TRACED_LABEL = b"aiobroker dialog body+trace v1"
_TRACE_LENGTH = struct.Struct(">H")
_ZERO_NONCE = bytes(12)
_WRAPPED_EC_KEY_BYTES = SESSION_KEY_BYTES + 16  # the session key and AES-GCM's tag

_SHA256 = hashes.SHA256()
_OAEP = padding.OAEP(mgf=padding.MGF1(_SHA256), algorithm=_SHA256, label=None)
_PSS = padding.PSS(mgf=padding.MGF1(_SHA256), salt_length=padding.PSS.DIGEST_LENGTH)
_ECDSA = ec.ECDSA(_SHA256)
_CURVES = ("secp256r1", "secp384r1", "secp521r1")

#: direction (1: from the initiator), three zero bytes, sequence number
_NONCE = struct.Struct(">B3xQ")
_AD_CACHE_SIZE = 32

#: What cryptography (and our own encoding) may raise for bad input, besides InvalidTag and InvalidSignature.
_BAD_INPUT = (ValueError, TypeError, OverflowError, AttributeError, UnsupportedAlgorithm)


def _lp(data: bytes) -> bytes:
    """``data`` with its length in front (4 bytes, big endian)."""
    return len(data).to_bytes(4, "big") + data


def _public_key(certificate: Any) -> Any:
    """The public key of a certificate (or a public key given as it is), if dialog security can use it."""
    key = certificate.public_key() if hasattr(certificate, "public_key") else certificate
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVES:
        return key
    raise SecurityError(
        f"dialog security: cannot use a key of type {type(key).__name__} (it needs RSA of at least 2048 bits or"
        " EC on P-256, P-384 or P-521)"
    )


def _kek(shared_secret: bytes) -> bytes:
    return HKDF(algorithm=_SHA256, length=32, salt=None, info=_WRAP_INFO).derive(shared_secret)


def _check_session_key(session_key: object) -> bytes:
    if not isinstance(session_key, bytes) or len(session_key) != SESSION_KEY_BYTES:
        size = len(session_key) if isinstance(session_key, bytes) else type(session_key).__name__
        raise SecurityError(f"dialog security: a session key is {SESSION_KEY_BYTES} bytes, got {size}")
    return session_key


# ================================================================================================ session keys


def new_session_key() -> bytes:
    return os.urandom(SESSION_KEY_BYTES)


def wrap_key(session_key: bytes, recipient_certificate: Any) -> bytes:
    """The session key, readable only with the private key of ``recipient_certificate`` (RSA or EC)."""
    _check_session_key(session_key)
    try:
        public = _public_key(recipient_certificate)
        if isinstance(public, rsa.RSAPublicKey):
            return bytes((_TAG_RSA_OAEP,)) + public.encrypt(session_key, _OAEP)
        ephemeral = ec.generate_private_key(public.curve)
        kek = _kek(ephemeral.exchange(ec.ECDH(), public))
        point = ephemeral.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return bytes((_TAG_ECIES,)) + point + AESGCM(kek).encrypt(_ZERO_NONCE, session_key, None)
    except _BAD_INPUT as exc:
        raise SecurityError(f"dialog security: cannot wrap the session key for this certificate ({exc})") from exc


def unwrap_key(wrapped: bytes, private_key: Any) -> bytes:
    """Raises :class:`~aiobroker.errors.SecurityError` if ``wrapped`` was not made for this key or was altered."""
    unreadable = (
        "dialog security: the session key cannot be read with this private key: it was wrapped for another"
        " certificate (a binding made with the wrong certificate?) or altered on the way"
    )
    if not isinstance(wrapped, bytes | bytearray | memoryview) or len(wrapped) < 2:
        raise SecurityError(f"{unreadable} (the wrapped key is empty or not bytes)")
    wrapped = bytes(wrapped)
    tag = wrapped[0]
    if isinstance(private_key, rsa.RSAPrivateKey):
        expected_tag, kind = _TAG_RSA_OAEP, "an RSA"
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        expected_tag, kind = _TAG_ECIES, "an EC"
    else:
        raise SecurityError(
            f"dialog security: cannot read a session key with a key of type {type(private_key).__name__}"
            " (it needs an RSA or EC private key)"
        )
    if tag != expected_tag:
        made_for = _TAG_NAMES.get(tag, f"an unknown (tag {tag})")
        raise SecurityError(f"{unreadable} (it was wrapped for {made_for} key; this is {kind} key)")
    try:
        if isinstance(private_key, rsa.RSAPrivateKey):
            body = wrapped[1:]
            if len(body) != (private_key.key_size + 7) // 8:
                raise SecurityError(f"{unreadable} (its length does not fit the key)")
            session_key = private_key.decrypt(body, _OAEP)
        else:
            coordinate = (private_key.curve.key_size + 7) // 8
            point_end = 1 + 1 + 2 * coordinate
            point, sealed = wrapped[1:point_end], wrapped[point_end:]
            if point[:1] != b"\x04" or len(point) != point_end - 1 or len(sealed) != _WRAPPED_EC_KEY_BYTES:
                raise SecurityError(f"{unreadable} (its length does not fit the key)")
            ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(private_key.curve, point)
            kek = _kek(private_key.exchange(ec.ECDH(), ephemeral))
            session_key = AESGCM(kek).decrypt(_ZERO_NONCE, sealed, None)
    except (InvalidTag, *_BAD_INPUT) as exc:
        raise SecurityError(unreadable) from exc
    if len(session_key) != SESSION_KEY_BYTES:
        raise SecurityError(f"{unreadable} (it holds {len(session_key)} bytes, not {SESSION_KEY_BYTES})")
    return session_key


# ================================================================================================ signatures


def _header(conversation_id: str, from_service: str, to_service: str, wrapped_key: bytes) -> bytes:
    return b"".join(
        (
            _lp(_SIGN_LABEL),
            _lp(conversation_id.encode()),
            _lp(from_service.encode()),
            _lp(to_service.encode()),
            _lp(bytes(wrapped_key)),
        )
    )


def sign_header(
    private_key: Any, *, conversation_id: str, from_service: str, to_service: str, wrapped_key: bytes
) -> bytes:
    """The initiator's signature over the conversation id, both service names and the wrapped session key."""
    try:
        data = _header(conversation_id, from_service, to_service, wrapped_key)
        if isinstance(private_key, rsa.RSAPrivateKey):
            return private_key.sign(data, _PSS, _SHA256)
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            return private_key.sign(data, _ECDSA)
    except _BAD_INPUT as exc:
        raise SecurityError(f"dialog security: cannot sign the dialog's key header ({exc})") from exc
    raise SecurityError(
        f"dialog security: cannot sign with a key of type {type(private_key).__name__} (it needs an RSA or EC"
        " private key)"
    )


def verify_header(
    certificate: Any, signature: bytes, *, conversation_id: str, from_service: str, to_service: str, wrapped_key: bytes
) -> None:
    """Raises :class:`~aiobroker.errors.SecurityError` when the signature does not verify."""
    public = _public_key(certificate)
    try:
        data = _header(conversation_id, from_service, to_service, wrapped_key)
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(bytes(signature), data, _PSS, _SHA256)
        else:
            public.verify(bytes(signature), data, _ECDSA)
    except (InvalidSignature, *_BAD_INPUT) as exc:
        raise SecurityError(
            "dialog security: the initiator's signature over the conversation id, service names and session key"
            " does not verify with the certificate sent: the header was altered, or signed with another key"
        ) from exc


# ================================================================================================ bodies


class DialogCipher:
    """Seals and opens the bodies of one conversation (both directions) with its session key."""

    __slots__ = ("_aead", "_ad_prefix", "_traced_prefix", "_ad_by_type")

    def __init__(self, session_key: bytes, conversation_id: str) -> None:
        self._aead = AESGCM(_check_session_key(session_key))
        try:
            self._ad_prefix = _lp(_BODY_LABEL) + _lp(conversation_id.encode())
            self._traced_prefix = _lp(_TRACED_LABEL) + _lp(conversation_id.encode())
        except _BAD_INPUT as exc:
            raise SecurityError(f"dialog security: bad conversation id {conversation_id!r}") from exc
        #: message type → the associated data up to the nonce (a conversation uses a handful of types)
        self._ad_by_type: dict[str, bytes] = {}

    def _ad_for(self, message_type: str) -> bytes:
        ad = self._ad_prefix + _lp(message_type.encode())
        if len(self._ad_by_type) < _AD_CACHE_SIZE:  # bounded: a peer may send any number of type names
            self._ad_by_type[message_type] = ad
        return ad

    def seal(self, from_initiator: bool, seq: int, message_type: str, body: bytes) -> bytes:
        try:
            nonce = _NONCE.pack(from_initiator, seq)
            ad = self._ad_by_type.get(message_type) or self._ad_for(message_type)
            return self._aead.encrypt(nonce, body, ad + nonce)
        except (struct.error, *_BAD_INPUT) as exc:
            raise SecurityError(
                f"dialog security: cannot seal message {seq!r} of type {message_type!r} ({exc})"
            ) from exc

    def seal_traced(self, from_initiator: bool, seq: int, message_type: str, body: bytes, trace: str) -> bytes:
        """Seal a body together with its message's trace context (see the module's header for the format)."""
        try:
            nonce = _NONCE.pack(from_initiator, seq)
            context = trace.encode("ascii")
            plain = _TRACE_LENGTH.pack(len(context)) + context + body
            return self._aead.encrypt(nonce, plain, self._traced_prefix + _lp(message_type.encode()) + nonce)
        except (struct.error, *_BAD_INPUT) as exc:
            raise SecurityError(
                f"dialog security: cannot seal message {seq!r} of type {message_type!r} with its trace context ({exc})"
            ) from exc

    def open_traced(self, from_initiator: bool, seq: int, message_type: str, sealed: bytes) -> tuple[bytes, str]:
        """``(body, trace context)`` of a body sealed by :meth:`seal_traced`; raises
        :class:`~aiobroker.errors.SecurityError` like :meth:`open`."""
        try:
            nonce = _NONCE.pack(from_initiator, seq)
            plain = self._aead.decrypt(nonce, sealed, self._traced_prefix + _lp(message_type.encode()) + nonce)
            (n,) = _TRACE_LENGTH.unpack_from(plain)
            if len(plain) < 2 + n:
                raise ValueError("the trace context is longer than what was sealed")
            return plain[2 + n :], plain[2 : 2 + n].decode("ascii")
        except (InvalidTag, struct.error, *_BAD_INPUT) as exc:
            side = "initiator" if from_initiator else "target"
            raise SecurityError(
                f"dialog security: message {seq!r} ({message_type!r}) from the {side} does not open with its trace"
                " context: its body or context was altered, moved from another message or conversation, or sealed"
                " with another session key"
            ) from exc

    def open(self, from_initiator: bool, seq: int, message_type: str, sealed: bytes) -> bytes:
        """Raises :class:`~aiobroker.errors.SecurityError` if the body was altered, moved or sealed with another
        key."""
        try:
            nonce = _NONCE.pack(from_initiator, seq)
            ad = self._ad_by_type.get(message_type) or self._ad_for(message_type)
            return self._aead.decrypt(nonce, sealed, ad + nonce)
        except (InvalidTag, struct.error, *_BAD_INPUT) as exc:
            side = "initiator" if from_initiator else "target"
            raise SecurityError(
                f"dialog security: message {seq!r} ({message_type!r}) from the {side} does not open: its body was"
                " altered, moved from another message or conversation, or sealed with another session key"
            ) from exc
