"""The command line and a node that speaks TLS, driven as a user would: certificates made by ``aiobroker cert
create`` (with --dns/--ip names), a node run by ``aiobroker serve --config`` in its own process, and every client
command dialling the ``tls://`` address the node printed. Each refusal is asserted on its words.

Also here: a config naming a file that is not there fails at ``serve`` in one line naming the key and the path.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from node_process import stop_by_pid
from test_cli import AIOBROKER, STARTUP_DEADLINE, STOP_DEADLINE, one_line_error, run

pytestmark = pytest.mark.slow


def cert_create(directory: Path, name: str, *names: str) -> Path:
    """``aiobroker cert create`` for ``name`` into ``directory``; returns the prefix (PREFIX.crt, PREFIX.key)."""
    prefix = directory / name
    r = run("cert", "create", "--name", name, "--out", str(prefix), "--key-type", "ec", *names)
    assert r.returncode == 0, r.stderr
    return prefix


@dataclass
class TLSNode:
    proc: subprocess.Popen[bytes]
    url: str  #: as the node printed it at start
    certs: Path
    log_path: Path

    @property
    def port(self) -> str:
        return self.url.rsplit(":", 1)[1]

    def file(self, name: str) -> str:
        return str(self.certs / name)

    def trusted(self) -> list[str]:
        """The flags of a client the node lets in."""
        return ["--ca", self.file("node.crt"), "--cert", self.file("client.crt"), "--key", self.file("client.key")]


def wait_for_url(proc: subprocess.Popen[bytes], log_path: Path) -> str:
    """The address the node prints when it listens, polled from its log within STARTUP_DEADLINE."""
    found = None
    try:
        proc.wait(timeout=0.05)  # paces the first look, and notices a node that died at once
    except subprocess.TimeoutExpired:
        pass
    for _ in range(int(STARTUP_DEADLINE / 0.05)):
        found = re.search(r"listening on (\S+)", log_path.read_text(errors="replace"))
        if found or proc.poll() is not None:
            break
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
    assert found, f"the node printed no address (exit {proc.poll()}); its log:\n{log_path.read_text()}"
    return found.group(1)


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSNode]:
    """A node with [tls] cert, key and ca (so it requires client certificates), in its own process."""
    certs = tmp_path_factory.mktemp("certs")
    cert_create(certs, "node", "--ip", "127.0.0.1")  # only the IP: dialling "localhost" is a name mismatch
    cert_create(certs, "client")
    cert_create(certs, "rogue")
    config = certs / "node.toml"
    config.write_text(
        '[node]\nlisten = "127.0.0.1:0"\nstore = "memory"\n\n'
        '[tls]\ncert = "node.crt"\nkey = "node.key"\nca = "client.crt"   # the one client it lets in\n'
    )
    log_path = certs / "node.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [*AIOBROKER, "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield TLSNode(proc, wait_for_url(proc, log_path), certs, log_path)
    finally:
        stop_by_pid(proc, timeout=STOP_DEADLINE)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


@pytest.fixture(autouse=True)
def no_tls_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment the tests run in must not lend the CLI TLS files of its own."""
    for name in ("AIOBROKER_CA", "AIOBROKER_CERT", "AIOBROKER_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_serve_prints_the_tls_url_and_a_client_with_the_right_files_gets_in(tls_node: TLSNode) -> None:
    assert tls_node.url == f"tls://127.0.0.1:{tls_node.port}"
    r = run("--address", tls_node.url, *tls_node.trusted(), "status")
    assert r.returncode == 0, r.stderr
    assert tls_node.url in r.stdout
    # the options after the command word work too, and so does every other command
    r = run("create", "queue", "over-tls", "--address", tls_node.url, *tls_node.trusted())
    assert r.returncode == 0, r.stderr
    r = run("list", "queues", "--address", tls_node.url, *tls_node.trusted())
    assert r.returncode == 0 and "over-tls" in r.stdout, r.stderr


def test_the_address_and_the_files_from_the_environment(tls_node: TLSNode) -> None:
    env = {
        "AIOBROKER_CA": tls_node.file("node.crt"),
        "AIOBROKER_CERT": tls_node.file("client.crt"),
        "AIOBROKER_KEY": tls_node.file("client.key"),
    }
    r = run("status", "--json", address=tls_node.url, env=env)
    assert r.returncode == 0, r.stderr
    # a flag wins over its variable: the rogue certificate from the command line is refused
    r = run("--cert", tls_node.file("rogue.crt"), "--key", tls_node.file("rogue.key"), "status",
            address=tls_node.url, env=env)  # fmt: skip
    one_line_error(r, "the node does not trust this client's certificate")
    # a tcp:// address leaves the variables unused (they may be meant for another node): the plain-TCP words
    r = run("status", address=f"tcp://127.0.0.1:{tls_node.port}", env=env)
    one_line_error(r, f"dial tls://127.0.0.1:{tls_node.port}")
    # a variable naming a missing file says which variable
    missing = str(tls_node.certs / "gone.crt")
    r = run("status", address=tls_node.url, env={**env, "AIOBROKER_CA": missing})
    one_line_error(r, "$AIOBROKER_CA", missing, "no such file")


def test_a_client_without_a_certificate_is_told_the_node_requires_one(tls_node: TLSNode) -> None:
    r = run("--address", tls_node.url, "--ca", tls_node.file("node.crt"), "status")
    one_line_error(r, tls_node.url, "the node requires a client certificate")


def test_a_certificate_the_node_does_not_trust_is_refused_in_words(tls_node: TLSNode) -> None:
    r = run("--address", tls_node.url, "--ca", tls_node.file("node.crt"),
            "--cert", tls_node.file("rogue.crt"), "--key", tls_node.file("rogue.key"), "status")  # fmt: skip
    one_line_error(r, "the node does not trust this client's certificate (unknown CA)")


def test_a_node_certificate_the_client_does_not_trust_is_refused_in_words(tls_node: TLSNode) -> None:
    # no --ca: the system's trust store, which does not hold a self-signed node certificate
    r = run("--address", tls_node.url, "--cert", tls_node.file("client.crt"),
            "--key", tls_node.file("client.key"), "status")  # fmt: skip
    one_line_error(r, "certificate verify failed", "self-signed certificate", "CA file")
    # the wrong CA
    r = run("--address", tls_node.url, "--ca", tls_node.file("rogue.crt"),
            "--cert", tls_node.file("client.crt"), "--key", tls_node.file("client.key"), "status")  # fmt: skip
    one_line_error(r, "certificate verify failed")


def test_a_name_the_node_certificate_does_not_hold_is_a_mismatch_with_the_fix(tls_node: TLSNode) -> None:
    by_name = f"tls://localhost:{tls_node.port}"  # the certificate names 127.0.0.1 only
    r = run("--address", by_name, *tls_node.trusted(), "status")
    one_line_error(r, "certificate verify failed", "mismatch", "'localhost'", "--dns")


def test_plain_tcp_to_a_tls_node_and_tls_flags_with_a_tcp_address(tls_node: TLSNode) -> None:
    plain = f"tcp://127.0.0.1:{tls_node.port}"
    one_line_error(run("--address", plain, "status"), f"dial tls://127.0.0.1:{tls_node.port}")
    r = run("--address", plain, "--ca", tls_node.file("node.crt"), "status")
    one_line_error(r, "--ca is for a TLS node", "plain TCP", f"dial tls://127.0.0.1:{tls_node.port}")


def test_cert_and_key_go_together_and_missing_files_are_named(tls_node: TLSNode) -> None:
    r = run("--address", tls_node.url, "--cert", tls_node.file("client.crt"), "status")
    one_line_error(r, "--cert and --key go together", "no --key")
    r = run("--address", tls_node.url, "--key", tls_node.file("client.key"), "status")
    one_line_error(r, "--cert and --key go together", "no --cert")
    missing = str(tls_node.certs / "nowhere.crt")
    one_line_error(run("--address", tls_node.url, "--ca", missing, "status"), "--ca", missing, "no such file")


def test_an_unknown_scheme_is_refused_with_the_two_that_exist() -> None:
    one_line_error(run("--address", "ssl://127.0.0.1:4022", "status"), "tcp://", "tls://", "not ssl://")


def test_cert_create_puts_the_dns_and_ip_names_in_the_certificate(tmp_path: Path) -> None:
    prefix = cert_create(tmp_path, "node1", "--dns", "node1.lan", "--dns", "localhost", "--ip", "10.0.0.2",
                         "--ip", "::1")  # fmt: skip
    cert = x509.load_pem_x509_certificate(Path(f"{prefix}.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["node1.lan", "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.2", "::1"]
    one_line_error(run("cert", "create", "--name", "x", "--out", str(tmp_path / "x"), "--ip", "node1.lan"),
                   "'node1.lan' is not an IPv4 or IPv6 address", "--dns")  # fmt: skip
    one_line_error(run("cert", "create", "--name", "x", "--out", str(tmp_path / "x"), "--dns", "10.0.0.2"),
                   "'10.0.0.2' is an IP address", "--ip")  # fmt: skip
    one_line_error(run("cert", "create", "--name", "x", "--out", str(tmp_path / "x"), "--dns", "bad name"),
                   "'bad name' is not a host name")  # fmt: skip
    assert not (tmp_path / "x.crt").exists() and not (tmp_path / "x.key").exists()


# --- a config naming files that are not there ---------------------------------------------------------------


def serve_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "aiobroker.toml"
    config.write_text(text, encoding="utf-8")
    return run("serve", "--config", str(config), "--listen", "127.0.0.1:0", "--store", "memory", "--http", "off")


@pytest.mark.parametrize("missing", ["cert", "key", "ca"])
def test_a_missing_tls_file_names_its_key_and_path(tmp_path: Path, missing: str) -> None:
    prefix = cert_create(tmp_path, "node", "--ip", "127.0.0.1")
    files = {"cert": f"{prefix}.crt", "key": f"{prefix}.key", "ca": f"{prefix}.crt"}
    files[missing] = "certs/not-there.pem"  # relative: to the config file's directory
    tls = "".join(f'{key} = "{value}"\n' for key, value in files.items())
    r = serve_config(tmp_path, f"[tls]\n{tls}")
    one_line_error(r, f"[tls] {missing}", str(tmp_path / "certs" / "not-there.pem"), "does not exist")
    assert "None" not in r.stderr


def test_a_tls_file_that_is_a_directory_or_not_pem_names_its_key(tmp_path: Path) -> None:
    prefix = cert_create(tmp_path, "node", "--ip", "127.0.0.1")
    r = serve_config(tmp_path, f'[tls]\ncert = "{prefix}.crt"\nkey = "{prefix}.key"\nca = "{tmp_path}"\n')
    one_line_error(r, "[tls] ca", str(tmp_path), "is a directory")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    r = serve_config(tmp_path, f'[tls]\ncert = "garbage.pem"\nkey = "{prefix}.key"\n')
    one_line_error(r, "[tls] cert", str(tmp_path / "garbage.pem"), "cannot be used")
    other = cert_create(tmp_path, "other")
    r = serve_config(tmp_path, f'[tls]\ncert = "{prefix}.crt"\nkey = "{other}.key"\n')
    one_line_error(r, "[tls] cert", "[tls] key", f"{other}.key", "the key is not the certificate's")


def test_an_identity_or_binding_naming_a_missing_certificate_names_the_key_and_path(tmp_path: Path) -> None:
    r = serve_config(tmp_path, '[[identity]]\nname = "alice"\ncertificate = "certs/alice.crt"\n')
    one_line_error(r, "identity 'alice'", "certificate", str(tmp_path / "certs" / "alice.crt"), "does not exist")
    prefix = cert_create(tmp_path, "alice")
    r = serve_config(
        tmp_path,
        f'[[identity]]\nname = "alice"\ncertificate = "{prefix}.crt"\nprivate_key = "alice.pem"\n',
    )
    one_line_error(r, "identity 'alice'", "private_key", str(tmp_path / "alice.pem"), "does not exist")
    r = serve_config(tmp_path, '[[binding]]\nname = "b"\nto_service = "//x"\ncertificate = "x.crt"\n')
    one_line_error(r, "binding 'b'", "certificate", str(tmp_path / "x.crt"), "does not exist")
