"""A real DNS server for the ``dns_srv`` resolver's tests: dnsmasq on 127.0.0.1 and a free port, in the foreground.

Why a real one: the resolver's job is to read what a real server sends (TTLs, the SOA of a negative answer, the
target ``.``, time-outs), and a hand-made fake would only answer what its author thought a server says.

dnsmasq serves one zone (``test.`` unless told otherwise), from command-line options only (``--conf-file=/dev/null``
``--no-resolv --no-hosts``: nothing from the machine), bound to 127.0.0.1 alone (``--listen-address=127.0.0.1
--bind-interfaces``), UDP and TCP on the chosen port; it forwards nothing (no upstream servers) and runs with
``--keep-in-foreground`` as a child of the test, logging to a file next to the test's other files. Two modes:

* ``authoritative=True`` (default): ``--auth-zone`` and ``--auth-server``. Answers carry the AA bit and, for
  NXDOMAIN and NODATA, an SOA in the authority section whose TTL and minimum are both ``ttl`` (dnsmasq 2.90 uses
  ``--auth-ttl`` for both, and for every record: a host record's own TTL is ignored in this mode).
* ``authoritative=False``: ``--local=/zone/`` and ``--local-ttl``. SRV records get ``ttl``; a host record may have
  its own TTL; negative answers carry *no* SOA (so a resolver must fall back to its default negative TTL).

Records are given as :class:`Srv` and :class:`Host` and become ``--srv-host`` and ``--host-record``. ``restart``
stops the server and starts it again on the same port with new records (the "the answer changed" case).

Elsewhere than 127.0.0.1 (across hosts): ``listen`` is the one address it binds (and names as its own server), and
``command_prefix`` is put before its command, e.g. ``["ip", "netns", "exec", NS]`` to run it inside a network
namespace; the prefix must exec the command in place (``ip netns exec`` does), since :meth:`Dnsmasq.stop` signals the
pid it started. With a prefix, the readiness probe runs through the same prefix (a small Python program polling with
the same deadline), so it asks from where the server's clients are; ``port`` must then be given (a fresh
namespace's ports are all free, and this process cannot check them). The defaults change nothing.
dnsmasq drops privileges after binding; as root it is told ``--user=root`` so that a machine without the
``dnsmasq`` account still works (it only ever binds a loopback address and a high port).

Debian: ``apt-get install dnsmasq-base`` (the binary alone; the ``dnsmasq`` package adds a system service that
would want port 53). ``scripts/test`` installs it when run as root. Without it, :func:`require_dnsmasq` skips.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import dns.exception
import dns.message
import dns.query
import pytest
from node_process import stop_by_pid

__all__ = ["Dnsmasq", "Host", "Srv", "dnsmasq_path", "free_udp_tcp_port", "require_dnsmasq"]

LOOPBACK = "127.0.0.1"

#: the readiness probe when the server runs behind a command prefix (another namespace): run through the same
#: prefix, it polls ``address port zone timeout`` with an SOA query until an answer or the deadline (exit 1)
_PROBE = """
import sys, time
import dns.exception, dns.message, dns.query
address, port, zone, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + timeout
query = dns.message.make_query(zone + ".", "SOA")
while True:
    try:
        dns.query.udp(query, address, port=port, timeout=0.2)
        sys.exit(0)
    except (dns.exception.Timeout, OSError):
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.02)
"""


def dnsmasq_path() -> str | None:
    """The dnsmasq binary, also when /usr/sbin is not on PATH (a non-root user's PATH on Debian)."""
    found = shutil.which("dnsmasq")
    if found:
        return found
    for candidate in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_dnsmasq() -> str:
    """The dnsmasq binary, or skip the test saying how to get it."""
    path = dnsmasq_path()
    if path is None:
        pytest.skip("dnsmasq is not installed (Debian: apt-get install dnsmasq-base; scripts/test installs it as root)")
    return path


def free_udp_tcp_port(host: str = LOOPBACK) -> int:
    """A port free for both TCP and UDP on ``host`` (a DNS server needs both; the usual free_port checks TCP)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise AssertionError(f"no port free for both TCP and UDP on {host} after 50 tries")


@dataclass(frozen=True, slots=True)
class Srv:
    """An SRV record: ``name`` (e.g. ``_orders._tcp.test``) → ``target`` (``.``: "not available") and port."""

    name: str
    target: str
    port: int = 0
    priority: int = 0
    weight: int = 0

    def option(self) -> str:
        return f"--srv-host={self.name},{self.target},{self.port},{self.priority},{self.weight}"


@dataclass(frozen=True, slots=True)
class Host:
    """A/AAAA records: ``name`` → IPv4 and/or IPv6 addresses (dnsmasq takes at most one of each per option; give
    the name twice for more); ``ttl`` only counts when the server is not authoritative."""

    name: str
    addresses: tuple[str, ...]
    ttl: int | None = None

    def option(self) -> str:
        ttl = f",{self.ttl}" if self.ttl is not None else ""
        return f"--host-record={self.name},{','.join(self.addresses)}{ttl}"


class Dnsmasq:
    """One dnsmasq process serving ``zone``; use as a context manager or call :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        workdir: Path,
        *,
        zone: str = "test",
        ttl: int = 2,
        authoritative: bool = True,
        records: Iterable[Srv | Host] = (),
        port: int | None = None,
        listen: str = LOOPBACK,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.binary = require_dnsmasq()
        self.workdir = workdir
        self.zone = zone.strip(".")
        self.ttl = ttl
        self.authoritative = authoritative
        self.records: tuple[Srv | Host, ...] = tuple(records)
        self.listen = listen
        self.command_prefix: tuple[str, ...] = tuple(command_prefix)
        if port is None and self.command_prefix:
            raise ValueError("give a port when the server runs behind a command prefix (another namespace)")
        self.port = port or free_udp_tcp_port(listen)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"dnsmasq-{self.port}.log"
        self._log: IO[bytes] | None = None

    @property
    def nameserver(self) -> str:
        """``address:port`` (``127.0.0.1:port`` by default), as the resolver's ``nameservers`` option takes it."""
        return f"{self.listen}:{self.port}"

    def command(self) -> list[str]:
        zone = self.zone
        mode = (
            [f"--auth-server=ns.{zone},{self.listen}", f"--auth-zone={zone}", f"--auth-ttl={self.ttl}"]
            if self.authoritative
            else [f"--local=/{zone}/", f"--local-ttl={self.ttl}"]
        )
        user = ["--user=root"] if os.geteuid() == 0 else []
        return [
            *self.command_prefix,
            self.binary,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--pid-file=",  # empty: no pid file (we hold the pid)
            "--log-facility=-",  # stderr, which goes to log_path
            "--log-queries",
            f"--listen-address={self.listen}",
            "--bind-interfaces",
            f"--port={self.port}",
            *user,
            *mode,
            *(record.option() for record in self.records),
        ]

    def start(self, timeout: float = 10.0) -> Dnsmasq:
        """Start it and wait (polling, with a deadline) until it answers a query."""
        assert self.proc is None, "already running"
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        except BaseException:
            log.close()
            raise
        self._log = log
        deadline = time.monotonic() + timeout
        query = dns.message.make_query(f"{self.zone}.", "SOA")
        probe: subprocess.Popen[bytes] | None = None
        if self.command_prefix:  # asked from inside, through the same prefix, polling until the same deadline
            probe_argv = [sys.executable, "-c", _PROBE, self.listen, str(self.port), self.zone, str(timeout)]
            probe = subprocess.Popen([*self.command_prefix, *probe_argv], stdin=subprocess.DEVNULL)
        try:
            while True:
                if self.proc.poll() is not None:
                    code = self.proc.returncode
                    self.stop()
                    raise AssertionError(f"dnsmasq exited with {code} at start:\n{self.output()}")
                if probe is not None:
                    if probe.poll() == 0:
                        return self
                else:
                    try:
                        dns.query.udp(query, self.listen, port=self.port, timeout=0.2)
                        return self
                    except (dns.exception.Timeout, OSError):
                        pass
                if time.monotonic() > deadline or (probe is not None and probe.returncode not in (None, 0)):
                    self.stop()
                    raise AssertionError(
                        f"dnsmasq on {self.nameserver} did not answer within {timeout}s:\n{self.output()}"
                    )
                time.sleep(0.02)  # a poll interval inside a deadline
        finally:
            if probe is not None and probe.poll() is None:
                os.kill(probe.pid, signal.SIGKILL)  # by its pid (the prefix execs it in place)
                probe.wait(timeout=5)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM by pid, SIGKILL if it has not gone by the deadline; then close the log. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_by_pid(proc, timeout)
        log, self._log = self._log, None
        if log is not None:
            log.close()

    def restart(self, records: Sequence[Srv | Host] | None = None, *, ttl: int | None = None) -> Dnsmasq:
        """Stop, change the records (and TTL) if given, start again on the same port."""
        self.stop()
        if records is not None:
            self.records = tuple(records)
        if ttl is not None:
            self.ttl = ttl
        return self.start()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Dnsmasq:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
