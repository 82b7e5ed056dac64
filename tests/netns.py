"""Several "hosts" on one Linux machine, for federation tests: network namespaces joined by veth links.

Why namespaces: federated nodes must talk over real TCP between distinct addresses, across links that can fail,
through a middle node that (unlike a router) does the forwarding itself. Each host here is a network namespace with
its own interfaces, addresses, routes and ``ip_forward`` switch, so a test sees real connection failures and real
timeouts without touching the machine's own network.

Address plan (the module chooses it; nothing outside the namespaces made here is ever configured or addressed):

* link number ``i`` (0-based, in the order given to :class:`Topology`) is the subnet ``10.231.i.0/24``;
* on it, the link's first-named host is ``10.231.i.1`` and the second-named host is ``10.231.i.2``;
* each host gets a static route to every subnet it is not on, via its neighbour on a shortest path there, so two
  hosts two links apart reach each other only if the host between them forwards (``net.ipv4.ip_forward``, 0 by
  default on every host: in our tests the broker, not the kernel, forwards).

E.g. ``Topology(hosts=["a", "b", "c"], links=[("a", "b"), ("b", "c")])`` gives a=10.231.0.1, b=10.231.0.2 and
10.231.1.1, c=10.231.1.2; a routes 10.231.1.0/24 via 10.231.0.2, c routes 10.231.0.0/24 via 10.231.1.1.

Names: every namespace is ``<prefix><pid>-<n>-<host>`` (prefix ``aib-``, the pid of the process that made it, a
per-process counter), so parallel runs (pytest-xdist workers, two checkouts) never collide, and namespaces left by
a run that crashed can be recognised by their dead pid and removed with :func:`cleanup_stale`. Interface names
only exist inside the namespaces (veths are created there directly, never in the machine's own namespace): the
interface of host ``a`` on its link to ``b`` is ``to-b`` (or ``link<i>`` when that would not fit 15 characters).

Everything needs root and iproute2 (``scripts/test`` installs it through ``ensure_system_packages``); tests call
:func:`netns_available` and skip with its reason when it says no. ``AIOBROKER_NO_NETNS=1`` forces that answer, to
check that the tests skip cleanly.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = ["PREFIX", "SUBNET_PREFIX", "Topology", "cleanup_stale", "netns_available"]

PREFIX = "aib-"
"""Start of every namespace name this module makes; :func:`cleanup_stale` only looks at names with it."""

SUBNET_PREFIX = "10.231"
"""First two octets of every address; link ``i`` is ``10.231.i.0/24``. Used only inside our namespaces."""

MAX_LINKS = 256
"""One /24 per link in 10.231.0.0/16."""

IP_TIMEOUT = 10.0
"""Seconds one ``ip`` configuration command may take before we call it hung (they normally take milliseconds)."""

_IFNAMSIZ = 15  # the kernel's limit on an interface name, without its NUL
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]{0,31}\Z")
_counter = itertools.count()


def _ip_binary() -> str | None:
    """The ``ip`` command, also from the sbin directories that a non-root PATH often lacks."""
    return shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; on failure raise with its stderr, which says what went wrong far better than the code."""
    ip = _ip_binary()
    if ip is None:
        raise RuntimeError("the ip command (iproute2) is not installed")
    done = subprocess.run([ip, *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _list_namespaces() -> list[str]:
    """Names from ``ip netns list``, whose lines look like ``name`` or ``name (id: 3)``."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the pid exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _kill_namespace_processes(ns: str, deadline: float) -> None:
    """SIGKILL whatever still runs inside namespace ``ns``.

    Only a process that entered ``ns`` can be in it, and only our own runs enter our namespaces, so these are
    children of processes a Topology started (a server's workers, a shell's pipeline): killing them, by pid, is
    what lets the namespace and its veths actually go away instead of lingering unnamed.
    """
    while True:
        done = _ip("netns", "pids", ns, check=False)
        pids = [int(p) for p in done.stdout.split() if p.isdigit()] if done.returncode == 0 else []
        pids = [p for p in pids if p != os.getpid()]
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)  # a poll interval inside the deadline: SIGKILL is delivered asynchronously


def netns_available() -> tuple[bool, str]:
    """Whether this machine can run namespace tests, and why not when it cannot.

    Checks what a Topology needs, in the order a newcomer would trip over it: Linux, root, iproute2, then a probe
    that really adds a uniquely named namespace, a veth pair inside it and runs a command in it (containers may
    forbid any of these even to root), and deletes it again.
    """
    if os.environ.get("AIOBROKER_NO_NETNS", "") not in ("", "0"):
        return False, "network namespace tests disabled by AIOBROKER_NO_NETNS"
    if not sys.platform.startswith("linux"):
        return False, f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return False, "network namespace tests need root"
    if _ip_binary() is None:
        return False, "the ip command is missing (apt-get install iproute2; scripts/test does it as root)"
    probe = f"{PREFIX}{os.getpid()}-{next(_counter)}-probe"
    try:
        _ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return False, f"cannot create a network namespace: {e}"
    try:
        _ip("-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        _ip("netns", "exec", probe, "true")
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return False, f"network namespaces are restricted here: {e}"
    finally:
        try:
            _ip("netns", "del", probe)  # takes the veth pair with it
        except (RuntimeError, OSError, subprocess.SubprocessError):
            pass
    return True, ""


def cleanup_stale(prefix: str = PREFIX) -> list[str]:
    """Delete namespaces named ``<prefix><pid>-...`` whose pid no longer exists; return their names.

    A test process that was SIGKILLed (or a machine that lost power mid-run, with /run/netns kept) never ran
    ``__exit__``; its namespaces would pile up. Namespaces of live pids, including this process's own, are left
    alone: they belong to a run still going, perhaps in parallel with this one.
    """
    owner = re.compile(re.escape(prefix) + r"(\d+)-")
    removed: list[str] = []
    for ns in _list_namespaces():
        m = owner.match(ns)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_exists(pid):
            continue
        _kill_namespace_processes(ns, time.monotonic() + 5.0)
        if _ip("netns", "del", ns, check=False).returncode == 0:  # a parallel cleanup may have beaten us to it
            removed.append(ns)
    return removed


@dataclass(frozen=True)
class _Link:
    """One veth pair: ``index`` gives its subnet, ``left`` gets ``.1`` and ``right`` gets ``.2``."""

    index: int
    left: str
    right: str

    def subnet(self) -> str:
        return f"{SUBNET_PREFIX}.{self.index}.0/24"

    def address(self, host: str) -> str:
        return f"{SUBNET_PREFIX}.{self.index}.{1 if host == self.left else 2}"

    def other(self, host: str) -> str:
        return self.right if host == self.left else self.left

    def ifname(self, host: str) -> str:
        """The interface of ``host`` on this link, inside its namespace."""
        name = f"to-{self.other(host)}"
        return name if len(name) <= _IFNAMSIZ else f"link{self.index}"


class Topology:
    """Hosts (network namespaces) joined by links (veth pairs), built on ``__enter__`` and removed on ``__exit__``.

    ``ip_forward`` is False (no host forwards), True (every host does), or the names of the hosts that do.
    The hosts are addressed and routed as the module docstring says. Processes started with :meth:`run` are killed
    on exit, and every namespace and veth is deleted, whether the test passed, failed or raised.
    """

    def __init__(
        self,
        hosts: Sequence[str],
        links: Iterable[tuple[str, str]],
        *,
        ip_forward: bool | Iterable[str] = False,
        prefix: str = PREFIX,
        stop_timeout: float = 5.0,
    ) -> None:
        self.hosts: tuple[str, ...] = tuple(hosts)
        if len(set(self.hosts)) != len(self.hosts):
            raise ValueError(f"host names repeat: {self.hosts}")
        for host in self.hosts:
            if not _HOST_NAME.match(host):
                raise ValueError(f"host name {host!r}: use 1-32 letters, digits, '_' or '.'")
        self._links: list[_Link] = []
        seen: set[frozenset[str]] = set()
        for left, right in links:
            for host in (left, right):
                if host not in self.hosts:
                    raise ValueError(f"link ({left}, {right}) names unknown host {host!r}")
            if left == right:
                raise ValueError(f"link ({left}, {right}) joins a host to itself")
            if frozenset((left, right)) in seen:
                raise ValueError(f"hosts {left} and {right} are linked twice")
            seen.add(frozenset((left, right)))
            self._links.append(_Link(len(self._links), left, right))
        if len(self._links) > MAX_LINKS:
            raise ValueError(f"{len(self._links)} links; the address plan has room for {MAX_LINKS}")
        if isinstance(ip_forward, bool):
            self._forwarding = frozenset(self.hosts if ip_forward else ())
        else:
            self._forwarding = frozenset(ip_forward)
            unknown = self._forwarding - set(self.hosts)
            if unknown:
                raise ValueError(f"ip_forward names unknown hosts {sorted(unknown)}")
        self._stop_timeout = stop_timeout
        self._tag = f"{prefix}{os.getpid()}-{next(_counter)}-"
        self._made: list[str] = []  # namespaces created so far, so a half-built topology is still removed
        self._veths: list[_Link] = []  # likewise veth pairs
        self._procs: list[subprocess.Popen[Any]] = []
        self._routes = self._plan_routes()

    # -- names and addresses, usable before __enter__ too ------------------------------------------------------

    def namespace(self, host: str) -> str:
        """The namespace name of ``host``, e.g. for ``ip -n NAME ...`` while debugging."""
        self._check_host(host)
        return self._tag + host

    @property
    def namespaces(self) -> list[str]:
        return [self.namespace(h) for h in self.hosts]

    def address(self, host: str, towards: str | None = None) -> str:
        """The IPv4 address of ``host``: its only one, or the one on its link towards host ``towards``.

        ``towards`` may also be a host further away: then the address is the one on the first link of a shortest
        path from ``host`` to it, i.e. the address ``towards`` would dial to reach ``host`` through the routes.
        """
        return self._link_towards(host, towards).address(host)

    def interface(self, host: str, towards: str | None = None) -> str:
        """The interface name of ``host`` on the same link :meth:`address` picks (for ``ip``/``tc`` commands)."""
        return self._link_towards(host, towards).ifname(host)

    def neighbours(self, host: str) -> list[str]:
        """The hosts with a link to ``host``, in the order those links were given."""
        self._check_host(host)
        return [link.other(host) for link in self._links if host in (link.left, link.right)]

    def subnet(self, a: str, b: str) -> str:
        """The subnet of the link between ``a`` and ``b``, e.g. ``10.231.0.0/24``."""
        return self._link(a, b).subnet()

    # -- processes --------------------------------------------------------------------------------------------

    def run(self, host: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``host``'s namespace; it is killed on ``__exit__`` if still running then.

        ``ip netns exec`` execs ``argv`` in place, so the returned Popen's pid is the program's own pid.
        """
        proc: subprocess.Popen[Any] = subprocess.Popen(self._exec_argv(host, argv), **popen_kwargs)
        self._procs.append(proc)
        return proc

    def check_output(self, host: str, argv: Sequence[str], *, timeout: float = 10.0, **run_kwargs: Any) -> str:
        """Run ``argv`` inside ``host`` to completion and return its stdout (text).

        Raises ``subprocess.CalledProcessError`` (with stderr) when it fails and ``subprocess.TimeoutExpired``
        when it outlives ``timeout``, after killing it: a hung probe must fail the test, not hang it.
        """
        done = subprocess.run(
            self._exec_argv(host, argv), capture_output=True, text=True, timeout=timeout, check=False, **run_kwargs
        )
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, list(argv), done.stdout, done.stderr)
        out: str = done.stdout
        return out

    # -- link failures ----------------------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        """Set both ends of the a-b link down: traffic over it fails at once (no route) until :meth:`restore`."""
        link = self._link(a, b)
        for host in (link.left, link.right):
            _ip("-n", self.namespace(host), "link", "set", link.ifname(host), "down")

    def restore(self, a: str, b: str) -> None:
        """Set both ends of the a-b link up again and put back the static routes the kernel dropped with it.

        Taking an interface down deletes every route through it, so without re-adding them a host beyond the
        link would stay unreachable even after the link is back.
        """
        link = self._link(a, b)
        for host in (link.left, link.right):
            _ip("-n", self.namespace(host), "link", "set", link.ifname(host), "up")
        self._wait_up([link])
        for host in (link.left, link.right):
            for subnet, via, dev in self._routes[host]:
                if dev == link.ifname(host):
                    _ip("-n", self.namespace(host), "route", "replace", subnet, "via", via, "dev", dev)

    # -- context manager ---------------------------------------------------------------------------------------

    def __enter__(self) -> Topology:
        try:
            self._build()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        problems = self._teardown()
        if problems:
            message = "Topology cleanup left problems: " + "; ".join(problems)
            if exc is not None:
                exc.add_note(message)  # keep the test's own failure as the error, but say what leaked
            else:
                raise RuntimeError(message)

    # -- internals --------------------------------------------------------------------------------------------

    def _check_host(self, host: str) -> None:
        if host not in self.hosts:
            raise ValueError(f"unknown host {host!r}; hosts are {list(self.hosts)}")

    def _exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        ip = _ip_binary()
        if ip is None:
            raise RuntimeError("the ip command (iproute2) is not installed")
        if isinstance(argv, str):
            raise TypeError("argv must be a sequence of arguments, not a string")
        return [ip, "netns", "exec", self.namespace(host), *argv]

    def _link(self, a: str, b: str) -> _Link:
        self._check_host(a)
        self._check_host(b)
        for link in self._links:
            if {link.left, link.right} == {a, b}:
                return link
        raise ValueError(f"no link between {a} and {b}")

    def _neighbours(self) -> Mapping[str, list[tuple[str, _Link]]]:
        adj: dict[str, list[tuple[str, _Link]]] = {h: [] for h in self.hosts}
        for link in self._links:
            adj[link.left].append((link.right, link))
            adj[link.right].append((link.left, link))
        return adj

    def _first_hops(self, source: str) -> dict[str, _Link]:
        """For every host reachable from ``source``: the link out of ``source`` on a shortest path to it (BFS)."""
        adj = self._neighbours()
        first: dict[str, _Link] = {}
        queue: deque[str] = deque()
        for neighbour, link in adj[source]:
            if neighbour not in first:
                first[neighbour] = link
                queue.append(neighbour)
        while queue:
            host = queue.popleft()
            for neighbour, _ in adj[host]:
                if neighbour != source and neighbour not in first:
                    first[neighbour] = first[host]
                    queue.append(neighbour)
        return first

    def _link_towards(self, host: str, towards: str | None) -> _Link:
        self._check_host(host)
        own = [link for link in self._links if host in (link.left, link.right)]
        if towards is None:
            if len(own) != 1:
                others = [link.other(host) for link in own]
                raise ValueError(f"host {host} has {len(own)} links (to {others}): say which with towards=")
            return own[0]
        self._check_host(towards)
        first = self._first_hops(host)
        if towards not in first:
            raise ValueError(f"host {towards} is not reachable from {host}")
        return first[towards]

    def _plan_routes(self) -> dict[str, list[tuple[str, str, str]]]:
        """Per host: (subnet, gateway, interface) for each link subnet it is not on, via a shortest path."""
        routes: dict[str, list[tuple[str, str, str]]] = {}
        for host in self.hosts:
            first = self._first_hops(host)
            dist = self._distances(host)
            routes[host] = []
            for link in self._links:
                if host in (link.left, link.right):
                    continue  # connected: the kernel adds the route with the address
                ends = [e for e in (link.left, link.right) if e in dist]
                if not ends:
                    continue  # another island of the graph
                nearer = min(ends, key=lambda e: dist[e])
                out = first[nearer]
                gateway = out.other(host)
                routes[host].append((link.subnet(), out.address(gateway), out.ifname(host)))
        return routes

    def _distances(self, source: str) -> dict[str, int]:
        adj = self._neighbours()
        dist = {source: 0}
        queue = deque([source])
        while queue:
            host = queue.popleft()
            for neighbour, _ in adj[host]:
                if neighbour not in dist:
                    dist[neighbour] = dist[host] + 1
                    queue.append(neighbour)
        return dist

    def _set_forwarding(self, host: str, on: bool) -> None:
        # /proc/sys/net is per network namespace: the write must happen inside it. sh is everywhere; sysctl
        # (procps) is not.
        self.check_output(host, ["sh", "-c", f"echo {int(on)} > /proc/sys/net/ipv4/ip_forward"], timeout=IP_TIMEOUT)

    def _build(self) -> None:
        for host in self.hosts:
            ns = self.namespace(host)
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            self._set_forwarding(host, host in self._forwarding)
        for link in self._links:
            left_ns, right_ns = self.namespace(link.left), self.namespace(link.right)
            # Created inside the left namespace with its peer put straight into the right one: the pair never
            # exists in the machine's own namespace, so it can neither clash with nor disturb its interfaces.
            _ip(
                "-n", left_ns, "link", "add", link.ifname(link.left), "type", "veth",
                "peer", "name", link.ifname(link.right), "netns", right_ns,
            )  # fmt: skip
            self._veths.append(link)
            for host, ns in ((link.left, left_ns), (link.right, right_ns)):
                _ip("-n", ns, "addr", "add", f"{link.address(host)}/24", "dev", link.ifname(host))
                _ip("-n", ns, "link", "set", link.ifname(host), "up")
        self._wait_up(self._links)
        for host in self.hosts:
            for subnet, via, dev in self._routes[host]:
                _ip("-n", self.namespace(host), "route", "replace", subnet, "via", via, "dev", dev)

    def _wait_up(self, links: Sequence[_Link], timeout: float = 5.0) -> None:
        """Poll until both ends of each link are operationally up (carrier on), or fail after ``timeout``.

        ``ip link set up`` returns before the veth reports carrier; a test that connects in that moment would see
        its first packets dropped and a spurious timeout.
        """
        pending = [(host, link.ifname(host)) for link in links for host in (link.left, link.right)]
        deadline = time.monotonic() + timeout
        while pending:
            pending = [
                (host, dev) for host, dev in pending
                if "state UP" not in _ip("-n", self.namespace(host), "-o", "link", "show", "dev", dev).stdout
            ]  # fmt: skip
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"links not up after {timeout}s: {pending}")
            time.sleep(0.01)  # a poll interval inside the deadline

    def _stop_processes(self) -> list[str]:
        """SIGTERM every process we started, SIGKILL those still running at the deadline; close their pipes."""
        problems: list[str] = []
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self._stop_timeout
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout=self._stop_timeout)
                except subprocess.TimeoutExpired:
                    problems.append(f"pid {proc.pid} survived SIGKILL")
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self._procs.clear()
        return problems

    def _teardown(self) -> list[str]:
        """Undo everything made so far, continuing past failures; return what could not be undone."""
        problems = self._stop_processes()
        deadline = time.monotonic() + self._stop_timeout
        for ns in self._made:
            try:
                _kill_namespace_processes(ns, deadline)
            except (OSError, subprocess.SubprocessError) as e:
                problems.append(f"processes in {ns}: {e}")
        for link in self._veths:
            # Deleting one end deletes the pair. The namespace deletion below would too, but only once nothing
            # holds the namespace any more; doing it explicitly leaves nothing to chance.
            where = f"veth {link.ifname(link.left)} in {self.namespace(link.left)}"
            problems += _try_ip(where, "-n", self.namespace(link.left), "link", "del", link.ifname(link.left))
        self._veths.clear()
        for ns in self._made:
            problems += _try_ip(f"namespace {ns}", "netns", "del", ns)
        self._made.clear()
        return problems


def _try_ip(what: str, *args: str) -> list[str]:
    """Run ``ip ARGS`` for cleanup: never raise (the next step must still run), report a failure as text."""
    try:
        done = _ip(*args, check=False)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return [f"{what}: {e}"]
    return [] if done.returncode == 0 else [f"{what}: {done.stderr.strip()}"]
