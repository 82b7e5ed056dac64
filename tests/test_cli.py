"""The ``aiobroker`` command line, driven as a user would: the real console script against a real node running
in its own process (``aiobroker serve`` with the sqlite store).

Every call goes through :func:`subprocess.run` with a timeout; waiting is done by polling a condition against a
deadline, never by sleeping.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from dynamic_helpers import Registry, lone_node
from node_process import wait_for

pytestmark = pytest.mark.slow

STARTUP_DEADLINE = 15.0
STOP_DEADLINE = 10.0
CALL_TIMEOUT = 30.0


def _console_script() -> list[str]:
    """The installed ``aiobroker`` script beside this interpreter (the venv's), else ``python -m aiobroker``."""
    script = Path(sys.executable).with_name("aiobroker")
    if script.exists():
        return [str(script)]
    found = shutil.which("aiobroker")
    return [found] if found else [sys.executable, "-m", "aiobroker"]


AIOBROKER = _console_script()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class RunningNode:
    proc: subprocess.Popen[bytes]
    address: str
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    """A node in its own process on a free port; stopped with SIGTERM at the end, which must exit it with 0."""
    base = tmp_path_factory.mktemp("node")
    port = free_port()
    data_dir = base / "data"
    log_path = base / "node.log"
    cmd = [
        sys.executable, "-m", "aiobroker", "serve",
        "--listen", f"127.0.0.1:{port}", "--store", "sqlite", "--data-dir", str(data_dir), "--http", "off",
    ]  # fmt: skip
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    running = RunningNode(proc, f"tcp://127.0.0.1:{port}", data_dir, log_path)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while not accepts_connections(port):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the node did not listen on port {port} within {STARTUP_DEADLINE}s; its log:\n{running.log()}"
                )
            try:
                proc.wait(timeout=0.05)  # paces the polling, and notices a node that died
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(
                f"the node exited with status {proc.returncode} before listening; its log:\n{running.log()}"
            )
        yield running
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_DEADLINE)
                pytest.fail(
                    f"the node did not stop within {STOP_DEADLINE}s of SIGTERM; its log:\n{running.log()}"
                )
    assert proc.returncode == 0, f"the node exited with status {proc.returncode}; its log:\n{running.log()}"
    assert "Traceback" not in running.log(), running.log()


