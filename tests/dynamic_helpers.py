"""Helpers for ``tests/test_dynamic_routing.py``: node configs with a ``[resolver]``, pairs of real node processes,
the HTTP registry as a process, atomic edits of a resolver's file, and receiving with deadlines.

Everything here talks to 127.0.0.1 only, unless told an address in one of the across-hosts test's own namespaces
(``tests/netns.py``; :func:`netns_prefix` runs a command inside one); every process is stopped by its pid; every
wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from netns import Topology
from node_process import NodeProcess, free_port, stop_by_pid, wait_for

import aiobroker

LOOPBACK = "127.0.0.1"
#: short federation time-outs, so that a lost connection is noticed within the test's bounds
FEDERATION = {"ack_timeout": 2, "connect_timeout": 2, "handshake_timeout": 2}
REGISTRY_SCRIPT = Path(__file__).with_name("http_registry.py")
STOP_TIMEOUT = 10.0

#: a readiness probe run through a command prefix (inside another namespace): ``python -c _CONNECT_PROBE HOST
#: PORT TIMEOUT`` polls a TCP connect until it succeeds (exit 0) or the deadline passes (exit 1)
_CONNECT_PROBE = """
import socket, sys, time
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while True:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            sys.exit(0)
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.02)
"""


def netns_prefix(topo: Topology, host: str) -> list[str]:
    """The command prefix that runs a program inside ``host``'s namespace, in place (its pid is the program's):
    ``ip netns exec NS``, as ``Topology.run`` does, for helpers that start their process themselves."""
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if ip is None:
        raise RuntimeError("the ip command (iproute2) is not installed")
    return [ip, "netns", "exec", topo.namespace(host)]


# --------------------------------------------------------------------------------------------- config files


def toml_value(value: Any) -> str:
    """A TOML value for a str, bool, int, float, list or dict (as an inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def node_config(
    *,
    listen: str,
    data_dir: Path,
    service: str,
    queue: str,
    accepts: bool,
    routes: Mapping[str, str] | None = None,
    resolver: Mapping[str, Any] | None = None,
    dynamic_routing: Mapping[str, Any] | None = None,
) -> str:
    """A node's TOML: one queue and service, static routes (service name → address), a resolver if given."""
    lines = [
        "[node]",
        f"listen = {toml_value(listen)}",
        f"data_dir = {toml_value(str(data_dir))}",
        'store = "sqlite"',
        'log_level = "info"',
        "",
        "[federation]",
        *(f"{k} = {toml_value(v)}" for k, v in FEDERATION.items()),
        "",
    ]
    if dynamic_routing:
        lines += ["[dynamic_routing]", *(f"{k} = {toml_value(v)}" for k, v in dynamic_routing.items()), ""]
    if resolver is not None:
        lines += ["[resolver]", *(f"{k} = {toml_value(v)}" for k, v in resolver.items()), ""]
    lines += [
        "[[queue]]", f"name = {toml_value(queue)}", "",
        "[[service]]", f"name = {toml_value(service)}", f"queue = {toml_value(queue)}",
        f"contracts = {toml_value(['DEFAULT'] if accepts else [])}", "",
    ]  # fmt: skip
    for i, (service_name, address) in enumerate((routes or {}).items()):
        lines += [
            "[[route]]",
            f"name = {toml_value(f'static-{i}')}",
            f"service_name = {toml_value(service_name)}",
            f"address = {toml_value(address)}",
            "",
        ]
    return "\n".join(lines)


def routes_file_toml(services: Mapping[str, Sequence[Mapping[str, Any]]], lifetime: float | None = None) -> str:
    """A static_file resolver's TOML: service name → its targets (each a table with an address, ...)."""
    lines: list[str] = []
    for name, targets in services.items():
        lines.append(f"[services.{json.dumps(name)}]")
        if lifetime is not None:
            lines.append(f"lifetime = {toml_value(lifetime)}")
        lines.append(f"targets = {toml_value(list(targets))}")
        lines.append("")
    return "\n".join(lines)


def write_atomically(path: Path, text: str) -> None:
    """Write a new version of ``path`` as an operator should: a temporary file renamed over the old one. The new
    version's mtime is made later than the old one's (a coarse clock could give both the same), so a reader that
    looks at the mtime sees the change too (the rename gives it a new inode as well)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    try:
        old = path.stat().st_mtime_ns
    except FileNotFoundError:
        old = None
    if old is not None and tmp.stat().st_mtime_ns <= old:
        later = old + 1_000_000_000
        os.utime(tmp, ns=(later, later))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- two nodes


@dataclass
class Pair:
    """Node A (service svcA, a resolver, no route to svcB) and node B (svcB accepting DEFAULT, a route back to
    svcA), each a real process on loopback (tests/node_process.py)."""

    a: NodeProcess
    b: NodeProcess
    home_a: Path

    @property
    def b_address(self) -> str:
        return f"tcp://{LOOPBACK}:{self.b.port}"

    def logs(self) -> str:
        return f"--- node A ---\n{self.a.output()}\n--- node B ---\n{self.b.output()}"


@contextmanager
def node_pair(
    tmp_path: Path,
    resolver: Mapping[str, Any],
    *,
    dynamic_routing: Mapping[str, Any] | None = None,
    b_port: int | None = None,
    store_a: str = "sqlite",
) -> Iterator[Pair]:
    """Start B, then A (whose ``[resolver]`` is ``resolver``, on ``store_a``); both stopped by pid at the end, and
    both must exit cleanly. On failure the nodes' logs are printed."""
    home_a, home_b = tmp_path / "A", tmp_path / "B"
    home_a.mkdir()
    home_b.mkdir()
    port_a, port_b = free_port(), b_port or free_port()
    config_b = home_b / "node.toml"
    config_b.write_text(
        node_config(
            listen=f"{LOOPBACK}:{port_b}", data_dir=home_b / "data", service="svcB", queue="qb", accepts=True,
            routes={"svcA": f"tcp://{LOOPBACK}:{port_a}"},
        )
    )  # fmt: skip
    config_a = home_a / "node.toml"
    config_a.write_text(
        node_config(
            listen=f"{LOOPBACK}:{port_a}", data_dir=home_a / "data", service="svcA", queue="qa", accepts=False,
            resolver=resolver, dynamic_routing=dynamic_routing,
        )
    )  # fmt: skip
    b = NodeProcess(home_b / "data", port=port_b, extra=["--config", str(config_b)])
    a = NodeProcess(home_a / "data", port=port_a, store=store_a, extra=["--config", str(config_a)])
    pair = Pair(a, b, home_a)
    started: list[NodeProcess] = []
    failed = False
    try:
        started.append(b.start())
        started.append(a.start())
        yield pair
    except BaseException:
        failed = True
        print(f"===== logs of the nodes =====\n{pair.logs()}")
        raise
    finally:
        codes = {node.port: node.stop(timeout=STOP_TIMEOUT) for node in started}
    if not failed:
        assert all(code == 0 for code in codes.values()), f"nodes exited uncleanly: {codes}\n{pair.logs()}"


@contextmanager
def lone_node(tmp_path: Path, resolver: Mapping[str, Any]) -> Iterator[NodeProcess]:
    """Node A alone (svcA, the resolver), for the smallest reproductions; stopped by pid, and it must exit cleanly."""
    home = tmp_path / "A"
    home.mkdir()
    port = free_port()
    config = home / "node.toml"
    config.write_text(
        node_config(listen=f"{LOOPBACK}:{port}", data_dir=home / "data", service="svcA", queue="qa", accepts=False,
                    resolver=resolver)
    )  # fmt: skip
    node = NodeProcess(home / "data", port=port, extra=["--config", str(config)]).start()
    try:
        yield node
    except BaseException:
        print(f"===== log of the node =====\n{node.output()}")
        raise
    finally:
        code = node.stop(timeout=STOP_TIMEOUT)
    assert code == 0, f"the node exited with {code}:\n{node.output()}"


# --------------------------------------------------------------------------------------------- the registry


class Registry:
    """tests/http_registry.py in its own process on 127.0.0.1 (answers from a JSON file it re-reads on every
    request, one JSON line per request in its log), stopped by its pid.

    Across hosts: ``host`` is the address it listens on and ``command_prefix`` goes before its command (e.g.
    :func:`netns_prefix`; it must exec the program in place, as ``ip netns exec`` does). With a prefix, ``port`` must
    be given (this process cannot check another namespace's ports) and the readiness probe runs through the prefix
    too, polling until the same deadline."""

    def __init__(
        self, workdir: Path, *, host: str = LOOPBACK, port: int | None = None, command_prefix: Sequence[str] = ()
    ) -> None:
        self.host = host
        self.command_prefix = list(command_prefix)
        if port is None and self.command_prefix:
            raise ValueError("give a port when the registry runs behind a command prefix (another namespace)")
        self.port = port or free_port()
        self.routes_file = workdir / "registry-routes.json"
        self.log_file = workdir / "registry-requests.jsonl"
        self.stderr_path = workdir / "registry.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.serve({})

    def url(self) -> str:
        """The resolver's url option: the aiobroker format's path."""
        return f"http://{self.host}:{self.port}/v1/services/{{service}}"

    def serve(self, services: Mapping[str, Mapping[str, Any]], bindings: Mapping[str, Mapping[str, Any]] | None = None,
              *, route_only: bool = False) -> None:
        """Replace every answer, atomically. ``route_only``: an older registry, which answers a route question
        without the binding however it is asked."""
        tmp = self.routes_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"services": services, "bindings": bindings or {}, "route_only": route_only}))
        os.replace(tmp, self.routes_file)

    def requests(self, service: str | None = None) -> list[dict[str, Any]]:
        """What was asked (the log's lines), for one service's paths if given (its route, and its binding)."""
        if not self.log_file.exists():
            return []
        lines = [json.loads(line) for line in self.log_file.read_text().splitlines() if line.strip()]
        if service is None:
            return lines
        from urllib.parse import quote

        path = "/v1/services/" + quote(service, safe="")
        return [r for r in lines if r["path"].split("?")[0] in (path, path + "/binding")]

    def questions(self, service: str) -> dict[str, int]:
        """How many times the registry was asked about ``service``, by kind: a route request that asked for the
        binding too (``Aiobroker-Ask: route, binding``) counts once under each kind, and under ``round_trips``."""
        counts = {"route": 0, "binding": 0, "round_trips": 0}
        for r in self.requests(service):
            counts["round_trips"] += 1
            if r["path"].split("?")[0].endswith("/binding"):
                counts["binding"] += 1
                continue
            counts["route"] += 1
            header = next((v for k, v in r["headers"].items() if k.lower() == "aiobroker-ask"), "")
            if "binding" in {q.strip() for q in header.split(",")}:
                counts["binding"] += 1
        return counts

    def start(self, timeout: float = 10.0) -> Registry:
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [*self.command_prefix, sys.executable, str(REGISTRY_SCRIPT), "--port", str(self.port),
             "--routes", str(self.routes_file), "--log", str(self.log_file), "--host", self.host],
            stdout=subprocess.DEVNULL, stderr=self._stderr,
        )  # fmt: skip
        probe: subprocess.Popen[bytes] | None = None
        if self.command_prefix:  # connect from inside, through the same prefix, polling until the same deadline
            probe = subprocess.Popen(
                [*self.command_prefix, sys.executable, "-c", _CONNECT_PROBE, self.host, str(self.port), str(timeout)],
                stdin=subprocess.DEVNULL,
            )  # fmt: skip

        def accepting() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"the registry exited with {self.proc.returncode}: {self.stderr_path.read_text()}")
            if probe is not None:
                if probe.poll() not in (None, 0):
                    raise AssertionError(f"the registry on {self.host}:{self.port} accepted nothing within {timeout}s")
                return probe.returncode == 0
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        try:
            wait_for(accepting, timeout, f"the registry on {self.host}:{self.port} to accept connections")
        except BaseException:
            self.stop()
            raise
        finally:
            if probe is not None and probe.poll() is None:
                os.kill(probe.pid, signal.SIGKILL)  # by its pid (the prefix execs it in place)
                probe.wait(timeout=STOP_TIMEOUT)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_by_pid(proc, STOP_TIMEOUT)
            self._stderr.close()

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------- waiting


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``await check()`` until it returns something truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(interval)  # a poll interval inside a deadline


