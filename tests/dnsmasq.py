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

__all__ = ["Dnsmasq", "Host", "Srv", "dnsmasq_path", "free_udp_tcp_port", "require_dnsmasq"]

LOOPBACK = "127.0.0.1"


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
    ) -> None:
        self.binary = require_dnsmasq()
        self.workdir = workdir
        self.zone = zone.strip(".")
        self.ttl = ttl
        self.authoritative = authoritative
        self.records: tuple[Srv | Host, ...] = tuple(records)
        self.port = port or free_udp_tcp_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"dnsmasq-{self.port}.log"
        self._log: IO[bytes] | None = None

    @property
    def nameserver(self) -> str:
        """``127.0.0.1:port``, as the resolver's ``nameservers`` option takes it."""
        return f"{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        zone = self.zone
        mode = (
            [f"--auth-server=ns.{zone},{LOOPBACK}", f"--auth-zone={zone}", f"--auth-ttl={self.ttl}"]
            if self.authoritative
            else [f"--local=/{zone}/", f"--local-ttl={self.ttl}"]
        )
        user = ["--user=root"] if os.geteuid() == 0 else []
        return [
            self.binary,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--pid-file=",  # empty: no pid file (we hold the pid)
            "--log-facility=-",  # stderr, which goes to log_path
            "--log-queries",
            f"--listen-address={LOOPBACK}",
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
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise AssertionError(f"dnsmasq exited with {code} at start:\n{self.output()}")
            try:
                dns.query.udp(query, LOOPBACK, port=self.port, timeout=0.2)
                return self
            except (dns.exception.Timeout, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"dnsmasq on port {self.port} did not answer within {timeout}s:\n{self.output()}")
            time.sleep(0.02)  # a poll interval inside a deadline

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM by pid, SIGKILL if it has not gone by the deadline; then close the log. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=timeout)
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