def run(
    *args: str, address: str | None = None, input: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """One call of the console script; ``address`` goes in $AIOBROKER_ADDRESS. stdin is empty unless ``input``.
    $AIOBROKER_TOKEN is set only when ``env`` gives it."""
    environ = {k: v for k, v in os.environ.items() if k != "AIOBROKER_TOKEN"}
    environ.update(env or {})
    environ.pop("AIOBROKER_ADDRESS", None)
    if address is not None:
        environ["AIOBROKER_ADDRESS"] = address
    result = subprocess.run(
        [*AIOBROKER, *args],
        check=False,
        input=input if input is not None else b"",
        capture_output=True,
        timeout=CALL_TIMEOUT,
        env=environ,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def ok(node: RunningNode, *args: str, input: bytes | None = None) -> str:
    """Run a client command that must succeed; returns its stdout."""
    r = run(*args, address=node.address, input=input)
    assert r.returncode == 0, (
        f"aiobroker {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r.stdout


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> str:
    """Assert exit status 1 and exactly one line on stderr, ``aiobroker: error: ...`` naming ``words``."""
    assert r.returncode == 1, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("aiobroker: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def setup_pair(node: RunningNode) -> tuple[str, str, str, str]:
    """Two queues and two services (client, server accepting DEFAULT): (client_q, server_q, client, server)."""
    tag = uuid.uuid4().hex[:8]
    cq, sq, client, server = f"cq-{tag}", f"sq-{tag}", f"//t/{tag}/Client", f"//t/{tag}/Server"
    ok(node, "create", "queue", cq)
    ok(node, "create", "queue", sq)
    ok(node, "create", "service", client, "--queue", cq)
    ok(node, "create", "service", server, "--queue", sq, "--contract", "DEFAULT")
    return cq, sq, client, server


def queue_status(node: RunningNode, name: str) -> dict[str, object]:
    status = json.loads(ok(node, "status", "--json"))
    return next(q for q in status["queues"] if q["name"] == name)


def received(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# --- help ---------------------------------------------------------------------------------------------------

HELP = {
    (): "message broker",
    ("serve",): "run a node",
    ("store",): "work on a stopped node's store",
    ("store", "migrate"): "copy a stopped node's state",
    ("create",): "create a message type",
    ("create", "message-type"): "create a message type",
    ("create", "contract"): "create a contract",
    ("create", "queue"): "create a queue",
    ("create", "service"): "create a service",
    ("create", "identity"): "create an identity",
    ("create", "binding"): "create a remote service binding",
    ("alter",): "change a queue",
    ("alter", "queue"): "change a queue",
    ("list",): "list message types",
    ("list", "message-types"): "list the message types",
    ("list", "contracts"): "list the contracts",
    ("list", "queues"): "list the queues",
    ("list", "services"): "list the services",
    ("list", "identities"): "list the identities (never a key or a token)",
    ("list", "bindings"): "list the bindings",
    ("list", "conversations"): "list conversation",
    ("drop",): "drop a message type",
    ("drop", "message-type"): "drop a message type",
    ("drop", "contract"): "drop a contract",
    ("drop", "queue"): "drop a queue",
    ("drop", "service"): "drop a service",
    ("drop", "identity"): "drop an identity",
    ("drop", "binding"): "drop a binding",
    ("begin",): "begin a conversation",
    ("send",): "send a message",
    ("receive",): "receive messages",
    ("end",): "end this side of a conversation",
    ("timer",): "conversation timer",
    ("conversation",): "show one conversation",
    ("status",): "queues' depth",
}


def test_help_of_every_command_exits_0_and_says_what_it_does() -> None:
    # All at once: each call costs an interpreter start, and they do not depend on each other.
    procs = {
        words: subprocess.Popen(
            [*AIOBROKER, *words, "--help"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for words in HELP
    }
    texts = {}
    for words, proc in procs.items():
        out, err = proc.communicate(timeout=CALL_TIMEOUT)
        text = texts[words] = " ".join(out.decode().split())
        assert proc.returncode == 0, (words, err.decode())
        assert HELP[words].lower() in text.lower(), (words, text)
        assert f"usage: aiobroker {' '.join(words)}".strip() in text  # the usage line names the command
    for default in ("127.0.0.1:4022", "./aiobroker-data", "default sqlite", "default normal"):
        assert default in texts[("serve",)], default
    assert "--token TOKEN" in texts[()] and "$AIOBROKER_TOKEN" in texts[()]
    assert "--token TOKEN" in texts[("list", "queues")]  # every client command takes it after its name too
    identity_help = texts[("create", "identity")]
    assert "examples: aiobroker create identity alice --certificate alice.crt" in identity_help
    assert "aiobroker --token ADMIN_TOKEN create identity" in identity_help  # how to authenticate this one
    assert "examples: aiobroker create binding to-orders --to-service //shop/Orders" in texts[("create", "binding")]
    assert "--owner IDENTITY" in texts[("create", "service")]
    for words, text in texts.items():  # every command's help ends with the exit statuses it uses
        assert "exit status: 0 " in text and "2 usage error" in text, words
    assert "3 nothing arrived within --timeout" in texts[("receive",)]
    assert "3 receive: nothing arrived" in texts[()]
    assert "0 stopped cleanly by SIGINT or SIGTERM" in texts[("serve",)]


def test_usage_errors_exit_2() -> None:
    assert run().returncode == 2
    r = run("send", "--body", "x")
    assert r.returncode == 2 and "--handle" in r.stderr and "Traceback" not in r.stderr
    r = run("create", "contract", "C", "--message", "DEFAULT=nobody")
    assert r.returncode == 2 and "SENT_BY" in r.stderr


# --- objects ------------------------------------------------------------------------------------------------


def test_create_each_kind_and_list_them(node: RunningNode) -> None:
    tag = uuid.uuid4().hex[:8]
    mt, contract, queue, service = f"//t/{tag}/Order", f"//t/{tag}/Contract", f"q-{tag}", f"//t/{tag}/Shop"

    assert mt in ok(node, "create", "message-type", mt, "--validation", "json")
    assert contract in ok(
        node, "create", "contract", contract, "--message", f"{mt}=initiator", "--message", "DEFAULT=any"
    )
    assert queue in ok(
        node, "create", "queue", queue, "--retention", "on", "--poison-message-handling", "off"
    )
    assert service in ok(node, "create", "service", service, "--queue", queue, "--contract", contract)

    text = ok(node, "list", "message-types")
    assert text.splitlines()[0].split() == ["NAME", "VALIDATION"]
    assert [mt, "json"] in [line.split() for line in text.splitlines()]
    text = ok(node, "list", "contracts")
    assert [contract, mt, "initiator"] in [line.split() for line in text.splitlines()]
    text = ok(node, "list", "queues")
    assert [queue, "on", "on", "off", "-", "-"] in [line.split() for line in text.splitlines()]
    text = ok(node, "list", "services")
    assert [service, queue, contract, "-"] in [line.split() for line in text.splitlines()]  # no owner

    by_name = {d["name"]: d for d in json.loads(ok(node, "list", "message-types", "--json"))}
    assert by_name[mt] == {"name": mt, "validation": "json"}
    assert "DEFAULT" in by_name
    by_name = {d["name"]: d for d in json.loads(ok(node, "list", "contracts", "--json"))}
    assert by_name[contract]["messages"] == {mt: "initiator", "DEFAULT": "any"}
    by_name = {d["name"]: d for d in json.loads(ok(node, "list", "queues", "--json"))}
    assert by_name[queue] == {  # spelled as the flags take them, and as status says
        "name": queue,
        "status": "on",
        "retention": "on",
        "poison_message_handling": "off",
    }
    by_name = {d["name"]: d for d in json.loads(ok(node, "list", "services", "--json"))}
    assert by_name[service] == {"name": service, "queue": queue, "contracts": [contract]}

    ok(node, "alter", "queue", queue, "--status", "off")
    assert queue_status(node, queue)["status"] == "off"
    (listed,) = [q for q in json.loads(ok(node, "list", "queues", "--json")) if q["name"] == queue]
    assert listed["status"] == "off"
    assert [queue, "off", "on", "off", "-", "-"] in [line.split() for line in ok(node, "list", "queues").splitlines()]
    ok(node, "alter", "queue", queue, "--status", "true")  # the other spelling is accepted on input
    assert queue_status(node, queue)["status"] == "on"
    ok(node, "drop", "service", service)
    assert service not in ok(node, "list", "services")


# --- conversations ------------------------------------------------------------------------------------------


def test_conversation_end_to_end(node: RunningNode) -> None:
    cq, sq, client, server = setup_pair(node)

    out = ok(node, "send", "--from", client, "--to", server, "--body", "one order, please")
    initiator = out.strip()
    assert len(out.splitlines()) == 1 and uuid.UUID(initiator)

    out = ok(node, "receive", sq, "--timeout", "5")
    line = out.strip()
    assert len(out.splitlines()) == 1, out
    target = line.split()[0]
    assert target != initiator and uuid.UUID(target)
    assert "seq=0" in line and "type=DEFAULT" in line and line.endswith("body: one order, please")

    info = ok(node, "conversation", target)
    assert "CO (conversing)" in info and server in info and client in info

    # a reply on the target's handle, its body from stdin; then a body that is not UTF-8
    assert ok(node, "send", "--handle", target, input=b"accepted").strip() == target
    ok(node, "send", "--handle", target, input=b"\xff\x00\xfe")
    out = ok(node, "receive", cq, "--timeout", "5", "--max", "10")
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert lines[0].startswith(f"{initiator} seq=0 type=DEFAULT") and lines[0].endswith("body: accepted")
    assert "not UTF-8" in lines[1] and lines[1].endswith("ff00fe")

    ok(node, "end", target)
    [end_dialog] = received(ok(node, "receive", cq, "--timeout", "5", "--json"))
    assert end_dialog["handle"] == initiator
    assert end_dialog["message_type"] == "http://schemas.microsoft.com/SQL/ServiceBroker/EndDialog"
    assert end_dialog["body"] == "" and end_dialog["body_base64"] is False
    assert "DI (disconnected inbound)" in ok(node, "conversation", initiator)
    ok(node, "end", initiator)

    handles = {c["handle"] for c in json.loads(ok(node, "list", "conversations", "--json"))}
    assert initiator not in handles and target not in handles


def test_begin_then_send_json_receive_and_error_end(node: RunningNode) -> None:
    cq, sq, client, server = setup_pair(node)
    handle = ok(node, "begin", client, server).strip()
    assert uuid.UUID(handle)
    ok(node, "send", "--handle", handle, "--body", "first\nsecond")
    [message] = received(ok(node, "receive", sq, "--json"))
    assert message["body"] == "first\nsecond" and message["body_base64"] is False
    assert message["sequence_number"] == 0 and message["far_service"] == client
    ok(node, "end", str(message["handle"]), "--error", "42", "--description", "out of stock")
    out = ok(node, "receive", cq, "--timeout", "5")
    assert out.strip().endswith("error 42: out of stock"), out
    ok(node, "end", handle)


def test_status_shows_who_holds_the_connection_slots(node: RunningNode) -> None:
    """The admission figures (JSON only before) in the text too; the status call itself holds one slot."""
    text = ok(node, "status")
    [line] = [line for line in text.splitlines() if line.startswith("slots ")]
    figures = json.loads(ok(node, "status", "--json"))["node"]["admission"]
    assert re.fullmatch(
        r"slots +1 established \(0 admin or peer\), 0 in their handshake, from 1 address\(es\);"
        rf" {figures['refused']} refused, {figures['idle_closed']} closed idle since start",
        line,
    ), line


def test_status_shows_queue_depth_before_and_after_receiving(node: RunningNode) -> None:
    _, sq, client, server = setup_pair(node)
    handle = ok(node, "send", "--from", client, "--to", server, "--body", "1").strip()
    ok(node, "send", "--handle", handle, "--body", "2")

    assert queue_status(node, sq)["waiting"] == 2
    text = ok(node, "status")
    assert [sq, "2", "0", "0", "0", "on", "-"] in [line.split() for line in text.splitlines()]
    for words in (
        "SO",
        "started outbound",
        "CO",
        "conversing",
        "DI",
        "disconnected inbound",
        "ER",
        "CD",
        "closed",
    ):
        assert words in text, words
    assert node.address.removeprefix("tcp://") in text and "sqlite" in text and str(node.data_dir) in text

    out = ok(node, "receive", sq, "--max", "10")
    assert len(out.splitlines()) == 2
    assert queue_status(node, sq)["waiting"] == 0
    assert [sq, "0", "0", "0", "0", "on", "-"] in [line.split() for line in ok(node, "status").splitlines()]


def test_receive_rollback_leaves_the_message_in_the_queue(node: RunningNode) -> None:
    _, sq, client, server = setup_pair(node)
    ok(node, "send", "--from", client, "--to", server, "--body", "keep me")

    r = run("receive", sq, "--rollback", address=node.address)
    assert r.returncode == 0 and r.stdout.strip().endswith("body: keep me"), r
    assert "rolled back" in r.stderr
    assert queue_status(node, sq)["waiting"] == 1

    out = ok(node, "receive", sq)
    assert out.strip().endswith("body: keep me")
    assert queue_status(node, sq)["waiting"] == 0


def test_receive_max_groups_takes_several_conversations_at_once(node: RunningNode) -> None:
    _, sq, client, server = setup_pair(node)
    handles = [ok(node, "send", "--from", client, "--to", server, "--body", f"c{i}").strip() for i in range(3)]
    assert len(set(handles)) == 3, "three conversations: three groups at the target"
    out = ok(node, "receive", sq, "--max", "10", "--max-groups", "2")
    assert [line.rsplit("body: ", 1)[1] for line in out.splitlines()] == ["c0", "c1"]
    assert queue_status(node, sq)["waiting"] == 1
    assert ok(node, "receive", sq, "--max-groups", "5").strip().endswith("body: c2")
    r = run("receive", sq, "--max-groups", "0", address=node.address)
    assert r.returncode == 2 and "--max-groups" in r.stderr, r


def test_receive_of_nothing_exits_3_with_a_note(node: RunningNode) -> None:
    """Nothing received is not an error (1) nor a success (0): a loop in a script can tell the three apart."""
    queue = unique("empty")
    ok(node, "create", "queue", queue)
    r = run("receive", queue, "--timeout", "0.2", address=node.address)
    assert r.returncode == 3 and r.stdout == ""
    assert "no message arrived within 0.2s" in r.stderr and len(r.stderr.splitlines()) == 1
    r = run("receive", queue, "--json", address=node.address)  # no wait at all: the same
    assert r.returncode == 3 and r.stdout == ""


# --- errors -------------------------------------------------------------------------------------------------


def test_errors_are_one_line_and_exit_1(node: RunningNode) -> None:
    one_line_error(run("receive", "no-such-queue", address=node.address), "no-such-queue", "does not exist")

    queue = unique("dup")
    ok(node, "create", "queue", queue)
    one_line_error(run("create", "queue", queue, address=node.address), queue, "exists already")

    _, _, client, server = setup_pair(node)
    handle = ok(node, "send", "--from", client, "--to", server, "--body", "bye", "--end").strip()
    one_line_error(run("send", "--handle", handle, "--body", "more", address=node.address), handle, "ended")

    r = run(
        "send",
        "--from",
        client,
        "--to",
        server,
        "--file",
        str(node.data_dir / "no-such-file"),
        address=node.address,
    )
    one_line_error(r, "no-such-file")


def test_no_node_listening_is_one_line_and_exit_1() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    line = one_line_error(run("--address", address, "status"), address, "aiobroker serve")
    assert "cannot connect" in line
    one_line_error(run("list", "queues", address=address), address)  # from $AIOBROKER_ADDRESS
    one_line_error(run("receive", "q", "--address", address), address)  # after the command


# --- serve --------------------------------------------------------------------------------------------------


def serve_with_config(tmp_path: Path, text: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    config = tmp_path / "aiobroker.toml"
    config.write_text(text, encoding="utf-8")
    r = run("serve", "--config", str(config), "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
            "--http", "off")  # fmt: skip
    return r, config


def test_serve_with_a_toml_syntax_error_says_where(tmp_path: Path) -> None:
    r, config = serve_with_config(tmp_path, '[node]\nstore = "sqlite\n')
    assert r.returncode != 0
    line = one_line_error(r, str(config), "not valid TOML")
    assert "line 2" in line


def test_serve_with_an_unknown_key_names_the_file_and_key(tmp_path: Path) -> None:
    r, config = serve_with_config(tmp_path, '[node]\nstroe = "sqlite"\n')
    assert r.returncode != 0
    one_line_error(r, str(config), "stroe", "did you mean store")


def test_routes_and_the_transmission_queue_in_status(node: RunningNode) -> None:
    cq, _sq, client, _server = setup_pair(node)
    far = unique("//t/Far")
    route = unique("to-far")
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    out = ok(node, "create", "route", route, nowhere, "--service", far, "--lifetime", "3600")
    assert f"created route {route!r}" in out and nowhere in out and "expires in" in out
    listed = ok(node, "list", "routes")
    assert route in listed and "AutoCreatedLocal" in listed and "LOCAL" in listed
    ok(node, "send", "--from", client, "--to", far, "--body", "for a node that is not there")

    deadline = time.monotonic() + 20
    while True:
        text = ok(node, "status")
        if "retrying" in text and "connection refused" in text:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.2)  # polling the node's state under a deadline
    assert "transmission queue: 1 message(s)" in text and nowhere in text and far in text
    ok(node, "drop", "route", route)
    assert route not in ok(node, "list", "routes")


def test_diagnose_walks_the_routing_steps_in_words(node: RunningNode) -> None:
    _cq, _sq, _client, server = setup_pair(node)
    out = ok(node, "diagnose", server)
    assert "on this node" in out and "5. wildcard routes: AutoCreatedLocal (LOCAL)" in out
    assert "4. dynamic routing is off" in out and "decision: local" in out
    far = unique("//t/Nowhere")
    out = ok(node, "diagnose", far)
    assert "not on this node" in out and "decision: delayed" in out
    assert json.loads(ok(node, "diagnose", far, "--json"))["steps"][-1].startswith("decision: delayed")
    assert "dynamic routing: off" in ok(node, "status")


def test_route_service_is_service_name_on_the_command_line_as_in_the_file_and_list(node: RunningNode) -> None:
    route, service = unique("r"), unique("//t/S")
    ok(node, "create", "route", route, f"tcp://127.0.0.1:{free_port()}", "--service-name", service)
    (listed,) = [r for r in json.loads(ok(node, "list", "routes", "--json")) if r["name"] == route]
    assert listed["service_name"] == service
    other = unique("//t/S")
    ok(node, "alter", "route", route, "--service-name", other)
    (listed,) = [r for r in json.loads(ok(node, "list", "routes", "--json")) if r["name"] == route]
    assert listed["service_name"] == other
    assert "--service-name S, --service S" in " ".join(run("create", "route", "--help").stdout.split())


def test_a_config_route_with_service_instead_of_service_name_is_refused_with_the_right_key(tmp_path: Path) -> None:
    r, config = serve_with_config(
        tmp_path, '[[route]]\nname = "to-orders"\naddress = "tcp://127.0.0.1:1"\nservice = "//shop/Orders"\n'
    )
    one_line_error(r, "to-orders", "unknown field(s) service", "is service_name")


def test_json_output_gives_times_in_rfc3339_and_keeps_the_number(node: RunningNode) -> None:
    def parsed(stamp: object) -> float:
        assert isinstance(stamp, str) and stamp.endswith("Z"), stamp
        return datetime.fromisoformat(stamp).timestamp()

    cq, sq, client, server = setup_pair(node)
    route = unique("r")
    before = time.time()
    ok(node, "create", "route", route, f"tcp://127.0.0.1:{free_port()}", "--service-name", unique("//t/S"),
       "--lifetime", "3600")  # fmt: skip
    (listed,) = [r for r in json.loads(ok(node, "list", "routes", "--json")) if r["name"] == route]
    assert before + 3600 - 5 < listed["expires_at_unix"] < time.time() + 3600 + 5
    assert abs(parsed(listed["expires_at"]) - listed["expires_at_unix"]) < 0.001
    auto = next(r for r in json.loads(ok(node, "list", "routes", "--json")) if r["name"] == "AutoCreatedLocal")
    assert auto["expires_at"] is None and auto["expires_at_unix"] is None  # never

    handle = ok(node, "send", "--from", client, "--to", server, "--lifetime", "600", "--body", "x").strip()
    info = json.loads(ok(node, "conversation", handle, "--json"))
    assert before + 600 - 5 < parsed(info["expires_at"]) < time.time() + 600 + 5
    [message] = received(ok(node, "receive", sq, "--json"))
    assert before - 5 < parsed(message["enqueued_at"]) < time.time() + 5
    assert message["enqueued_at_unix"] == pytest.approx(parsed(message["enqueued_at"]), abs=0.001)


def test_diagnose_and_status_name_the_resolver_asked_and_one_next_try(tmp_path: Path) -> None:
    # issue 11: diagnose said "asking the Broker Configuration Notice service" on a node with an http resolver and
    # no BCN service, and a reason that said "asking again in 3s" was shown beside "1.9s" for the same wait
    with Registry(tmp_path) as registry, lone_node(tmp_path, {"kind": "http", "url": registry.url()}) as lone:
        # the registry fails with a long Retry-After: the next try is far enough off to be read twice
        registry.serve({"svcX": {"status": 503, "raw": "registry overloaded", "headers": {"Retry-After": "600"}}})
        handle = ok_at(lone.url, "send", "--from", "svcA", "--to", "svcX", "--body", "waits").strip()

        def failed() -> dict[str, object] | None:
            state = json.loads(ok_at(lone.url, "status", "--json"))["dynamic_routing"]["services"].get("svcX")
            return state if state and state["last"] and state["next_retry_in"] else None

        state = wait_for(failed, 10, "the node to hear the registry's 503")
        assert 600 <= state["next_retry_in"] <= 720, state  # the Retry-After is a lower bound, jittered up
        asked = f"the http resolver at http://127.0.0.1:{registry.port}/v1/services/svcX (aiobroker format)"

        out = ok_at(lone.url, "diagnose", "svcX")
        assert "Broker Configuration Notice" not in out, out
        assert f"4. dynamic routing is on: the node asks {asked} where the service is" in out, out
        assert f"decision: resolve: step 4: no route names the service; asking {asked}" in out, out
        assert f"dynamic routing asks {asked}" in out, out
        waits = next(line for line in out.splitlines() if " wait: " in line)
        again = next(line for line in out.splitlines() if line.startswith("  asks again in "))
        assert "the last request failed (" in waits and "503" in waits, waits
        assert waits.endswith("; asks again " + again.removeprefix("  asks again ")), (waits, again)
        assert json.loads(ok_at(lone.url, "diagnose", "svcX", "--json"))["asks"] == asked

        status = ok_at(lone.url, "status")
        assert "dynamic routing: asks the http resolver;" in status, status
        reason = next(line for line in status.splitlines() if line.startswith("  svcX ") and "waiting for" in line)
        row = next(line for line in status.splitlines() if line.startswith("  svcX ") and "503" in line
                   and "waiting for" not in line)
        next_try = row.rsplit("  ", 1)[1]
        assert next_try.startswith("in ") and reason.endswith("; asks again " + next_try), (reason, row)
        shown = ok_at(lone.url, "conversation", handle)
        delayed = next(line for line in shown.splitlines() if line.startswith("delayed:"))
        assert "the last request failed (" in delayed and "; asks again in " in delayed, shown
        # scripts get the instant itself, to compute against their own clock
        assert abs(state["next_retry_at_unix"] - (time.time() + state["next_retry_in"])) < 5, state
        assert state["next_retry_at"].endswith("Z"), state  # RFC 3339, as every time in the JSON


def test_alter_route_changes_its_address_and_weight(node: RunningNode) -> None:
    route = unique("r")
    first, second = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    ok(node, "create", "route", route, first, "--service", unique("//t/S"))
    out = ok(node, "alter", "route", route, "--to", second, "--weight", "3")
    assert f"altered route {route!r}" in out and second in out and "weight 3" in out
    (listed,) = [r for r in json.loads(ok(node, "list", "routes", "--json")) if r["name"] == route]
    assert (listed["address"], listed["weight"]) == (second, 3)
    r = run("alter", "route", route, address=node.address)
    assert r.returncode == 2 and "nothing to change" in r.stderr


# --- identities, bindings, tokens -----------------------------------------------------------------------------

ROOT_TOKEN = "root-token-for-the-cli-tests"


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Certificate and key files (EC, self-signed) for a node identity and a remote service owner."""
    from aiobroker.security.certs import create_self_signed

    base = tmp_path_factory.mktemp("pems")
    out: dict[str, Path] = {}
    for name in ("node", "alice", "far-owner"):
        cert, key = create_self_signed(name, key_type="ec")
        out[name], out[name + ".key"] = base / f"{name}.crt", base / f"{name}.key"
        out[name].write_text(cert)
        out[name + ".key"].write_text(key)
    return out


@pytest.fixture(scope="module")
def secure_node(tmp_path_factory: pytest.TempPathFactory, pems: dict[str, Path]) -> Iterator[str]:
    """A node process with authorization on, its identity and an administrator from its config file; its URL."""
    from node_process import NodeProcess

    base = tmp_path_factory.mktemp("secure")
    config = base / "node.toml"
    config.write_text(
        "[security]\nidentity = \"node\"\nauthorization = true\n\n"
        f"[[identity]]\nname = \"node\"\ncertificate = \"{pems['node']}\"\nprivate_key = \"{pems['node.key']}\"\n\n"
        f"[[identity]]\nname = \"root\"\ntokens = [\"{ROOT_TOKEN}\"]\nadmin = true\n"
    )
    proc = NodeProcess(base / "data", extra=["--config", str(config)]).start(timeout=STARTUP_DEADLINE)
    try:
        yield proc.url
    finally:
        code = proc.stop(timeout=STOP_DEADLINE)
    assert code == 0, proc.output()
    assert "Traceback" not in proc.output(), proc.output()


def as_root(address: str, *args: str) -> str:
    """A command that must succeed, authenticated by $AIOBROKER_TOKEN; its stdout."""
    r = run(*args, address=address, env={"AIOBROKER_TOKEN": ROOT_TOKEN})
    assert r.returncode == 0, f"aiobroker {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r.stdout


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_create_list_and_drop_identities_and_bindings(secure_node: str, pems: dict[str, Path]) -> None:
    tag = uuid.uuid4().hex[:8]
    alice, alice_token, queue, service = f"alice-{tag}", f"alice-token-{tag}", f"q-{tag}", f"//t/{tag}/Svc"
    as_root(secure_node, "create", "queue", queue)
    out = as_root(
        secure_node,
        "create", "identity", alice, "--certificate", str(pems["alice"]), "--token", alice_token,
        "--send", service, "--receive", queue,
    )  # fmt: skip
    assert f"created identity {alice!r}" in out and "CN=alice" in out and "1 token(s)" in out
    assert alice_token not in out

    # --token after the command name, and before it, work as $AIOBROKER_TOKEN does
    for args in (("list", "identities", "--token", ROOT_TOKEN), ("--token", ROOT_TOKEN, "list", "identities")):
        text = ok_at(secure_node, *args)
        assert rows(text)[0] == ["NAME", "ADMIN", "SEND", "RECEIVE", "TOKENS", "KEY", "SUBJECT", "FINGERPRINT", "EXPIRES"]
        mine = next(r for r in rows(text) if r[0] == alice)
        assert mine[1:7] == ["no", service, queue, "1", "no", "CN=alice"]
        assert next(r for r in rows(text) if r[0] == "node")[5] == "yes"  # has a key: says so, never shows it
        assert "BEGIN" not in text and alice_token not in text and ROOT_TOKEN not in text
    listed = json.loads(as_root(secure_node, "list", "identities", "--json"))
    mine_json = next(d for d in listed if d["name"] == alice)
    assert mine_json["tokens"] == 1 and mine_json["has_private_key"] is False
    assert "BEGIN" not in json.dumps(listed) and alice_token not in json.dumps(listed)

    # the identity's own token: it may read, not administer
    r = run("--token", alice_token, "list", "queues", address=secure_node)
    assert r.returncode == 0 and queue in r.stdout, r
    one_line_error(
        run("--token", alice_token, "create", "queue", f"x-{tag}", address=secure_node),
        f"identity {alice!r}", "admin right", f"create queue 'x-{tag}'",
    )

    # a service owned by the node's identity; bindings signed by it, and an anonymous one
    out = as_root(secure_node, "create", "service", service, "--queue", queue, "--owner", "node")
    assert f"created service {service!r}" in out
    assert [service, queue, "-", "node"] in rows(as_root(secure_node, "list", "services"))
    far, far2 = f"//far/{tag}/A", f"//far/{tag}/B"
    out = as_root(
        secure_node, "create", "binding", f"b-{tag}", "--to-service", far, "--certificate", str(pems["far-owner"])
    )
    assert f"created binding 'b-{tag}'" in out and "signed by the node's identity" in out
    as_root(
        secure_node, "create", "binding", f"anon-{tag}", "--to-service", far2,
        "--certificate", str(pems["far-owner"]), "--anonymous",
    )  # fmt: skip
    text = as_root(secure_node, "list", "bindings")
    assert rows(text)[0][:3] == ["NAME", "TO", "SERVICE"]
    line = next(line for line in text.splitlines() if line.startswith(f"b-{tag} "))
    assert far in line and "the node's identity" in line and "CN=far-owner" in line and "admin" in line
    line = next(line for line in text.splitlines() if line.startswith(f"anon-{tag} "))
    assert far2 in line and "nobody (anonymous)" in line
    assert "BEGIN" not in text
    one_line_error(
        run(
            "create", "binding", f"bad-{tag}", "--to-service", f"//far/{tag}/C", "--certificate",
            str(pems["far-owner"]), "--identity", "no-such-identity", address=secure_node,
            env={"AIOBROKER_TOKEN": ROOT_TOKEN},
        ),
        "no-such-identity",
    )  # fmt: skip

    # drop, and they are gone
    for kind, name in (("binding", f"b-{tag}"), ("binding", f"anon-{tag}"), ("service", service), ("identity", alice)):
        assert f"dropped {kind} {name!r}" in as_root(secure_node, "drop", kind, name)
    assert f"b-{tag}" not in as_root(secure_node, "list", "bindings")
    assert alice not in as_root(secure_node, "list", "identities")
    one_line_error(run("--token", alice_token, "list", "queues", address=secure_node), "matches no identity")


def ok_at(address: str, *args: str) -> str:
    r = run(*args, address=address)
    assert r.returncode == 0, f"aiobroker {' '.join(args)} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r.stdout


def test_no_token_a_bad_token_and_which_token_wins(secure_node: str) -> None:
    one_line_error(run("list", "queues", address=secure_node), "identity 'public'", "--token")
    one_line_error(
        run("create", "queue", "q-public", address=secure_node), "identity 'public'", "admin right"
    )
    one_line_error(
        run("list", "queues", address=secure_node, env={"AIOBROKER_TOKEN": "no-such-token-here"}),
        "refused the connection", "matches no identity",
    )  # fmt: skip
    # --token wins over $AIOBROKER_TOKEN
    r = run("--token", ROOT_TOKEN, "list", "queues", address=secure_node, env={"AIOBROKER_TOKEN": "no-such-token"})
    assert r.returncode == 0, r
    assert "q-public" not in as_root(secure_node, "list", "queues")  # the refused create changed nothing


def test_create_identity_with_a_missing_file_is_one_line_and_creates_nothing(
    secure_node: str, tmp_path: Path
) -> None:
    name = unique("nofile")
    missing = tmp_path / "missing.crt"
    one_line_error(
        run("create", "identity", name, "--certificate", str(missing), address=secure_node,
            env={"AIOBROKER_TOKEN": ROOT_TOKEN}),
        "--certificate", str(missing), "no such file",
    )  # fmt: skip
    one_line_error(
        run("create", "binding", name, "--to-service", "//x", "--certificate", str(missing), address=secure_node),
        "--certificate", "no such file",
    )  # fmt: skip
    assert name not in as_root(secure_node, "list", "identities")
    assert name not in as_root(secure_node, "list", "bindings")
