"""Dialog security between nodes that are separate processes, on separate hosts (network namespaces) or on loopback.

What docs/security.md promises, checked on real bytes:

* A forwarding node sees routing headers alone: a secured conversation from host a, through the broker on host b
  (which forwards), to host c arrives at c whole, each body exactly once and in order; and no plaintext body is in
  anything b stored (every file under its data directory, SQLite's WAL and SHM included) nor in anything that
  crossed either hop (a -> b and b -> c). What crossed is recorded by ``tests/recording_proxy.py``, put in front
  of b's node and of c's node (the routes lead through the proxies). The recordings must hold the service names
  (headers travel in clear: proof that the recording sees the traffic), and the bodies of a plain conversation
  sent the same way (proof that the check would find a plaintext body); likewise c's own store, where received
  bodies are kept opened, must hold the secured bodies (proof that the store scan would find one).
* A tampered body is dropped without an acknowledgement and reported; the sender resends after its
  ``ack_timeout``, and every message arrives exactly once, in order, as sent. The same proxy, with
  ``--tamper-message``, flips one byte of one message's body in an ENVELOPES frame on its way from a to b.

As in ``tests/test_federation_hosts.py``, ``tests/hosts.py`` runs the processes: in the ``netns`` variant every
node, proxy and client (``tests/secure_driver.py``) runs inside its host's namespace; in the ``loopback`` variant
the same processes run here on 127.0.0.1, on different ports. ``netns`` is skipped, with the reason, where
namespaces cannot be made. Every wait has a deadline; every process is stopped by its pid.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hosts import VARIANTS, Hosts, Server
from hosts import netns_or_loopback as netns_or_loopback  # the fixture `variant`

from aiobroker.security.certs import create_self_signed

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
DRIVER = str(HERE / "secure_driver.py")
PROXY = str(HERE / "recording_proxy.py")
NODE_PORT, PROXY_PORT = 4022, 4023  # in the netns variant: every host is its own namespace
ACK_TIMEOUT = 1.0  # seconds; short, so that a dropped message is resent soon
FEDERATION = {"ack_timeout": ACK_TIMEOUT, "connect_timeout": 2, "handshake_timeout": 2}
DRIVER_TIMEOUT = 60.0

SECRET = b"PLAINTEXT-MARKER-"  # every body of the secured conversation starts with it
CONTROL = b"PLAIN-CONTROL-"  # every body of the plain conversation sent the same way


# --------------------------------------------------------------------------------------------- helpers


def proxy(h: Hosts, name: str, host: str, listen: str, target: str, *extra: str) -> Server:
    """Start ``recording_proxy.py`` on ``host``, from ``listen`` to ``target`` (HOST:PORT each); not waited for."""
    return h.launch(name, host, [sys.executable, PROXY, "--listen", listen, "--target", target, *extra])


def drive(h: Hosts, host: str, url: str, *args: str) -> list[dict[str, Any]]:
    """Run ``secure_driver.py`` on ``host`` to completion (bounded); its JSON lines."""
    argv = [sys.executable, DRIVER, "--url", url, "--limit", str(DRIVER_TIMEOUT - 5), *args]
    out = h.check_output(host, argv, timeout=DRIVER_TIMEOUT, what=f"driver on {host} {args}")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def write_objects(path: Path, objects: list[tuple[str, dict[str, Any]]]) -> str:
    path.write_text(json.dumps(objects))
    return str(path)


def signer_at_a(path: Path, to_service: str, far_cert: str, a_cert: str, a_key: str) -> str:
    """A's objects, written to ``path``: svcA (queue qa), the identity a-signer and a binding that signs for and
    encrypts to ``to_service`` (whose owner holds ``far_cert``)."""
    return write_objects(path, [
        ("queue", {"name": "qa"}),
        ("service", {"name": "svcA", "queue": "qa", "contracts": []}),
        ("identity", {"name": "a-signer", "certificate": a_cert, "private_key": a_key}),
        ("binding", {"name": f"to-{to_service}", "to_service": to_service, "certificate": far_cert,
                     "identity": "a-signer"}),
    ])  # fmt: skip


def record(records: list[dict[str, Any]], key: str) -> Any:
    found = [r[key] for r in records if key in r]
    assert found, f"no {key!r} record in {records}"
    return found[0] if len(found) == 1 else found


def files_under(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def recordings(tmp_path: Path, prefix: str, direction: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(tmp_path.glob(f"{prefix}-*-{direction}.bin"))]


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- scenarios

SECURED_COUNT = 30
PLAIN_COUNT = 10


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_a_forwarding_node_and_the_wire_never_see_a_secured_body(variant: str, tmp_path: Path) -> None:
    """a - b - c, the broker on b forwarding; proxies record what reaches b's node and c's node."""
    c_cert, c_key = create_self_signed("c-owner", key_type="ec")
    a_cert, a_key = create_self_signed("a-signer", key_type="ec")
    with Hosts(variant, tmp_path, ["a", "b", "c"], [("a", "b"), ("b", "c")]) as h:
        a_ip, b_ip, c_ip = h.ip("a", "b"), h.ip("b", "a"), h.ip("c", "b")
        a_port, b_port, c_port, pb_port, pc_port = (h.port(p) for p in (NODE_PORT, NODE_PORT, NODE_PORT,
                                                                           PROXY_PORT, PROXY_PORT))  # fmt: skip
        via_pb, via_pc = f"tcp://{b_ip}:{pb_port}", f"tcp://{c_ip}:{pc_port}"
        h.node("C", "c", c_port, federation=FEDERATION)
        h.node("B", "b", b_port, federation=FEDERATION, forwarding=True,
               routes={"svcC": via_pc, "svcP": via_pc, "svcA": f"tcp://{a_ip}:{a_port}"})  # fmt: skip
        h.node("A", "a", a_port, federation=FEDERATION, routes={"svcC": via_pb, "svcP": via_pb})
        proxy(h, "PB", "b", f"{b_ip}:{pb_port}", f"{b_ip}:{b_port}", "--record", str(tmp_path / "hop-ab"))
        proxy(h, "PC", "c", f"{c_ip}:{pc_port}", f"{c_ip}:{c_port}", "--record", str(tmp_path / "hop-bc"))
        h.assert_kernel_does_not_forward("b")
        h.wait_listening()
        url_a, url_c = f"tcp://{a_ip}:{a_port}", f"tcp://{c_ip}:{c_port}"

        drive(h, "c", url_c, "--setup", write_objects(tmp_path / "c.json", [
            ("queue", {"name": "qc"}),
            ("queue", {"name": "qp"}),
            ("identity", {"name": "c-owner", "certificate": c_cert, "private_key": c_key}),
            ("service", {"name": "svcC", "queue": "qc", "contracts": ["DEFAULT"], "owner": "c-owner"}),
            ("service", {"name": "svcP", "queue": "qp", "contracts": ["DEFAULT"]}),
        ]))  # fmt: skip
        sent = drive(
            h, "a", url_a,
            "--setup", signer_at_a(tmp_path / "a.json", "svcC", c_cert, a_cert, a_key),
            "--dialog", "svcA", "svcC", "encrypted", SECRET.decode(), str(SECURED_COUNT),
            "--dialog", "svcA", "svcP", "plain", CONTROL.decode(), str(PLAIN_COUNT),
            "--wait-delivered", "30",
        )  # fmt: skip
        secured, plain = record(sent, "dialog")
        assert (secured["to"], plain["to"]) == ("svcC", "svcP")

        # Everything is acknowledged by C, so stored there: C keeps received bodies opened (the control for the
        # store scan), while B, which forwarded every one of them, must have nothing of them anywhere.
        c_files = files_under(tmp_path / "C" / "data")
        assert any(SECRET in data for data in c_files.values()), (
            f"the secured bodies are not in C's store ({sorted(c_files)}): the store scan proves nothing"
        )
        b_files = files_under(tmp_path / "B" / "data")
        assert any(name.endswith("-wal") for name in b_files), f"B's store has no WAL to look into: {sorted(b_files)}"
        leaked = sorted(name for name, data in b_files.items() if SECRET in data)
        assert not leaked, f"a secured body is in the forwarding node's stored files {leaked}"
        assert SECRET not in h.servers["B"].output().encode(), "a secured body is in the forwarding node's log"

        got = record(drive(h, "c", url_c, "--consume", "qc", str(SECURED_COUNT), "--consume", "qp", str(PLAIN_COUNT)),
                     "received")  # fmt: skip
        by_queue = {r["queue"]: r["messages"] for r in got}
        for dialog, queue, prefix, count in (
            (secured, "qc", SECRET, SECURED_COUNT),
            (plain, "qp", CONTROL, PLAIN_COUNT),
        ):
            expected = [[dialog["conversation_id"], i, "DEFAULT", (prefix + b"%d" % i).decode()] for i in range(count)]
            assert by_queue[queue] == expected, f"{queue}: not every body exactly once, in order, readable"

        for hop in ("hop-ab", "hop-bc"):
            up, down = recordings(tmp_path, hop, "up"), recordings(tmp_path, hop, "down")
            assert up and all(up) and any(down), f"{hop}: nothing recorded"
            for i, data in enumerate(up + down):
                assert SECRET not in data, f"{hop}: a secured body crossed the wire in clear (recording {i})"
            sent_up = b"".join(up)
            assert b"svcC" in sent_up and b"svcA" in sent_up, f"{hop}: the headers are not in the recording"
            assert sum(data.count(CONTROL) for data in up) >= PLAIN_COUNT, (
                f"{hop}: the plain conversation's bodies are not in the recording: the check proves nothing"
            )


TAMPER_COUNT = 20
TAMPERED = 5  # the sequence number of the message whose body the proxy changes (its first copy)


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
def test_a_tampered_body_is_dropped_reported_and_resent(variant: str, tmp_path: Path) -> None:
    """a - b; the proxy in front of b's node flips a byte of message 5's sealed body, once."""
    b_cert, b_key = create_self_signed("b-owner", key_type="ec")
    a_cert, a_key = create_self_signed("a-signer", key_type="ec")
    with Hosts(variant, tmp_path, ["a", "b"], [("a", "b")]) as h:
        a_ip, b_ip = h.ip("a", "b"), h.ip("b", "a")
        a_port, b_port, pt_port = h.port(NODE_PORT), h.port(NODE_PORT), h.port(PROXY_PORT)
        h.node("B", "b", b_port, federation=FEDERATION)
        h.node("A", "a", a_port, federation=FEDERATION, routes={"svcB": f"tcp://{b_ip}:{pt_port}"})
        tamper_events = tmp_path / "tamper-events.jsonl"
        proxy(h, "PT", "b", f"{b_ip}:{pt_port}", f"{b_ip}:{b_port}",
              "--events", str(tamper_events), "--tamper-message", str(TAMPERED))  # fmt: skip
        h.wait_listening()
        url_a, url_b = f"tcp://{a_ip}:{a_port}", f"tcp://{b_ip}:{b_port}"

        drive(h, "b", url_b, "--setup", write_objects(tmp_path / "b.json", [
            ("queue", {"name": "qb"}),
            ("identity", {"name": "b-owner", "certificate": b_cert, "private_key": b_key}),
            ("service", {"name": "svcB", "queue": "qb", "contracts": ["DEFAULT"], "owner": "b-owner"}),
        ]))  # fmt: skip
        sent = drive(
            h, "a", url_a,
            "--setup", signer_at_a(tmp_path / "a.json", "svcB", b_cert, a_cert, a_key),
            "--dialog", "svcA", "svcB", "encrypted", "UNTAMPERED-BODY-", str(TAMPER_COUNT),
            "--wait-delivered", "30", "--status",
        )  # fmt: skip
        conversation_id = record(sent, "dialog")["conversation_id"]

        # Delivered: every message exactly once, in order, as sent (the tampered copy never got in).
        out = drive(h, "b", url_b, "--consume", "qb", str(TAMPER_COUNT), "--status")
        expected = [[conversation_id, i, "DEFAULT", f"UNTAMPERED-BODY-{i}"] for i in range(TAMPER_COUNT)]
        assert record(out, "received")["messages"] == expected

        # The proxy changed message 5's sealed body, once.
        seen = events(tamper_events)
        tampered = [{**e["tampered"], "t": e["t"]} for e in seen if "tampered" in e]
        assert len(tampered) == 1, f"the proxy tampered {len(tampered)} times: {tampered}"
        t = tampered[0]
        assert (t["conversation_id"], t["seq"], t["sealed"]) == (conversation_id, TAMPERED, "sealed"), t

        # B reported it and dropped it without acknowledging it: on that connection nothing from message 5 on was
        # ever acknowledged; A sent it again on a later connection, after its ack_timeout, and that copy was
        # acknowledged with the rest.
        reports = [line for line in h.servers["B"].output().splitlines()
                   if f"message {TAMPERED} of conversation {conversation_id}" in line]  # fmt: skip
        assert any("failed dialog security" in line and "dropped, not acknowledged" in line for line in reports), (
            f"B's log does not report the tampered message:\n{h.servers['B'].output()}"
        )
        assert record(out, "status")["security"]["messages_dropped"] == 1

        def acked(conn: int) -> list[int]:
            return [a[2] for e in seen if e.get("conn") == conn and e.get("dir") == "down"
                    for a in e["acks"] if a[0] == conversation_id]  # fmt: skip

        assert all(next_seq <= TAMPERED for next_seq in acked(t["conn"])), (
            f"acknowledgements on the tampered connection: {acked(t['conn'])} (expected up to {TAMPERED}, not beyond)"
        )
        resent = [e for e in seen if e.get("dir") == "up" and e["conn"] > t["conn"]
                  and [conversation_id, TAMPERED, "sealed"] in e["messages"]]  # fmt: skip
        assert resent, f"A never sent message {TAMPERED} again: {seen}"
        waited = resent[0]["t"] - t["t"]
        assert waited >= ACK_TIMEOUT, f"A resent message {TAMPERED} after {waited:.3f}s, before its ack_timeout"
        later = {e["conn"] for e in seen if e.get("conn", -1) >= resent[0]["conn"]}
        assert any(TAMPER_COUNT in acked(c) for c in later), f"the resent messages were not acknowledged: {seen}"
        links = record(sent, "status")["transmission"]["links"]
        assert any("ack_timeout" in (link["last_error"] or "") for link in links), (
            f"A did not resend because of its ack_timeout: {links}"
        )
