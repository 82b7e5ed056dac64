"""A real PostgreSQL for the store's tests: a throw-away cluster (``initdb``) on 127.0.0.1 and a free port.

Why a real one: the PostgreSQL store's promises (one transaction per batch, the advisory lock that fences a
second node, a connection cut by the server, a standby promoted) are promises about what the server does, and
only the server can keep or break them.

Debian's ``postgresql`` package provides the binaries under ``/usr/lib/postgresql/<version>/bin`` (not on PATH);
``scripts/test`` installs it when run as root, without the system cluster Debian would otherwise create and start
(``create_main_cluster = false``). PostgreSQL refuses to run as root, so as root the cluster belongs to the
``postgres`` account the package creates (or ``nobody``) and the server runs as that user; its files live in a
temporary directory of their own. The server runs in the foreground as a child of the test process and is stopped
by its pid (SIGINT: PostgreSQL's fast shutdown).

Settings: ``fsync=off`` (the tests kill nodes, never the database's machine, so a lost fsync cannot matter and
a test run does not wait for a disk), trust authentication on loopback (user ``aiobroker``), WAL level
``replica`` with room for a streaming replica (:meth:`PostgresServer.start_replica`).

Without the binaries, :func:`require_postgres` skips, saying so loudly: the suite prints the skip reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_process import free_port, stop_by_pid

__all__ = ["PostgresServer", "pg_bindir", "require_postgres"]

USER = "aiobroker"
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 30.0

_WHY_MISSING = (
    "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin): the PostgreSQL store's tests are"
    " SKIPPED; run scripts/test as root on Debian to install it (apt-get install postgresql)"
)


def pg_bindir() -> Path | None:
    """The newest PostgreSQL server's binaries, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def require_postgres() -> Path:
    bindir = pg_bindir()
    if bindir is None:
        pytest.skip(_WHY_MISSING)
    return bindir


def _server_account() -> pwd.struct_passwd | None:
    """The account the server runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' account exists to run PostgreSQL")


class PostgresServer:
    """One cluster: ``initdb`` into ``root/data``, ``postgres`` in the foreground on ``port``."""

    def __init__(self, root: Path, *, port: int | None = None, bindir: Path | None = None) -> None:
        self.bindir = bindir or require_postgres()
        self.root = root
        self.data = root / "data"
        self.socket_dir = root / "sock"
        self.log_path = root / "postgres.log"
        self.port = port or free_port()
        self.account = _server_account()
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------------------------------------- set-up

    def _own(self, *paths: Path) -> None:
        if self.account is not None:
            for path in paths:
                os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def _run_as_server(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(a) for a in args],
            user=self.account.pw_uid if self.account else None,
            group=self.account.pw_gid if self.account else None,
            capture_output=True,
            check=False,
            **kwargs,  # type: ignore[arg-type]
        )

    def init(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._own(self.root, self.socket_dir)
        done = self._run_as_server(
            self.bindir / "initdb", "-D", self.data, "-U", USER, "-A", "trust", "--no-sync", "-E", "UTF8"
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')}")
        with open(self.data / "pg_hba.conf", "a") as hba:
            hba.write(f"host replication {USER} 127.0.0.1/32 trust\n")
        return self

    def start(self, *settings: str) -> PostgresServer:
        """Start the server (``settings``: more ``name=value`` for ``-c``) and wait until it accepts."""
        args = [
            self.bindir / "postgres", "-D", self.data, "-p", str(self.port), "-k", self.socket_dir,
            "-c", f"listen_addresses={LOOPBACK}", "-c", "fsync=off", "-c", "full_page_writes=off",
            "-c", "wal_level=replica", "-c", "max_wal_senders=4", "-c", "max_connections=100",
            "-c", "shared_buffers=64MB",
        ]
        for setting in settings:
            args += ["-c", setting]
        log = open(self.log_path, "ab")
        self._own(self.log_path)
        self.proc = subprocess.Popen(
            [str(a) for a in args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            user=self.account.pw_uid if self.account else None,
            group=self.account.pw_gid if self.account else None,
        )
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: {self.log_tail()}")
            done = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", LOOPBACK, "-p", str(self.port), "-U", USER, "-t", "1"],
                capture_output=True, check=False,
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not accept connections within {timeout}s: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_by_pid(self.proc, signum=signal.SIGINT)
        self.proc = None

    def replica(self, root: Path, name: str) -> PostgresServer:
        """A streaming replica of this (running) server in ``root``, made by ``pg_basebackup -R``, naming itself
        ``name`` to the primary (for ``synchronous_standby_names``). Not started."""
        replica = PostgresServer(root, bindir=self.bindir)
        root.mkdir(parents=True, exist_ok=True)
        replica.socket_dir.mkdir(exist_ok=True)
        self._own(root, replica.socket_dir)
        done = self._run_as_server(
            self.bindir / "pg_basebackup", "-h", LOOPBACK, "-p", str(self.port), "-U", USER, "-D", replica.data,
            "-R", "-X", "stream", "--no-sync", "-d", f"application_name={name}",
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed: {done.stderr.decode(errors='replace')}")
        return replica

    def crash(self) -> None:
        """Stop at once, as a crash would (SIGQUIT: PostgreSQL's immediate shutdown; every connection drops)."""
        if self.proc is not None and self.proc.poll() is None:
            stop_by_pid(self.proc, signum=signal.SIGQUIT)
        self.proc = None

    # ------------------------------------------------------------------------------------------------ use

    def dsn(self, dbname: str = "postgres", **params: str) -> str:
        extra = "".join(f"&{k}={v}" for k, v in params.items())
        return f"postgresql://{USER}@{LOOPBACK}:{self.port}/{dbname}?connect_timeout=5{extra}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        done = subprocess.run(
            [str(psql_binary(self.bindir)), "-X", "-q", "-At", "-h", LOOPBACK, "-p", str(self.port),
             "-U", USER, "-d", dbname, "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode().strip()

    def new_database(self) -> str:
        """A fresh, empty database; its DSN."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return self.dsn(name)


def psql_binary(bindir: Path) -> Path:
    own = bindir / "psql"
    return own if own.exists() else Path(shutil.which("psql") or "psql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the whole test session (each test takes a fresh database: ``pg_dsn``)."""
    bindir = require_postgres()
    root = Path(tempfile.mkdtemp(prefix="aiobroker-pg-"))
    os.chmod(root, 0o755)
    server = PostgresServer(root / "primary", bindir=bindir).init().start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(postgres: PostgresServer) -> str:
    """A DSN for a fresh, empty database on the session's cluster."""
    return postgres.new_database()
