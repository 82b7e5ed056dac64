"""X.509 certificates and private keys: read (PEM), check (dates, key type, key matches certificate), fingerprint,
and make a self-signed pair for a user who has none (``aiobroker cert create``).

Every failure is an :class:`~aiobroker.errors.SecurityError` whose message starts with ``what`` (for example
``"identity 'alice': certificate"``), says what is wrong in words, and what to do.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.x509.oid import NameOID

from ..errors import InvalidArgument, SecurityError

#: Key types dialog security can use: RSA (at least 2048 bits) and EC on the NIST curves P-256, P-384, P-521.
MIN_RSA_BITS = 2048

#: cryptography's curve name → the NIST name people know.
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}

#: What parsing may raise for bad input. Warnings are here too: cryptography warns about some malformed
#: certificates (a negative serial number, say), and a program run with ``-W error`` gets them as exceptions.
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    OverflowError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    Warning,
)

#: One label of a DNS name (RFC 1123): letters, digits and inner hyphens, at most 63 characters.
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

_MAKE_ONE = "make one with `aiobroker cert create --name NAME --out PREFIX`"
_USABLE = "RSA (at least 2048 bits) or EC on P-256, P-384 or P-521"


@dataclass(frozen=True, slots=True)
class Credentials:
    """A parsed certificate, its private key when we hold it, and the facts the core needs fast."""

    certificate: Any  #: cryptography.x509.Certificate
    private_key: Any | None  #: RSAPrivateKey | EllipticCurvePrivateKey | None
    fingerprint: str  #: lowercase hex SHA-256 of the certificate's DER bytes
    subject: str  #: the certificate's subject, RFC 4514 text
    not_before: float  #: POSIX seconds
    not_after: float  #: POSIX seconds
    der: bytes  #: the certificate's DER bytes (what travels in a dialog's first message)


# ============================================================================================== helpers


def _error(what: str, text: str) -> SecurityError:
    return SecurityError(f"{what}: {text}")


def _as_bytes(data: object, what: str, thing: str) -> bytes:
    if isinstance(data, str):
        try:
            return data.encode("ascii")
        except UnicodeEncodeError as exc:
            raise _error(what, f"the {thing} is not PEM: PEM text is plain ASCII; {_MAKE_ONE}") from exc
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise _error(what, f"the {thing} must be PEM text or bytes, not {type(data).__name__}")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe_key(key: Any) -> str:
    """Words for a key's type and size: ``RSA 2048-bit``, ``EC P-256``, ``Ed25519``."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA {key.key_size}-bit"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return f"EC {_CURVES.get(key.curve.name, key.curve.name)}"
    for kinds, name in (
        ((ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey), "Ed25519"),
        ((ed448.Ed448PublicKey, ed448.Ed448PrivateKey), "Ed448"),
        ((x25519.X25519PublicKey, x25519.X25519PrivateKey), "X25519"),
        ((x448.X448PublicKey, x448.X448PrivateKey), "X448"),
        ((dsa.DSAPublicKey, dsa.DSAPrivateKey), "DSA"),
    ):
        if isinstance(key, kinds):
            return name
    return type(key).__name__


def _check_key_type(key: Any, what: str, thing: str) -> None:
    """Refuse a key dialog security cannot use (wrap a session key for it, or sign with it)."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise _error(
                what,
                f"the {thing} has an RSA key of {key.key_size} bits, too small for dialog security (at least"
                f" {MIN_RSA_BITS}); {_MAKE_ONE}",
            )
        return
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name not in _CURVES:
            raise _error(
                what,
                f"the {thing} has an EC key on curve {key.curve.name}, which dialog security cannot use (it needs"
                f" {_USABLE}); {_MAKE_ONE}",
            )
        return
    raise _error(
        what,
        f"the {thing} has a key of type {_describe_key(key)}, which dialog security cannot use (it needs {_USABLE});"
        f" {_MAKE_ONE}",
    )


def _public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def _checked_certificate(cert: x509.Certificate, what: str) -> x509.Certificate:
    """Read the parts of ``cert`` parsed lazily (its key, subject, dates) so that a damaged one fails here."""
    try:
        key = cert.public_key()
        facts = (cert.subject.rfc4514_string(), cert.not_valid_before_utc, cert.not_valid_after_utc)
    except _PARSE_ERRORS as exc:
        raise _error(what, f"the certificate does not parse ({_reason(exc)}); {_MAKE_ONE}") from exc
    del facts  # read only to fail early
    _check_key_type(key, what, "certificate")
    return cert


def _reason(exc: BaseException) -> str:
    """cryptography's words, shortened to their first sentence."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "ParseError" in text or "asn1" in text.lower():
        return "its ASN.1 structure is malformed"  # the parser's own words name Rust types, not the problem
    first = text.split(". See ")[0].split(" See https://")[0]
    return first[:160]


