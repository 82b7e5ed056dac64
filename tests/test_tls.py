"""Transport security: nodes and clients over mutual TLS; a side without the right certificate is refused."""

from __future__ import annotations

import datetime
import ipaddress
import logging
from pathlib import Path

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import aiobroker
from aiobroker import NodeConfig
from aiobroker.errors import ConfigError, ConnectionLost
from aiobroker.transport.tls import client_context

pytestmark = pytest.mark.anyio


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: Path, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{cn}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def issue(directory: Path, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path], cn: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by ``ca``; returns (cert path, key path)."""
    ca_key, ca_cert, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{cn}.pem", directory / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = make_ca(tmp_path, "federation-ca")
    rogue_ca = make_ca(tmp_path, "rogue-ca")
    out = {"ca": ca[2], "rogue_ca": rogue_ca[2]}
    for name in ("node-a", "node-b", "client"):
        out[name], out[name + ".key"] = issue(tmp_path, ca, name)
    out["rogue"], out["rogue.key"] = issue(tmp_path, rogue_ca, "rogue")
    return out


def tls_node(pki: dict[str, Path], name: str, **extra: object) -> NodeConfig:
    return NodeConfig(
        store="memory",
        listen_port=0,
        tls_cert=pki[name],
        tls_key=pki[name + ".key"],
        tls_ca=pki["ca"],
        ack_timeout=2.0,
        connect_timeout=2.0,
        handshake_timeout=2.0,
        **extra,  # type: ignore[arg-type]
    )


def connect_tls(node: aiobroker.Node, pki: dict[str, Path], name: str = "client") -> aiobroker.Client:
    return aiobroker.connect(
        node.url, ssl_context=client_context(ca=pki["ca"], cert=pki[name], key=pki[name + ".key"])
    )


async def test_two_nodes_federate_over_mutual_tls(pki: dict[str, Path]) -> None:
    async with aiobroker.Node(tls_node(pki, "node-a")) as a, aiobroker.Node(tls_node(pki, "node-b")) as b:
        async with connect_tls(a, pki) as ca, connect_tls(b, pki) as cb:
            await ca.create_queue("qa")
            await ca.create_service("svcA", "qa")
            await ca.create_route("to-b", b.url, service_name="svcB")
            await cb.create_queue("qb")
            await cb.create_service("svcB", "qb", ["DEFAULT"])
            dialog = await ca.begin_dialog("svcA", "svcB")
            await dialog.send_many([("DEFAULT", b"%d" % i) for i in range(50)])
            got: list[int] = []
            with anyio.fail_after(15):
                while len(got) < 50:
                    batch = await cb.receive("qb", max_messages=100, timeout=10)
                    got.extend(int(m.body) for m in batch)
                    await batch.commit()
            assert got == list(range(50))


async def test_a_client_without_a_certificate_is_refused_and_the_node_says_why(
    pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async with aiobroker.Node(tls_node(pki, "node-a")) as a:
        with caplog.at_level(logging.WARNING, logger="aiobroker.tls"):
            with pytest.raises(ConnectionLost):
                async with aiobroker.connect(a.url, ssl_context=client_context(ca=pki["ca"])):
                    pass
            with anyio.fail_after(5):
                while "TLS handshake with 127.0.0.1" not in caplog.text:
                    await anyio.sleep(0.02)
        assert "connection refused" in caplog.text
        async with connect_tls(a, pki) as client:  # the right certificate still gets in
            assert (await client.status())["node"]["connections"] == 1


async def test_a_plain_tcp_client_cannot_talk_to_a_tls_node(pki: dict[str, Path]) -> None:
    async with aiobroker.Node(tls_node(pki, "node-a")) as a:
        with pytest.raises((ConnectionLost, aiobroker.Timeout)):
            async with aiobroker.connect(a.url, handshake_timeout=3):
                pass


async def test_a_peer_with_a_certificate_from_another_ca_cannot_link(pki: dict[str, Path]) -> None:
    async with aiobroker.Node(tls_node(pki, "node-a")) as a, aiobroker.Node(tls_node(pki, "rogue")) as rogue:
        async with connect_tls(a, pki) as ca:
            await ca.create_queue("qa")
            await ca.create_service("svcA", "qa")
            await ca.create_route("to-rogue", rogue.url, service_name="svcR")
            dialog = await ca.begin_dialog("svcA", "svcR")
            await dialog.send("DEFAULT", b"must not reach the rogue node")
            with anyio.fail_after(15):
                while True:
                    links = (await ca.status())["transmission"]["links"]
                    if links and links[0]["last_error"]:
                        break
                    await anyio.sleep(0.05)
            assert "TLS handshake failed" in links[0]["last_error"], links[0]
            verify_failures = ("unable to get local issuer certificate", "certificate verify failed", "unknown ca")
            assert any(words in links[0]["last_error"] for words in verify_failures), links[0]


async def test_bad_certificate_files_are_a_clear_error(pki: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        async with aiobroker.Node(
            NodeConfig(store="memory", listen_port=0, tls_cert=tmp_path / "missing.pem", tls_key=tmp_path / "x.key")
        ):
            pass
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot be used"):
        async with aiobroker.Node(NodeConfig(store="memory", listen_port=0, tls_cert=garbage, tls_key=garbage)):
            pass
    with pytest.raises(ConfigError, match="cert and key go together"):
        NodeConfig(tls_cert=pki["node-a"])