def service_state(status: dict[str, Any], service: str) -> dict[str, Any] | None:
    """Dynamic routing's state for one service in a node's status, or None if it has none."""
    state: dict[str, Any] | None = status["dynamic_routing"]["services"].get(service)
    return state


Received = dict[str, list[tuple[int, str, bytes]]]  #: conversation id → [(sequence number, type, body)]


async def receive(client: aiobroker.Client, queue: str, expect: int, timeout: float, *, linger: float = 0.5) -> Received:
    """Receive (and commit) until ``expect`` messages came, failing after ``timeout`` seconds; then wait ``linger``
    seconds more for anything beyond (a duplicate would show there)."""
    got: Received = {}
    count = 0
    deadline = time.monotonic() + timeout
    while count < expect:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"received {count} of {expect} messages on {queue} within {timeout}s")
        batch = await client.receive(queue, max_messages=500, timeout=min(remaining, 1.0))
        for m in batch:
            got.setdefault(m.conversation_id, []).append((m.sequence_number, m.message_type, m.body))
            count += 1
        if batch:
            await batch.commit()
    batch = await client.receive(queue, max_messages=500, timeout=linger)
    for m in batch:
        got.setdefault(m.conversation_id, []).append((m.sequence_number, m.message_type, m.body))
    if batch:
        await batch.commit()
    return got


