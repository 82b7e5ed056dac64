"""Certificates for tests: one builder for any key type and dates, and a cached RSA certificate by name and size
(key generation is slow). The project's own ``aiobroker.security.certs.create_self_signed`` makes only the key
types dialog security accepts; tests also need refused ones (RSA 1024, Ed25519) and dates in the past."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import NameOID


def self_signed(key: Any, *, cn: str = "test", not_before: float, not_after: float) -> bytes:
    """A self-signed PEM certificate for ``key`` (any key type, so refused types can be made too)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.fromtimestamp(not_before, UTC))
        .not_valid_after(datetime.fromtimestamp(not_after, UTC))
        .sign(key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@functools.cache
def rsa_certificate(common_name: str = "orders-owner", bits: int = 2048) -> str:
    """A self-signed RSA certificate valid from 5 minutes ago for 30 days, PEM text; one per name and size."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    now = time.time()
    return self_signed(key, cn=common_name, not_before=now - 300, not_after=now + 30 * 86400).decode("ascii")
