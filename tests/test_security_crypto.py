"""Dialog security's cryptography, on bytes alone: certificates and keys (``aiobroker.security.certs``), session keys,
key headers and sealed bodies (``aiobroker.security.dialog``), and ``aiobroker cert create``.

Keys are made once per module (RSA 2048 for speed; ``create_self_signed`` makes RSA 3072, tested once). Every
negative test also checks its untampered control succeeds, so a failure to open means the tampering was caught.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cert_helpers import self_signed
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiobroker.errors import InvalidArgument, SecurityError
from aiobroker.security import certs, dialog
from aiobroker.security.certs import Credentials

NOW = 1_750_000_000.0  # a fixed "now" (2025-06-15), so dates in messages are known
DAY = 86400.0
WHAT = "identity 'alice'"
EXAMPLES = int(os.environ.get("AIOBROKER_TEST_EXAMPLES", "200"))  # more to hunt harder
CONV = "6f1d2c3b-4a59-4e8f-9d0c-1b2a3c4d5e6f"


# ================================================================================================ helpers


def pem_key(key: Any) -> bytes:
    der: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return der


def make_cert(
    key: Any,
    *,
    cn: str = "test",
    not_before: float = NOW - DAY,
    not_after: float = NOW + 365 * DAY,
) -> bytes:
    """A self-signed PEM certificate for ``key`` (any key type, so refused types can be made too)."""
    return self_signed(key, cn=cn, not_before=not_before, not_after=not_after)


@dataclass(frozen=True)
class Pair:
    name: str
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    creds: Credentials = field(repr=False)


def make_pair(name: str, key: Any) -> Pair:
    cert_pem = make_cert(key, cn=name)
    key_pem = pem_key(key)
    return Pair(name, cert_pem, key_pem, certs.credentials(cert_pem, key_pem, what=name))


@pytest.fixture(scope="module")
def pairs() -> dict[str, Pair]:
    """Two RSA 2048 and two EC P-256 identities, plus one on P-384 and one on P-521."""
    return {
        "rsa": make_pair("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "rsa2": make_pair("rsa2", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "ec": make_pair("ec", ec.generate_private_key(ec.SECP256R1())),
        "ec2": make_pair("ec2", ec.generate_private_key(ec.SECP256R1())),
        "p384": make_pair("p384", ec.generate_private_key(ec.SECP384R1())),
        "p521": make_pair("p521", ec.generate_private_key(ec.SECP521R1())),
    }


#: The wrong key for each kind: same type other key, and the other type.
WRONG_KEYS = [("rsa", "rsa2"), ("rsa", "ec"), ("ec", "ec2"), ("ec", "rsa"), ("ec", "p384"), ("p384", "ec")]


def flip(data: bytes, i: int, mask: int = 0x01) -> bytes:
    return data[:i] + bytes((data[i] ^ mask,)) + data[i + 1 :]


def refused(call: Callable[[], object], *words: str, starts: str | None = None) -> str:
    """``call`` raises SecurityError whose message contains ``words`` (and starts with ``starts``)."""
    with pytest.raises(SecurityError) as info:
        call()
    message = info.value.message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    if starts is not None:
        assert message.startswith(starts), message
    return message


# ================================================================================================ certificates


def test_create_self_signed_ec_fields_and_dates() -> None:
    cert_pem, key_pem = certs.create_self_signed("alice", days=30, key_type="ec", now=NOW)
    assert cert_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert key_pem.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    creds = certs.credentials(cert_pem, key_pem, what=WHAT)
    assert creds.subject == "CN=alice"
    assert creds.not_before == NOW - 60
    assert creds.not_after == NOW + 30 * DAY
    assert isinstance(creds.private_key, ec.EllipticCurvePrivateKey)
    assert creds.private_key.curve.name == "secp256r1"
    certs.check_current(creds, NOW, what=WHAT)


def test_create_self_signed_rsa_is_3072_bits() -> None:
    cert_pem, key_pem = certs.create_self_signed("node", key_type="rsa", now=NOW)
    creds = certs.credentials(cert_pem, key_pem, what="identity 'node'")
    assert isinstance(creds.private_key, rsa.RSAPrivateKey)
    assert creds.private_key.key_size == 3072
    assert creds.not_after == NOW + 365 * DAY


@pytest.mark.parametrize(
    ("args", "word"),
    [
        ({"common_name": "a", "key_type": "dsa"}, "'dsa'"),
        ({"common_name": "", "key_type": "ec"}, "name"),
        ({"common_name": "x" * 65, "key_type": "ec"}, "64"),
        ({"common_name": "a", "key_type": "ec", "days": 0}, "days"),
    ],
)
def test_create_self_signed_refuses_bad_arguments(args: dict[str, Any], word: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(word)):
        certs.create_self_signed(**args)


def test_fingerprint_is_sha256_of_der_and_stable(pairs: dict[str, Pair]) -> None:
    creds = pairs["ec"].creds
    assert re.fullmatch(r"[0-9a-f]{64}", creds.fingerprint)
    assert creds.fingerprint == hashlib.sha256(creds.der).hexdigest()
    assert certs.fingerprint(creds.certificate) == creds.fingerprint
    again = certs.credentials(pairs["ec"].cert_pem.decode(), what=WHAT)  # str as well as bytes, no key
    assert again.fingerprint == creds.fingerprint
    assert certs.credentials_from_der(creds.der, what=WHAT).fingerprint == creds.fingerprint
    assert certs.fingerprint(certs.load_certificate_der(creds.der, what=WHAT)) == creds.fingerprint
    assert pairs["ec2"].creds.fingerprint != creds.fingerprint


def test_traditional_key_formats_are_accepted(pairs: dict[str, Pair]) -> None:
    for name in ("rsa", "ec"):
        key = pairs[name].creds.private_key
        traditional = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        assert b"BEGIN RSA PRIVATE KEY" in traditional or b"BEGIN EC PRIVATE KEY" in traditional
        creds = certs.credentials(pairs[name].cert_pem, traditional, what=WHAT)
        assert creds.fingerprint == pairs[name].creds.fingerprint


def test_expired_certificate_is_refused_with_its_date() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    cert_pem, _ = certs.create_self_signed("old", days=10, key_type="ec", now=start)
    creds = certs.credentials(cert_pem, what=WHAT)
    certs.check_current(creds, creds.not_after, what=WHAT)  # the last valid second
    refused(
        lambda: certs.check_current(creds, creds.not_after + 1, what=WHAT),
        "expired",
        "2024-01-11T00:00:00Z",
        "aiobroker cert create",
        starts=WHAT,
    )


def test_not_yet_valid_certificate_is_refused_with_its_date() -> None:
    start = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    cert_pem, _ = certs.create_self_signed("future", key_type="ec", now=start)
    creds = certs.credentials(cert_pem, what=WHAT)
    certs.check_current(creds, start - 60, what=WHAT)  # not_before itself is valid
    refused(
        lambda: certs.check_current(creds, start - 61, what=WHAT),
        "not valid before",
        "2030-05-01T11:59:00Z",
        "clock",
        starts=WHAT,
    )


def test_key_that_does_not_match_the_certificate_is_refused_naming_both(pairs: dict[str, Pair]) -> None:
    for cert_of, key_of in WRONG_KEYS:
        cert, key = pairs[cert_of], pairs[key_of]
        certs.credentials(cert.cert_pem, cert.key_pem, what=WHAT)  # control: its own key matches
        message = refused(
            lambda cert=cert, key=key: certs.credentials(cert.cert_pem, key.key_pem, what=WHAT),
            "private key",
            "does not belong",
            f"CN={cert_of}",
            cert.creds.fingerprint[:16],
            starts=WHAT + ":",
        )
        assert ("RSA" if key_of.startswith("rsa") else "EC") in message


def test_small_rsa_key_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cert_pem = make_cert(small)
    refused(
        lambda: certs.load_certificate(cert_pem, what=WHAT), "1024", "2048", "aiobroker cert create", starts=WHAT
    )
    refused(lambda: certs.load_private_key(pem_key(small), what=WHAT), "1024", starts=WHAT)
    refused(lambda: certs.credentials(cert_pem, pem_key(small), what=WHAT), "1024", starts=WHAT)


def test_ed25519_certificate_is_refused() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    cert_pem = make_cert(key)
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    refused(lambda: certs.load_certificate(cert_pem, what=WHAT), "Ed25519", "aiobroker cert create", starts=WHAT)
    refused(lambda: certs.load_certificate_der(der, what=WHAT), "Ed25519", starts=WHAT)
    refused(lambda: certs.load_private_key(pem_key(key), what=WHAT), "Ed25519", starts=WHAT)


def test_other_ec_curve_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256K1())
    refused(lambda: certs.load_certificate(make_cert(key), what=WHAT), "secp256k1", "P-256", starts=WHAT)


def test_encrypted_private_key_is_refused(pairs: dict[str, Pair]) -> None:
    encrypted = pairs["ec"].creds.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    refused(lambda: certs.load_private_key(encrypted, what=WHAT), "encrypted", "unencrypted", starts=WHAT)


def test_wrong_kind_of_pem_says_what_it_is(pairs: dict[str, Pair]) -> None:
    p = pairs["ec"]
    refused(lambda: certs.load_certificate(p.key_pem, what=WHAT), "private key, not a certificate", starts=WHAT)
    refused(lambda: certs.load_private_key(p.cert_pem, what=WHAT), "certificate, not a private key", starts=WHAT)
    refused(lambda: certs.load_certificate(p.creds.der, what=WHAT), "DER", starts=WHAT)
    refused(lambda: certs.load_certificate("", what=WHAT), "empty", starts=WHAT)
    public = p.creds.certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    refused(lambda: certs.load_private_key(public, what=WHAT), "public key", starts=WHAT)


def test_certificate_cryptography_warns_about_is_a_security_error_under_w_error(pairs: dict[str, Pair]) -> None:
    """A negative serial number makes cryptography warn; with warnings as errors that must still be ours."""
    der = bytearray(pairs["ec"].creds.der)
    serial = der.index(bytes((0xA0, 0x03, 0x02, 0x01, 0x02, 0x02))) + 7  # after [0] version 3, INTEGER, length
    der[serial] |= 0x80
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refused(lambda: certs.load_certificate_der(bytes(der), what=WHAT), "does not parse", starts=WHAT)
        refused(lambda: certs.load_certificate(_wrap_pem(bytes(der), "CERTIFICATE"), what=WHAT), starts=WHAT)


def test_truncated_pem_is_refused(pairs: dict[str, Pair]) -> None:
    cert_pem, key_pem = pairs["rsa"].cert_pem, pairs["rsa"].key_pem
    for cut in range(0, len(cert_pem) - 30, 37):
        with pytest.raises(SecurityError):
            certs.load_certificate(cert_pem[:cut], what=WHAT)
    for cut in range(0, len(key_pem) - 30, 97):
        with pytest.raises(SecurityError):
            certs.load_private_key(key_pem[:cut], what=WHAT)


LOADERS: list[Callable[[bytes], object]] = [
    lambda b: certs.load_certificate(b, what=WHAT),
    lambda b: certs.load_certificate_der(b, what=WHAT),
    lambda b: certs.load_private_key(b, what=WHAT),
    lambda b: certs.credentials(b, b, what=WHAT),
    lambda b: certs.credentials_from_der(b, what=WHAT),
]


def _wrap_pem(der: bytes, label: str) -> bytes:
    import base64

    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""])).encode()


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600), which=st.integers(0, len(LOADERS) - 1))
def test_random_bytes_only_ever_raise_security_error(data: bytes, which: int) -> None:
    with pytest.raises(SecurityError):
        LOADERS[which](data)
    with pytest.raises(SecurityError):
        LOADERS[which](_wrap_pem(data, "CERTIFICATE" if which < 2 else "PRIVATE KEY"))


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_random_text_only_ever_raises_security_error(text: str) -> None:
    with pytest.raises(SecurityError):
        certs.load_certificate(text, what=WHAT)
    with pytest.raises(SecurityError):
        certs.load_private_key("-----BEGIN PRIVATE KEY-----\n" + text, what=WHAT)


def _alter(data: st.DataObject, der: bytes) -> bytes:
    changes = data.draw(st.lists(st.tuples(st.integers(0, len(der) - 1), st.integers(1, 255)), min_size=1, max_size=3))
    altered = bytearray(der)
    for i, mask in changes:
        altered[i] ^= mask
    if data.draw(st.booleans()):
        altered = altered[: data.draw(st.integers(0, len(altered)))]
    return bytes(altered)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_altered_certificate_loads_or_raises_security_error(pairs: dict[str, Pair], data: st.DataObject) -> None:
    """A real certificate with bytes changed: either still parses (a changed signature byte does) or is a
    SecurityError; never anything else."""
    altered = _alter(data, pairs[data.draw(st.sampled_from(["rsa", "ec"]))].creds.der)
    for load in (
        lambda: certs.credentials_from_der(altered, what=WHAT),
        lambda: certs.credentials(_wrap_pem(altered, "CERTIFICATE"), what=WHAT),
    ):
        try:
            load()
        except SecurityError as exc:
            assert exc.message.startswith(WHAT)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_altered_private_key_loads_or_raises_security_error(pairs: dict[str, Pair], data: st.DataObject) -> None:
    pair = pairs[data.draw(st.sampled_from(["rsa", "ec"]))]
    der = pair.creds.private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    altered = _wrap_pem(_alter(data, der), "PRIVATE KEY")
    try:
        certs.credentials(pair.cert_pem, altered, what=WHAT)
    except SecurityError as exc:
        assert exc.message.startswith(WHAT)


# ================================================================================================ session keys


@pytest.mark.parametrize("name", ["rsa", "ec", "p384", "p521"])
def test_wrap_unwrap_round_trip(pairs: dict[str, Pair], name: str) -> None:
    creds = pairs[name].creds
    key = dialog.new_session_key()
    assert len(key) == dialog.SESSION_KEY_BYTES
    wrapped = dialog.wrap_key(key, creds.certificate)
    assert key not in wrapped
    assert dialog.unwrap_key(wrapped, creds.private_key) == key
    again = dialog.wrap_key(key, creds.certificate)
    assert again != wrapped  # randomized: OAEP padding, or a new ephemeral key
    assert dialog.unwrap_key(again, creds.private_key) == key
    assert dialog.new_session_key() != key


def test_ec_wrapped_key_layout(pairs: dict[str, Pair]) -> None:
    wrapped = dialog.wrap_key(dialog.new_session_key(), pairs["ec"].creds.certificate)
    assert wrapped[0] != dialog.wrap_key(dialog.new_session_key(), pairs["rsa"].creds.certificate)[0]
    assert wrapped[1] == 0x04  # X9.62 uncompressed point
    assert len(wrapped) == 1 + 65 + 32 + 16


@pytest.mark.parametrize(("made_for", "read_with"), WRONG_KEYS)
def test_unwrap_with_the_wrong_key_fails(pairs: dict[str, Pair], made_for: str, read_with: str) -> None:
    key = dialog.new_session_key()
    wrapped = dialog.wrap_key(key, pairs[made_for].creds.certificate)
    assert dialog.unwrap_key(wrapped, pairs[made_for].creds.private_key) == key
    refused(lambda: dialog.unwrap_key(wrapped, pairs[read_with].creds.private_key), "cannot be read")


@pytest.mark.parametrize("name", ["rsa", "ec"])
def test_unwrap_detects_any_altered_or_truncated_byte(pairs: dict[str, Pair], name: str) -> None:
    creds = pairs[name].creds
    key = dialog.new_session_key()
    wrapped = dialog.wrap_key(key, creds.certificate)
    assert dialog.unwrap_key(wrapped, creds.private_key) == key
    for i in range(len(wrapped)):
        with pytest.raises(SecurityError):
            dialog.unwrap_key(flip(wrapped, i), creds.private_key)
    for cut in range(len(wrapped)):
        with pytest.raises(SecurityError):
            dialog.unwrap_key(wrapped[:cut], creds.private_key)
    with pytest.raises(SecurityError):
        dialog.unwrap_key(wrapped + b"\0", creds.private_key)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), name=st.sampled_from(["rsa", "ec", "p521"]))
def test_unwrap_random_bytes_raises_security_error(pairs: dict[str, Pair], data: bytes, name: str) -> None:
    with pytest.raises(SecurityError):
        dialog.unwrap_key(data, pairs[name].creds.private_key)


def test_unwrap_refuses_a_wrapped_key_of_the_wrong_size(pairs: dict[str, Pair]) -> None:
    """Anyone can wrap for a public key: a well-formed wrap of a 16-byte key must still be refused."""
    creds = pairs["rsa"].creds
    tag = dialog.wrap_key(dialog.new_session_key(), creds.certificate)[:1]
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert dialog.unwrap_key(tag + creds.certificate.public_key().encrypt(bytes(32), oaep), creds.private_key) == bytes(32)
    wrapped = tag + creds.certificate.public_key().encrypt(bytes(16), oaep)
    refused(lambda: dialog.unwrap_key(wrapped, creds.private_key), "16 bytes")


def test_wrap_refuses_a_bad_session_key(pairs: dict[str, Pair]) -> None:
    refused(lambda: dialog.wrap_key(b"short", pairs["ec"].creds.certificate), "32 bytes")


# ================================================================================================ signatures


HEADER = {"conversation_id": CONV, "from_service": "//shop/Client", "to_service": "//shop/Orders"}


@pytest.mark.parametrize("name", ["rsa", "ec", "p384"])
def test_sign_verify_round_trip_and_any_change_fails(pairs: dict[str, Pair], name: str) -> None:
    creds = pairs[name].creds
    wrapped = dialog.wrap_key(dialog.new_session_key(), pairs["ec2"].creds.certificate)
    signature = dialog.sign_header(creds.private_key, wrapped_key=wrapped, **HEADER)
    dialog.verify_header(creds.certificate, signature, wrapped_key=wrapped, **HEADER)
    # the certificate as it travels (DER) verifies too
    dialog.verify_header(
        certs.load_certificate_der(creds.der, what=WHAT), signature, wrapped_key=wrapped, **HEADER
    )
    changed: list[dict[str, Any]] = [
        {**HEADER, "conversation_id": CONV[:-1] + "0", "wrapped_key": wrapped},
        {**HEADER, "from_service": "//shop/Other", "wrapped_key": wrapped},
        {**HEADER, "to_service": "//shop/Other", "wrapped_key": wrapped},
        {**HEADER, "from_service": HEADER["to_service"], "to_service": HEADER["from_service"], "wrapped_key": wrapped},
        # the same bytes split differently between fields: the encoding must not be a plain concatenation
        {**HEADER, "from_service": "//shop/Client/", "to_service": "/shop/Orders", "wrapped_key": wrapped},
        {**HEADER, "wrapped_key": flip(wrapped, len(wrapped) // 2)},
    ]
    for fields in changed:
        refused(lambda fields=fields: dialog.verify_header(creds.certificate, signature, **fields), "does not verify")


@pytest.mark.parametrize("name", ["rsa", "ec"])
def test_altered_signature_or_another_signer_fails(pairs: dict[str, Pair], name: str) -> None:
    creds = pairs[name].creds
    wrapped = b"\x02" + os.urandom(113)
    signature = dialog.sign_header(creds.private_key, wrapped_key=wrapped, **HEADER)
    dialog.verify_header(creds.certificate, signature, wrapped_key=wrapped, **HEADER)
    for i in range(len(signature)):
        with pytest.raises(SecurityError):
            dialog.verify_header(creds.certificate, flip(signature, i), wrapped_key=wrapped, **HEADER)
    for cut in (0, 1, len(signature) - 1):
        with pytest.raises(SecurityError):
            dialog.verify_header(creds.certificate, signature[:cut], wrapped_key=wrapped, **HEADER)
    other = pairs["rsa2" if name == "rsa" else "ec2"].creds
    with pytest.raises(SecurityError):
        dialog.verify_header(other.certificate, signature, wrapped_key=wrapped, **HEADER)
    with pytest.raises(SecurityError):  # another key type altogether
        dialog.verify_header(pairs["ec" if name == "rsa" else "rsa"].creds.certificate, signature, wrapped_key=wrapped, **HEADER)


def test_header_fields_that_cannot_be_encoded_are_security_errors(pairs: dict[str, Pair]) -> None:
    creds = pairs["ec"].creds
    signature = dialog.sign_header(creds.private_key, wrapped_key=b"k", **HEADER)
    bad = {**HEADER, "to_service": "//shop/\ud800"}  # a lone surrogate has no UTF-8 form
    with pytest.raises(SecurityError):
        dialog.sign_header(creds.private_key, wrapped_key=b"k", **bad)
    with pytest.raises(SecurityError):
        dialog.verify_header(creds.certificate, signature, wrapped_key=b"k", **bad)
    with pytest.raises(SecurityError):
        dialog.DialogCipher(dialog.new_session_key(), CONV).open(True, 0, "\ud800", bytes(20))


# ================================================================================================ bodies


def test_seal_open_round_trip_both_directions(pairs: dict[str, Pair]) -> None:
    key = dialog.new_session_key()
    sender, receiver = dialog.DialogCipher(key, CONV), dialog.DialogCipher(key, CONV)
    for body in (b"", b"x", os.urandom(128), os.urandom(70_000)):
        for from_initiator in (True, False):
            for seq in (0, 1, 2**64 - 1):
                sealed = sender.seal(from_initiator, seq, "//shop/Order", body)
                assert len(sealed) == len(body) + 16
                if len(body) >= 16:  # a shorter body may turn up in random bytes by chance
                    assert body not in sealed
                assert receiver.open(from_initiator, seq, "//shop/Order", sealed) == body


def test_the_two_directions_never_share_a_nonce() -> None:
    cipher = dialog.DialogCipher(dialog.new_session_key(), CONV)
    body = bytes(64)
    assert cipher.seal(True, 5, "t", body) != cipher.seal(False, 5, "t", body)
    assert cipher.seal(True, 5, "t", body) == cipher.seal(True, 5, "t", body)  # a resend is the same bytes


def test_any_altered_byte_of_a_sealed_body_fails() -> None:
    cipher = dialog.DialogCipher(dialog.new_session_key(), CONV)
    sealed = cipher.seal(True, 7, "//shop/Order", os.urandom(128))
    cipher.open(True, 7, "//shop/Order", sealed)
    for i in range(len(sealed)):
        for mask in (0x01, 0x80):
            with pytest.raises(SecurityError):
                cipher.open(True, 7, "//shop/Order", flip(sealed, i, mask))
    for cut in range(len(sealed)):
        with pytest.raises(SecurityError):
            cipher.open(True, 7, "//shop/Order", sealed[:cut])
    with pytest.raises(SecurityError):
        cipher.open(True, 7, "//shop/Order", sealed + b"\0")


def test_a_body_moved_to_another_message_fails() -> None:
    key = dialog.new_session_key()
    cipher = dialog.DialogCipher(key, CONV)
    sealed = cipher.seal(True, 7, "//shop/Order", b"one order")
    assert cipher.open(True, 7, "//shop/Order", sealed) == b"one order"
    other_conversation = "6f1d2c3b-4a59-4e8f-9d0c-1b2a3c4d5e60"
    moves: list[tuple[dialog.DialogCipher, bool, int, str]] = [
        (cipher, True, 8, "//shop/Order"),  # another sequence number
        (cipher, True, 6, "//shop/Order"),
        (cipher, True, 7 + 2**32, "//shop/Order"),
        (cipher, False, 7, "//shop/Order"),  # the other direction
        (cipher, True, 7, "//shop/Cancel"),  # another message type
        (cipher, True, 7, "//shop/Order "),
        (cipher, True, 7, ""),
        (dialog.DialogCipher(key, other_conversation), True, 7, "//shop/Order"),  # another conversation
        (dialog.DialogCipher(dialog.new_session_key(), CONV), True, 7, "//shop/Order"),  # another key
    ]
    for other, from_initiator, seq, message_type in moves:
        refused(lambda o=other, f=from_initiator, s=seq, t=message_type: o.open(f, s, t, sealed), "does not open")


def test_conversation_id_and_type_boundary_is_unambiguous() -> None:
    """Bytes that move between the conversation id and the message type must not give the same associated data."""
    key = dialog.new_session_key()
    for (conv1, type1), (conv2, type2) in (
        (("ab", "c"), ("a", "bc")),
        # would collide were the conversation id not length-prefixed: "ab" + len(5) + (len(1) + "z")
        (("ab", "\0\0\0\1z"), ("ab\0\0\0\5", "z")),
    ):
        sealed = dialog.DialogCipher(key, conv1).seal(True, 1, type1, b"body")
        assert dialog.DialogCipher(key, conv1).open(True, 1, type1, sealed) == b"body"
        with pytest.raises(SecurityError):
            dialog.DialogCipher(key, conv2).open(True, 1, type2, sealed)


@settings(max_examples=100, deadline=None)
@given(sealed=st.binary(max_size=300), seq=st.integers(-5, 2**64 + 5), from_initiator=st.booleans())
def test_opening_random_bytes_raises_security_error(sealed: bytes, seq: int, from_initiator: bool) -> None:
    cipher = dialog.DialogCipher(bytes(32), CONV)
    with pytest.raises(SecurityError):
        cipher.open(from_initiator, seq, "t", sealed)


def test_seal_refuses_bad_arguments() -> None:
    cipher = dialog.DialogCipher(dialog.new_session_key(), CONV)
    for seq in (-1, 2**64):
        with pytest.raises(SecurityError):
            cipher.seal(True, seq, "t", b"body")
    with pytest.raises(SecurityError):
        dialog.DialogCipher(b"\0" * 16, CONV)  # AES-128 is not the session key size


# ================================================================================================ the CLI


def cert_create(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiobroker", "cert", "create", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_cli_cert_create_writes_a_usable_pair(tmp_path: Path) -> None:
    out = tmp_path / "alice"
    r = cert_create("--name", "alice", "--out", str(out), "--days", "30")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    crt, key = Path(f"{out}.crt"), Path(f"{out}.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    creds = certs.credentials(crt.read_text(), key.read_text(), what="identity 'alice'")
    assert creds.subject == "CN=alice"
    assert isinstance(creds.private_key, rsa.RSAPrivateKey) and creds.private_key.key_size == 3072
    assert creds.not_after - creds.not_before == pytest.approx(30 * DAY + 60, abs=5)
    assert creds.fingerprint in r.stdout
    certs.check_current(creds, datetime.now(UTC).timestamp(), what="identity 'alice'")

    # again without --force: refused in one line, the files untouched
    before = (crt.read_bytes(), key.read_bytes())
    r = cert_create("--name", "alice", "--out", str(out), "--key-type", "ec")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aiobroker: error:") and "--force" in lines[0], r.stderr
    assert (crt.read_bytes(), key.read_bytes()) == before
    # one of the two there is enough to refuse; the other is not written either
    key.unlink()
    r = cert_create("--name", "alice", "--out", str(out), "--key-type", "ec")
    assert r.returncode == 1 and "alice.crt exists already" in r.stderr, r.stderr
    assert not key.exists() and crt.read_bytes() == before[0]
    key.write_bytes(before[1])

    # with --force: a new EC pair, the key file still private even if it was not
    key.chmod(0o644)
    r = cert_create("--name", "alice", "--out", str(out), "--key-type", "ec", "--force")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    creds2 = certs.credentials(crt.read_bytes(), key.read_bytes(), what="identity 'alice'")
    assert isinstance(creds2.private_key, ec.EllipticCurvePrivateKey)
    assert creds2.fingerprint != creds.fingerprint


def test_cli_cert_help_has_an_example() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "aiobroker", "cert", "create", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0
    assert "aiobroker cert create --name" in r.stdout.split("example")[-1]


def test_expiry_boundaries_match_the_certificate() -> None:
    """The Credentials dates are the certificate's own (not_valid_before/after), to the second."""
    start = NOW
    cert_pem, _ = certs.create_self_signed("x", days=2, key_type="ec", now=start)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    creds = certs.credentials(cert_pem, what=WHAT)
    assert cert.not_valid_before_utc == datetime.fromtimestamp(start, UTC) - timedelta(seconds=60)
    assert creds.not_after == cert.not_valid_after_utc.timestamp() == start + 2 * DAY