def cid(dialog: aiobroker.Dialog) -> str:
    """A dialog's conversation id (begin_dialog always gives one)."""
    assert dialog.conversation_id is not None
    return dialog.conversation_id


def numbered(first: int, count: int) -> list[tuple[str, bytes]]:
    """Messages ``first`` .. ``first + count - 1``, their bodies the numbers."""
    return [("DEFAULT", b"%d" % n) for n in range(first, first + count)]


def assert_exactly_once_in_order(received: Received, expected: Mapping[str, int]) -> None:
    """Per conversation id: bodies 0..n-1 in order, each once, sequence numbers the same; no other conversation."""
    unknown = set(received) - set(expected)
    assert not unknown, f"messages of conversations that sent none: {sorted(unknown)}"
    for i, (conversation_id, n) in enumerate(expected.items()):
        got = received.get(conversation_id, [])
        assert all(t == "DEFAULT" for _, t, _ in got), f"conversation {i}: unexpected message types {got[:3]}"
        numbers = [int(body) for _, _, body in got]
        assert len(numbers) == len(set(numbers)), f"conversation {i}: {len(numbers) - len(set(numbers))} duplicate(s)"
        assert numbers == list(range(n)), f"conversation {i}: got {len(numbers)} of {n}, or out of order: {numbers[:20]}"
        assert [seq for seq, _, _ in got] == numbers, f"conversation {i}: sequence numbers disagree with the bodies"
