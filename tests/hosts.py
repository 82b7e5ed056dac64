"""Processes of one test spread over several hosts: each host a network namespace, or all of them on 127.0.0.1.

The tests that run nodes as separate processes on separate hosts (``tests/test_federation_hosts.py``,
``tests/test_dialog_security_hosts.py``) run every scenario in two variants:

* ``netns``: every host is a network namespace of a :class:`netns.Topology` (veth links, one address per link) and
  every process of the host (node, proxy, client) runs inside it. Each host is its own namespace, so every node can
  listen on the same fixed port. The namespaces' names carry this process's pid and a counter, so parallel or
  repeated runs never collide, and they are removed on exit.
* ``loopback``: the same processes run here, on 127.0.0.1, each server on a free port of its own.

:class:`Hosts` is the one place that knows which variant runs: a test asks it for addresses (:meth:`Hosts.ip`,
:meth:`Hosts.listen_ip`), ports (:meth:`Hosts.port`), to start servers (:meth:`Hosts.node`, :meth:`Hosts.launch`)
and to run clients (:meth:`Hosts.popen`, :meth:`Hosts.check_output`), and never looks at the variant again except
for what only exists there (cutting a link). On exit everything it started is stopped by its pid (never by name),
the namespaces are removed, and, when the test passed, every server must have exited 0 on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, Self

import pytest
from netns import Topology, netns_available
from node_process import free_port, stop_by_pid, wait_for

VARIANTS = ["netns", "loopback"]
"""The two variants of every scenario: parametrize ``variant`` with them, ``indirect=True`` (see
:func:`netns_or_loopback`)."""

START_TIMEOUT = 20.0
"""Seconds a server may take to say ``listening on``."""

STOP_TIMEOUT = 10.0
"""Seconds a process may take to exit on SIGTERM before it gets SIGKILL (and again to exit after that)."""


@pytest.fixture(name="variant")
def netns_or_loopback(request: pytest.FixtureRequest) -> str:
    """The fixture ``variant``: the variant a test is parametrized with (``indirect=True``).

    ``netns`` is skipped, with :func:`netns.netns_available`'s reason, where namespaces cannot be made. A test module
    has the fixture by importing this function: ``from hosts import netns_or_loopback as netns_or_loopback`` (the
    redundant alias tells linters the import is meant)."""
    return require_variant(request.param)


def require_variant(variant: object) -> str:
    """``variant`` as given, having skipped the test if it is ``netns`` and namespaces cannot be made here (with
    :func:`netns.netns_available`'s reason). For a module's own ``variant`` fixture, parametrized directly."""
    if variant == "netns":
        ok, reason = netns_available()
        if not ok:
            pytest.skip(reason)
    return str(variant)


class Server:
    """A long-running process on one host (a node, a proxy) that prints ``listening on`` once it accepts connections.

    :meth:`start` runs it (again after :meth:`stop` or :meth:`kill`: the same argv on the same host, e.g. a node on
    the data it kept). Each run logs to a file of its own, ``<log_dir>/<name>-<run>.log``, so :meth:`wait_listening`
    judges the current run alone; :meth:`output` is every run's log, in order, each under a ``--- file ---`` line.
    It is only ever signalled by its pid.
    """

    def __init__(self, hosts: Hosts, name: str, host: str, argv: Sequence[str], log_dir: Path) -> None:
        self.hosts = hosts
        self.name = name
        self.host = host
        self.argv = list(argv)
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None
        self.log_paths: list[Path] = []

    def start(self) -> None:
        """Start a run; does not wait for it to listen (:meth:`wait_listening` does)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is already running"
        path = self.log_dir / f"{self.name}-{len(self.log_paths) + 1}.log"
        self.log_paths.append(path)
        self.log = open(path, "wb")  # noqa: SIM115 - closed when the run is stopped or killed
        self.proc = self.hosts.popen(self.host, self.argv, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        """Return once the current run's log says ``listening on``; AssertionError, with the log, if the process
        exits first or ``timeout`` seconds pass."""
        assert self.proc is not None and self.log_paths, f"{self.name} was never started"
        proc, path = self.proc, self.log_paths[-1]

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {proc.returncode} at start:\n{self.output()}")
            return "listening on " in path.read_text(errors="replace")

        wait_for(listening, timeout, f"{self.name} to listen")

    def output(self) -> str:
        return "".join(f"--- {p.name} ---\n{p.read_text(errors='replace')}" for p in self.log_paths if p.exists())

    def kill(self) -> None:
        """SIGKILL by pid: the crash. Waits for the process to be gone."""
        assert self.proc is not None, f"{self.name} was never started"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)
        self._close_log()

    def stop(self) -> int:
        """SIGTERM by pid (SIGKILL at the deadline, see :func:`stop_by_pid`); its exit code, 0 if never started."""
        if self.proc is None:
            return 0
        code = stop_by_pid(self.proc)
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


class Client(Protocol):
    """A shorter-lived process a test talks to (started with :meth:`Hosts.popen`) that :class:`Hosts` stops."""

    def stop(self) -> None:
        """Stop the process by its pid if it still runs and close what the test holds of it."""

    def output(self) -> str:
        """What it said, for the logs printed when a test fails."""


class Hosts:
    """The hosts of one scenario in one variant (``netns`` or ``loopback``, see the module docstring); a context
    manager.

    On entry the namespaces and links are built (netns). On exit, whether the test passed or not: the logs of every
    process are printed if it failed, every :meth:`stop_on_exit` client is stopped, then every server, each by its
    pid, and the namespaces are removed (killing by pid whatever still runs in them). If the test passed, exit
    asserts that every server exited 0 on SIGTERM.
    """

    def __init__(self, variant: str, tmp_path: Path, hosts: Sequence[str], links: Sequence[tuple[str, str]]) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r}: one of {VARIANTS}")
        self.variant = variant
        self.tmp_path = tmp_path
        self.topo: Topology | None = Topology(hosts, links) if variant == "netns" else None
        self.servers: dict[str, Server] = {}
        self.clients: list[Client] = []

    # -- addresses ------------------------------------------------------------------------------------------------

    def ip(self, host: str, towards: str) -> str:
        """The address of ``host`` that a process on host ``towards`` dials (for ``towards == host``: its address
        towards its first neighbour, where its own servers listen too). 127.0.0.1 on loopback."""
        if self.topo is None:
            return "127.0.0.1"
        if towards == host:
            towards = self.topo.neighbours(host)[0]
        return self.topo.address(host, towards=towards)

    def listen_ip(self, host: str) -> str:
        """Where a server on ``host`` listens to be reachable from every neighbour: the host's one address if it has
        one link, 0.0.0.0 if it has several (netns); 127.0.0.1 on loopback."""
        if self.topo is None:
            return "127.0.0.1"
        neighbours = self.topo.neighbours(host)
        return self.topo.address(host, towards=neighbours[0]) if len(neighbours) == 1 else "0.0.0.0"

    def port(self, fixed: int) -> int:
        """``fixed`` in netns (each host is its own namespace: the same port is free on each); a free port of this
        machine on loopback, where every server shares 127.0.0.1."""
        return fixed if self.topo is not None else free_port()

    # -- processes ------------------------------------------------------------------------------------------------

    def popen(self, host: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` on ``host`` (inside its namespace, or here); the Popen's pid is the program's own. A
        process that is neither a server nor given to :meth:`stop_on_exit` is the caller's to stop (netns also kills
        it when the namespaces go)."""
        if self.topo is not None:
            return self.topo.run(host, argv, **popen_kwargs)
        return subprocess.Popen(list(argv), **popen_kwargs)

    def check_output(self, host: str, argv: Sequence[str], *, timeout: float, what: str) -> str:
        """Run ``argv`` on ``host`` to completion and return its stdout (text). AssertionError naming ``what``, with
        its stdout and stderr, if it fails; ``subprocess.TimeoutExpired`` (after killing it) if it outlives
        ``timeout``."""
        try:
            if self.topo is not None:
                return self.topo.check_output(host, argv, timeout=timeout)
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=True).stdout
        except subprocess.CalledProcessError as exc:
            raise AssertionError(f"{what} failed ({exc.returncode}):\n{exc.stdout}\n{exc.stderr}") from None

    def stop_on_exit(self, client: Client) -> None:
        """Have ``client`` stopped on exit (before the servers it talks to) and its output in the failure logs."""
        self.clients.append(client)

    def launch(self, name: str, host: str, argv: Sequence[str], *, log_dir: Path | None = None) -> Server:
        """Start server ``name`` (unique in this scenario) on ``host``, logging under ``log_dir`` (default
        ``tmp_path``); it is in :attr:`servers` and stopped on exit. Does not wait: :meth:`wait_listening` does."""
        if name in self.servers:
            raise ValueError(f"a server named {name!r} is already in this scenario")
        server = self.servers[name] = Server(self, name, host, argv, log_dir or self.tmp_path)
        server.start()
        return server

    def node(
        self,
        name: str,
        host: str,
        port: int,
        *,
        federation: Mapping[str, float],
        forwarding: bool = False,
        routes: Mapping[str, str] | None = None,
        extra_toml: str = "",
    ) -> Server:
        """Start node ``name`` on ``host``: ``python -m aiobroker serve --config tmp_path/<name>/node.toml``, its logs
        beside the config. Does not wait: :meth:`wait_listening` does.

        The config: listening on :meth:`listen_ip` and ``port``; SQLite store in ``tmp_path/<name>/data``
        (durability normal); log level info; ``[federation]`` with ``forwarding`` and the ``federation`` settings;
        one ``[[route]]`` per ``routes`` entry (service name -> ``tcp://`` address, the route named ``to-<service>``);
        then ``extra_toml`` (queues, services) as it is."""
        home = self.tmp_path / name
        home.mkdir()
        lines = [
            "[node]",
            f'listen = "{self.listen_ip(host)}:{port}"',
            f'data_dir = "{home / "data"}"',
            'store = "sqlite"',
            'durability = "normal"',
            'log_level = "info"',
            "",
            "[federation]",
            f"forwarding = {'true' if forwarding else 'false'}",
            *(f"{key} = {value}" for key, value in federation.items()),
            "",
        ]
        for service, address in (routes or {}).items():
            lines += ["[[route]]", f'name = "to-{service}"', f'service_name = "{service}"', f'address = "{address}"']
            lines.append("")
        config = home / "node.toml"
        config.write_text("\n".join(lines) + extra_toml)
        argv = [sys.executable, "-m", "aiobroker", "serve", "--config", str(config)]
        return self.launch(name, host, argv, log_dir=home)

    def wait_listening(self) -> None:
        """Wait until every server started so far listens (see :meth:`Server.wait_listening`)."""
        for server in self.servers.values():
            server.wait_listening()

    def assert_kernel_does_not_forward(self, host: str) -> None:
        """netns: assert that ``host``'s kernel does not forward (``net.ipv4.ip_forward`` is 0), so whatever crosses
        ``host`` between its neighbours was passed on by the broker there. Loopback has no host kernel to ask."""
        if self.topo is not None:
            forwarding = self.topo.check_output(host, ["cat", "/proc/sys/net/ipv4/ip_forward"]).strip()
            assert forwarding == "0", (
                f"{host}'s kernel must not forward: the broker on {host} is what passes messages on"
            )

    # -- context --------------------------------------------------------------------------------------------------

    def logs(self) -> str:
        """Every server's log, then every client's output."""
        return "\n".join([*(s.output() for s in self.servers.values()), *(c.output() for c in self.clients)])

    def __enter__(self) -> Self:
        if self.topo is not None:
            self.topo.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is not None:
                print(f"===== logs of the servers and clients ({self.variant}) =====\n{self.logs()}")
            try:
                for client in self.clients:
                    client.stop()
            finally:
                codes = {name: server.stop() for name, server in self.servers.items()}
        finally:
            if self.topo is not None:
                self.topo.__exit__(exc_type, exc, tb)
        if exc is None:
            unclean = {name: code for name, code in codes.items() if code != 0}
            assert not unclean, f"servers exited uncleanly on SIGTERM: {unclean}\n{self.logs()}"