# ============================================================================================== loading


def load_certificate(pem: str | bytes, *, what: str) -> Any:
    """Parse one PEM certificate; refuse key types dialog security cannot use."""
    data = _as_bytes(pem, what, "certificate")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        if b"PRIVATE KEY-----" in data:
            problem = "this is a private key, not a certificate (a file starting -----BEGIN CERTIFICATE-----)"
        elif data[:1] == b"\x30":
            problem = (
                "this looks like a DER (binary) certificate; give it in PEM"
                " (`openssl x509 -inform der -in FILE -out FILE.pem`)"
            )
        elif not data.strip():
            problem = "it is empty"
        else:
            problem = "it is not a PEM certificate (no -----BEGIN CERTIFICATE----- line)"
        raise _error(what, f"the certificate does not parse: {problem}; {_MAKE_ONE}")
    try:
        cert = x509.load_pem_x509_certificate(data)
    except _PARSE_ERRORS as exc:
        raise _error(
            what, f"the certificate does not parse ({_reason(exc)}; truncated or altered?); {_MAKE_ONE}"
        ) from exc
    return _checked_certificate(cert, what)


def load_certificate_der(der: bytes, *, what: str) -> Any:
    """Parse a DER certificate (as sent in a dialog's first message)."""
    if not isinstance(der, bytes | bytearray | memoryview):
        raise _error(what, f"the certificate must be DER bytes, not {type(der).__name__}")
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
    except _PARSE_ERRORS as exc:
        raise _error(what, f"the certificate does not parse as DER ({_reason(exc)})") from exc
    return _checked_certificate(cert, what)


