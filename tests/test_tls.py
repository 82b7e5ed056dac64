"""Transport security: nodes and clients over mutual TLS; a side without the right certificate is refused."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from pathlib import Path

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import aiobroker
from aiobroker import NodeConfig
from aiobroker.errors import ConfigError, ConnectionLost, InvalidArgument, TLSError
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


async def test_a_client_without_a_certificate_is_refused_and_both_sides_say_why(
    pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async with aiobroker.Node(tls_node(pki, "node-a")) as a:
        with caplog.at_level(logging.WARNING, logger="aiobroker.tls"):
            # TLS 1.3: the handshake ends before the node checks; its alert arrives at the client's first read
            with pytest.raises(TLSError) as refused:
                async with aiobroker.connect(a.url, ca=pki["ca"]):
                    pass
            with anyio.fail_after(5):
                while "TLS handshake with 127.0.0.1" not in caplog.text:
                    await anyio.sleep(0.02)
        assert "the node requires a client certificate" in refused.value.message, refused.value.message
        assert isinstance(tls_cause(refused.value), ssl.SSLError)  # the original, chained
        assert "gave no certificate, and one is required" in caplog.text
        assert "connection refused" in caplog.text
        async with connect_tls(a, pki) as client:  # the right certificate still gets in
            assert (await client.status())["node"]["connections"] == 1


async def test_a_tls_1_2_client_without_a_certificate_is_told_the_handshake_was_refused(pki: dict[str, Path]) -> None:
    ctx = client_context(ca=pki["ca"])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # here the node's verdict comes in the handshake itself
    async with aiobroker.Node(tls_node(pki, "node-a")) as a:
        with pytest.raises(TLSError, match="the node refused the TLS handshake .*requires a client certificate"):
            async with aiobroker.connect(a.url, ssl_context=ctx):
                pass


async def test_a_client_certificate_from_another_ca_is_refused_in_words(pki: dict[str, Path]) -> None:
    async with aiobroker.Node(tls_node(pki, "node-a")) as a:
        with pytest.raises(TLSError, match=r"the node does not trust this client's certificate \(unknown CA\)"):
            async with aiobroker.connect(a.url, ca=pki["ca"], cert=pki["rogue"], key=pki["rogue.key"]):
                pass


async def test_a_node_certificate_from_an_unknown_ca_is_refused_in_words(pki: dict[str, Path]) -> None:
    async with aiobroker.Node(tls_node(pki, "node-a")) as a:
        for ca in (pki["rogue_ca"], None):  # another CA's file; the system's trust store
            with pytest.raises(TLSError, match="certificate verify failed: .*this client does not trust the CA") as refused:
                async with aiobroker.connect(a.url, ca=ca, cert=pki["client"], key=pki["client.key"]):
                    pass
            assert isinstance(tls_cause(refused.value), ssl.SSLCertVerificationError)


async def test_a_tls_node_calls_itself_tls_and_the_client_takes_files_or_a_context(pki: dict[str, Path]) -> None:
    async with aiobroker.Node(tls_node(pki, "node-a")) as a:
        assert a.url == f"tls://127.0.0.1:{a.port}"
        async with aiobroker.connect(a.url, ca=pki["ca"], cert=pki["client"], key=pki["client.key"]) as client:
            assert (await client.status())["node"]["listen"] == a.url
        with pytest.raises(InvalidArgument, match=f"write tls://127.0.0.1:{a.port}"):
            aiobroker.connect(f"tcp://127.0.0.1:{a.port}", ca=pki["ca"])
        with pytest.raises(InvalidArgument, match="give ssl_context or ca, not both"):
            aiobroker.connect(a.url, ca=pki["ca"], ssl_context=client_context(ca=pki["ca"]))
        with pytest.raises(ConfigError, match="needs both cert and key; key .* is missing"):
            aiobroker.connect(a.url, ca=pki["ca"], cert=pki["client"])
        with pytest.raises(ConfigError, match="TLS CA file .*nowhere.pem does not exist"):
            aiobroker.connect(a.url, ca=pki["ca"].parent / "nowhere.pem")


async def test_a_plain_tcp_client_cannot_talk_to_a_tls_node_and_is_told_to_dial_tls(pki: dict[str, Path]) -> None:
    async with aiobroker.Node(tls_node(pki, "node-a")) as a:
        plain = a.url.replace("tls://", "tcp://")
        with pytest.raises(ConnectionLost, match=f"if the node speaks TLS, dial tls://127.0.0.1:{a.port}"):
            async with aiobroker.connect(plain, handshake_timeout=3):
                pass


async def test_a_tls_client_to_a_plain_node_is_told_it_does_not_speak_tls(
    pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    async with aiobroker.Node(NodeConfig(store="memory", listen_port=0)) as plain:
        assert plain.url.startswith("tcp://")
        with pytest.raises(TLSError, match="the node does not speak TLS"):
            async with aiobroker.connect(plain.url.replace("tcp://", "tls://"), ca=pki["ca"]):
                pass
    # and the node's log says what came, not "a frame of 369 million bytes"
    assert "this looks like a TLS handshake, and this side speaks plain TCP" in caplog.text, caplog.text


def tls_cause(exc: BaseException) -> BaseException | None:
    """The ssl error a TLSError translates, somewhere down its cause chain."""
    seen = exc.__cause__
    while seen is not None and not isinstance(seen, ssl.SSLError):
        seen = seen.__cause__
    return seen


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
            assert "TLS handshake failed: certificate verify failed" in links[0]["last_error"], links[0]
            assert "does not trust the CA" in links[0]["last_error"], links[0]


async def test_a_node_without_tls_says_so_for_a_tls_route(pki: dict[str, Path]) -> None:
    async with aiobroker.Node(tls_node(pki, "node-b")) as b, aiobroker.Node(
        NodeConfig(store="memory", listen_port=0, ack_timeout=2.0, connect_timeout=2.0)
    ) as plain:
        async with aiobroker.connect(plain.url) as client:
            await client.create_queue("q")
            await client.create_service("svc", "q")
            await client.create_route("to-b", b.url, service_name="svcB")  # tls://, as the node prints it
            dialog = await client.begin_dialog("svc", "svcB")
            await dialog.send("DEFAULT", b"stays here")
            with anyio.fail_after(15):
                while True:
                    links = (await client.status())["transmission"]["links"]
                    if links and links[0]["last_error"]:
                        break
                    await anyio.sleep(0.05)
            assert f"{b.url} speaks TLS and this node does not" in links[0]["last_error"], links[0]


async def test_bad_certificate_files_are_a_clear_error(pki: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=f"NodeConfig.tls_cert: file {missing} does not exist"):
        NodeConfig(store="memory", listen_port=0, tls_cert=missing, tls_key=pki["node-a.key"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"\[tls\] cert .*garbage.pem and \[tls\] key .*garbage.pem cannot be used"):
        async with aiobroker.Node(NodeConfig(store="memory", listen_port=0, tls_cert=garbage, tls_key=garbage)):
            pass
    with pytest.raises(ConfigError, match="cert and key go together"):
        NodeConfig(tls_cert=pki["node-a"])
