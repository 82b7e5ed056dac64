"""A broker node in its own process, for tests that need a real one: started by command, stopped by its pid."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def stop_by_pid(proc: subprocess.Popen, timeout: float = 10.0, signum: int = signal.SIGTERM) -> int:  # type: ignore[type-arg]
    """Stop ``proc`` and return its exit code: ``signum`` (SIGTERM) to its pid if it still runs, SIGKILL to that pid
    if it has not exited ``timeout`` seconds later. Signals nothing but this one pid (never a name)."""
    if proc.poll() is None:
        os.kill(proc.pid, signum)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    return int(proc.returncode)


def wait_for(condition, timeout: float, what: str, interval: float = 0.02):  # type: ignore[no-untyped-def]
    """Poll ``condition()`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # a poll interval inside a deadline, not a stand-in for the condition


class NodeProcess:
    """``aiobroker serve`` on 127.0.0.1: its broker port free (or given), its HTTP monitoring listener off unless
    ``http`` names an address (``"127.0.0.1:0"``: a free port, read back from the start-up line by :meth:`http_url`),
    so that tests running many nodes at once never meet on the default HTTP port; ``""`` gives no ``--http`` flag
    (serve's own default, 127.0.0.1:4080)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        store: str = "sqlite",
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        http: str = "off",
    ):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.store = store
        self.extra = extra or []
        self.env = env  #: added to this process's environment
        self.http = http
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"node-{self.port}.log"

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> NodeProcess:
        """Launch it and wait until it accepts connections."""
        self.launch()

        def accepting() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode} at start:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(accepting, timeout, f"the node on port {self.port} to accept connections")
        return self

    def launch(self) -> NodeProcess:
        """Start the process and return at once."""
        cmd = [
            sys.executable, "-m", "aiobroker", "serve",
            "--listen", f"127.0.0.1:{self.port}",
            *(["--store", self.store] if self.store else []),  # "": the store the config file names
            "--data-dir", str(self.data_dir),
            *(["--http", self.http] if self.http else []),  # "": no flag, serve's default
            *self.extra,
        ]
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        return self

    def http_url(self, timeout: float = 20.0) -> str:
        """The HTTP monitoring listener's URL, as the node's start-up line prints it."""

        def printed() -> str | None:
            found = re.findall(r"monitoring on (https?://\S+?);", self.output())
            return found[-1] if found else None

        return str(wait_for(printed, timeout, "the node's start-up line naming its HTTP monitoring URL"))

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL by pid: the crash."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.log.close()

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """``signum`` (SIGTERM) by pid, then SIGKILL if it has not exited by the deadline. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None and not self.log.closed:
                self.log.close()
            return self.proc.returncode if self.proc else 0
        code = stop_by_pid(self.proc, timeout, signum)
        self.log.close()
        return code