def load_private_key(pem: str | bytes, *, what: str) -> Any:
    """Parse an unencrypted PEM private key (PKCS#8 or traditional)."""
    data = _as_bytes(pem, what, "private key")
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or (b"PRIVATE KEY-----" in data and b"ENCRYPTED" in data):
        raise _error(
            what,
            "the private key is encrypted with a passphrase, which the node cannot type in; give it unencrypted"
            " (`openssl pkey -in KEY -out KEY.plain`) and keep the file private",
        )
    if b"PRIVATE KEY-----" not in data:
        if b"-----BEGIN CERTIFICATE-----" in data:
            problem = "this is a certificate, not a private key (a file starting -----BEGIN PRIVATE KEY-----)"
        elif b"-----BEGIN PUBLIC KEY-----" in data:
            problem = "this is a public key; the private key is needed"
        elif not data.strip():
            problem = "it is empty"
        else:
            problem = "it is not a PEM private key (no -----BEGIN PRIVATE KEY----- line)"
        raise _error(what, f"the private key does not parse: {problem}; {_MAKE_ONE}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except _PARSE_ERRORS as exc:
        raise _error(
            what, f"the private key does not parse ({_reason(exc)}; truncated or altered?); {_MAKE_ONE}"
        ) from exc
    _check_key_type(key, what, "private key")
    return key


def _credentials(cert: x509.Certificate, key: Any | None, what: str) -> Credentials:
    try:
        der = cert.public_bytes(serialization.Encoding.DER)
        subject = cert.subject.rfc4514_string()
        not_before = cert.not_valid_before_utc.timestamp()
        not_after = cert.not_valid_after_utc.timestamp()
    except _PARSE_ERRORS as exc:  # pragma: no cover - _checked_certificate read these already
        raise _error(what, f"the certificate does not parse ({_reason(exc)}); {_MAKE_ONE}") from exc
    fp = hashlib.sha256(der).hexdigest()
    if key is not None:
        cert_public = _public_der(cert.public_key())
        key_public = _public_der(key.public_key())
        if cert_public != key_public:
            raise _error(
                what,
                f"the private key ({_describe_key(key)}, public key SHA-256"
                f" {hashlib.sha256(key_public).hexdigest()[:16]}...) does not belong to the certificate"
                f" ({subject or '(empty subject)'}, {_describe_key(cert.public_key())}, fingerprint {fp[:16]}...);"
                " give the key the certificate was made for, or make a new pair with"
                " `aiobroker cert create --name NAME --out PREFIX`",
            )
    return Credentials(
        certificate=cert,
        private_key=key,
        fingerprint=fp,
        subject=subject,
        not_before=not_before,
        not_after=not_after,
        der=der,
    )


def credentials(certificate_pem: str | bytes, private_key_pem: str | bytes | None = None, *, what: str) -> Credentials:
    """Parse both and check that the key belongs to the certificate (a mismatch is an error naming both)."""
    cert = load_certificate(certificate_pem, what=what)
    key = None if private_key_pem is None else load_private_key(private_key_pem, what=what)
    return _credentials(cert, key, what)


def credentials_from_der(der: bytes, *, what: str) -> Credentials:
    return _credentials(load_certificate_der(der, what=what), None, what)


# ============================================================================================== checking


def check_current(creds: Credentials, now: float, *, what: str) -> None:
    """Raise if the certificate is not valid at ``now`` (expired: says when, and how to make a new one)."""
    if now < creds.not_before:
        raise _error(
            what,
            f"the certificate ({creds.subject}) is not valid before {_iso(creds.not_before)} (UTC; it is now"
            f" {_iso(now)}); check the clocks of this machine and the one that made it, or wait until then",
        )
    if now > creds.not_after:
        raise _error(
            what,
            f"the certificate ({creds.subject}) expired on {_iso(creds.not_after)} (UTC; it is now {_iso(now)});"
            " make a new one with `aiobroker cert create --name NAME --out PREFIX` and put it in place of the old"
            " (its peers need the new certificate too)",
        )


def fingerprint(certificate: Any) -> str:
    """Lowercase hex SHA-256 of the certificate's DER bytes (what ``list identities`` shows and TLS peers match)."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


# ============================================================================================== making


def create_self_signed(
    common_name: str,
    *,
    days: int = 365,
    key_type: str = "rsa",
    now: float | None = None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> tuple[str, str]:
    """A new private key and a self-signed certificate for it: ``(certificate_pem, private_key_pem)``.
    ``key_type``: ``"rsa"`` (3072 bits) or ``"ec"`` (P-256). ``dns_names`` and ``ip_addresses`` become its
    subject alternative names: a TLS client that checks host names (the default) accepts a node's certificate
    only if they hold the host name or IP address it dialled; the common name is not looked at."""
    if not isinstance(common_name, str) or not common_name.strip():
        raise InvalidArgument("certificate name: give a non-empty name (it becomes the certificate's common name)")
    if len(common_name) > 64:
        raise InvalidArgument(
            f"certificate name: {common_name!r} is {len(common_name)} characters; a common name has at most 64"
        )
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 36500:
        raise InvalidArgument(f"certificate days: expected a whole number from 1 to 36500, got {days!r}")
    alt_names = _alt_names(dns_names, ip_addresses)
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    elif key_type == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise InvalidArgument(f"certificate key type: expected 'rsa' or 'ec', got {key_type!r}")
    public = key.public_key()
    try:
        start = datetime.fromtimestamp(time.time() if now is None else now, UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - timedelta(seconds=60))
            .not_valid_after(start + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=key_type == "rsa",
                    data_encipherment=False,
                    key_agreement=key_type == "ec",
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(key, hashes.SHA256())
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidArgument(f"certificate for {common_name!r}: cannot be made ({_reason(exc)})") from exc
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return cert_pem, key_pem


def _alt_names(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> list[x509.GeneralName]:
    """Subject alternative names, each checked: a DNS name as a host name (``*.`` allowed at its start), an IP
    address as IPv4 or IPv6."""
    names: list[x509.GeneralName] = []
    for dns in dns_names:
        if _is_ip(dns):
            raise InvalidArgument(f"certificate DNS name: {dns!r} is an IP address; give it as an IP address (--ip)")
        labels = dns.removeprefix("*.").rstrip(".").split(".") if isinstance(dns, str) else []
        if not labels or not all(_DNS_LABEL.fullmatch(label) for label in labels) or len(dns) > 253:
            raise InvalidArgument(
                f"certificate DNS name: {dns!r} is not a host name (letters, digits and '-' in dot-separated"
                " labels, such as node1.example.com or localhost; an IP address goes in --ip)"
            )
        names.append(x509.DNSName(dns.rstrip(".")))
    for ip in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise InvalidArgument(
                f"certificate IP address: {ip!r} is not an IPv4 or IPv6 address (such as 127.0.0.1 or ::1;"
                " a host name goes in --dns)"
            ) from None
    return names


def _is_ip(text: object) -> bool:
    try:
        ipaddress.ip_address(text)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def read_pem_file(path: Path) -> str:
    """The text of a PEM file. Raises :class:`FileNotFoundError` (the caller says where relative paths start) or
    :class:`~aiobroker.errors.SecurityError` whose message is the reason alone (``is a directory, not a PEM
    file``), for the caller to put after the file's name."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise SecurityError("is a directory, not a PEM file") from None
    except OSError as exc:
        raise SecurityError(f"cannot be read: {exc.strerror or exc}") from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise SecurityError(
            "is not PEM text (a DER file? convert it: openssl x509 -inform der -in FILE -out FILE.pem)"
        ) from None
