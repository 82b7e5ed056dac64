"""Tests of tests/netns.py, the namespace topology helper the federation tests will stand on.

If the helper lied (routes missing, a link that stays up when cut, namespaces that leak), federation tests would
pass or fail for the wrong reasons, so its promises are checked here with real TCP between namespaces. Every probe
is a separate ``python -c`` process with its own short timeout; nothing waits on a bare sleep.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from netns import Topology, cleanup_stale, netns_available

HOSTS = ["a", "b", "c"]
LINKS = [("a", "b"), ("b", "c")]  # a line: a and c meet only through b

# Listens on argv[1] (port 0: the kernel picks), prints the port, then echoes one message per connection until the
# Topology's exit SIGTERMs it by pid.
ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    with c:
        c.settimeout(2.0)
        try:
            c.sendall(c.recv(64))
        except OSError:
            pass
"""

# Connects to argv[1]:argv[2] within argv[3] seconds, sends a token and expects it back; exit 0 only then.
ECHO_CLIENT = """
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with socket.create_connection((host, port), timeout=timeout) as s:
    s.sendall(b"ping-aiobroker")
    assert s.recv(64) == b"ping-aiobroker", "bad echo"
print("ok")
"""


@pytest.fixture
def require_netns() -> None:
    """Skip, saying why, where namespaces cannot be made (not root, no iproute2, a locked-down container)."""
    ok, reason = netns_available()
    if not ok:
        pytest.skip(reason)


@pytest.fixture
def line(require_netns: None) -> Iterator[Topology]:
    """a - b - c, b not forwarding."""
    with Topology(HOSTS, LINKS) as topo:
        yield topo


@pytest.fixture
def routed_line(require_netns: None) -> Iterator[Topology]:
    """a - b - c with b forwarding, so a reaches c: proves the routes exist, which the negative test relies on."""
    with Topology(HOSTS, LINKS, ip_forward=["b"]) as topo:
        yield topo


def start_echo(topo: Topology, host: str, address: str, timeout: float = 5.0) -> int:
    """Start an echo server in ``host`` on ``address`` and return its port once it listens."""
    proc = topo.run(host, [sys.executable, "-c", ECHO_SERVER, address], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"echo server in {host} did not listen within {timeout}s")
            if sel.select(remaining):
                chunk = os.read(proc.stdout.fileno(), 64)
                if not chunk:
                    raise AssertionError(f"echo server in {host} exited with {proc.wait(timeout=timeout)}")
                data += chunk
    return int(data.split(b"\n", 1)[0])


def reaches(topo: Topology, src: str, address: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP client in ``src`` gets an echo from ``address:port`` within ``timeout`` seconds."""
    argv = [sys.executable, "-c", ECHO_CLIENT, address, str(port), str(timeout)]
    try:
        return topo.check_output(src, argv, timeout=timeout + 10.0).strip() == "ok"
    except subprocess.CalledProcessError:
        return False


def eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll ``condition`` until true; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)  # a poll interval inside the deadline, not a stand-in for the condition


def our_namespaces(names: list[str]) -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=10).stdout
    present = {line.split()[0] for line in listing.splitlines() if line.strip()}
    return present & set(names)


# -- no namespaces needed: the address plan and argument checks ------------------------------------------------


def test_address_plan() -> None:
    topo = Topology(HOSTS, LINKS)  # not entered: nothing is created
    assert topo.address("a") == "10.231.0.1"
    assert topo.address("b", towards="a") == "10.231.0.2"
    assert topo.address("b", towards="c") == "10.231.1.1"
    assert topo.address("c") == "10.231.1.2"
    assert topo.address("c", towards="a") == "10.231.1.2"  # two hops: the address a dials through b
    assert topo.subnet("c", "b") == "10.231.1.0/24"
    assert topo.interface("b", towards="c") == "to-c"
    assert [ns.rsplit("-", 1)[1] for ns in topo.namespaces] == ["a", "b", "c"]
    assert all(ns.startswith(f"aib-{os.getpid()}-") for ns in topo.namespaces)
    assert Topology(HOSTS, LINKS).namespaces != topo.namespaces  # unique per instance
    with pytest.raises(ValueError, match="towards"):
        topo.address("b")


@pytest.mark.parametrize(
    ("hosts", "links", "error"),
    [
        (["a", "a"], [], "repeat"),
        (["a", "b"], [("a", "x")], "unknown host"),
        (["a", "b"], [("a", "a")], "itself"),
        (["a", "b"], [("a", "b"), ("b", "a")], "twice"),
        (["a-b"], [], "host name"),
    ],
)
def test_bad_topologies_are_refused(hosts: list[str], links: list[tuple[str, str]], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Topology(hosts, links)


def test_skips_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOBROKER_NO_NETNS", "1")
    assert netns_available() == (False, "network namespace tests disabled by AIOBROKER_NO_NETNS")


# -- real namespaces --------------------------------------------------------------------------------------------


def test_neighbours_reach_each_other(line: Topology) -> None:
    port = start_echo(line, "b", line.address("b", towards="a"))
    assert reaches(line, "a", line.address("b", towards="a"), port)
    assert line.check_output("b", ["cat", "/proc/sys/net/ipv4/ip_forward"]).strip() == "0"


def test_no_path_through_a_host_that_does_not_forward(line: Topology) -> None:
    port = start_echo(line, "c", "0.0.0.0")
    assert reaches(line, "b", line.address("c"), port), "c's server must be up for the negative check to mean much"
    started = time.monotonic()
    assert not reaches(line, "a", line.address("c"), port, timeout=0.5)
    assert not reaches(line, "c", line.address("a"), port, timeout=0.5)
    assert time.monotonic() - started < 5.0


def test_routes_lead_through_a_forwarding_host(routed_line: Topology) -> None:
    port = start_echo(routed_line, "c", "0.0.0.0")
    assert reaches(routed_line, "a", routed_line.address("c", towards="a"), port)


def test_cut_and_restore(routed_line: Topology) -> None:
    """Cutting a-b stops a from reaching b and (through b) c; restoring brings back both, routes included."""
    topo = routed_line
    b_port = start_echo(topo, "b", "0.0.0.0")
    c_port = start_echo(topo, "c", "0.0.0.0")
    b_addr, c_addr = topo.address("b", towards="a"), topo.address("c")
    assert reaches(topo, "a", b_addr, b_port) and reaches(topo, "a", c_addr, c_port)

    topo.cut("a", "b")
    eventually(lambda: not reaches(topo, "a", b_addr, b_port, timeout=0.3), "a to lose b after the cut")
    assert not reaches(topo, "a", c_addr, c_port, timeout=0.3)
    assert reaches(topo, "b", c_addr, c_port), "cutting a-b must leave b-c alone"

    topo.restore("a", "b")
    eventually(lambda: reaches(topo, "a", b_addr, b_port), "a to reach b again after restore")
    eventually(lambda: reaches(topo, "a", c_addr, c_port), "a to reach c through b again after restore")


def test_exit_removes_everything_even_after_a_failure(require_netns: None) -> None:
    with pytest.raises(RuntimeError, match="the test failed"):
        with Topology(HOSTS, LINKS) as topo:
            names = topo.namespaces
            assert our_namespaces(names) == set(names)
            sleeper = topo.run("b", [sys.executable, "-c", "import time; time.sleep(600)"])
            raise RuntimeError("the test failed")
    assert sleeper.returncode is not None, "the process started in b must be gone"
    assert our_namespaces(names) == set()


def test_cleanup_stale_removes_only_dead_runs(require_netns: None) -> None:
    # A pid that just ended stands for a crashed run; our own pid for a run still going. A prefix of its own keeps
    # this test away from any other run's namespaces.
    prefix = "aibtest-"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=10)
    stale, alive = f"{prefix}{dead.pid}-0-x", f"{prefix}{os.getpid()}-0-x"
    for ns in (stale, alive):
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        assert cleanup_stale(prefix) == [stale]
        assert our_namespaces([stale, alive]) == {alive}
    finally:
        for ns in (stale, alive):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=10)
