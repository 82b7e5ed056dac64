"""The SQLite store: a node's durable copy in one database file, one transaction per batch.

Why SQLite: one file, transactions that survive a crash mid-write, and a write-ahead log that turns a commit into
one sequential append, which is what group commit needs (many messages, one ``COMMIT``). The node keeps its state
in memory, except a queue's messages past its window (``core/paging.py``), so the store is write-mostly: it is read
at start (a queue's window only: ``sqlite_pages.py``), for pages of a backlog, and otherwise only appended to and
deleted from. That shapes the schema (no secondary indexes to maintain; rows are found by primary key, or by
walking it) and the write path (a few statements per batch: multi-row INSERTs, deletes by ranges of ids, no per-row
Python work beyond flattening the rows' tuples; ``sqlite_schema.py``).

Files in the data directory:

``aiobroker.sqlite3`` (plus SQLite's ``-wal`` and ``-shm``)
    the database.
``aiobroker.lock``
    holds an exclusive ``flock`` while a node has the store open, and that node's pid and, once it listens, the
    address it announced (:meth:`SqliteStore.announce`: a standby sends clients there). SQLite's own locking only
    serializes transactions; it would let two nodes interleave batches in one file, each believing it owns the
    state. The kernel drops the lock when the process dies, however it dies, so a crashed node never leaves a
    stale lock behind.

Foreign errors (``OSError``, ``sqlite3.Error``, a blob that does not decode) are translated here, at the
boundary, into :class:`~aiobroker.errors.StoreError` with a message that names the path and what to do next.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import threading
from contextlib import suppress
from pathlib import Path
from typing import Any, Final

from ..core.records import MessageRow, Snapshot, WriteBatch
from ..errors import ProtocolError, StoreError
from .base import StoreInUse
from ..wire.codec import packb, unpackb
from .base import Store
from .checkpointer import Checkpointer
from .sqlite_pages import read_paged, rows_of
from .sqlite_pages import read_bodies
from .sqlite_pages import read_rows as read_page
from .sqlite_schema import MIGRATIONS, PUT_META, SCHEMA, SCHEMA_KEY, SELECT_MESSAGES, TABLES, statements, transaction

log = logging.getLogger("aiobroker.store")

#: The schema this code writes. A store with a larger version was written by a newer aiobroker and is refused;
#: one with a smaller version is brought up to this one when opened (``MIGRATIONS``). Version 2 added the
#: messages' ``trace`` column (W3C trace context).
SCHEMA_VERSION: Final = 2

DB_FILE: Final = "aiobroker.sqlite3"
LOCK_FILE: Final = "aiobroker.lock"

#: ``durability`` → SQLite's ``synchronous`` in WAL mode. NORMAL fsyncs only at checkpoints: a commit survives
#: the process dying (the WAL is in the OS page cache) but the last ones may be lost with the machine. FULL
#: fsyncs the WAL at every commit: it survives power loss, at the price of one fsync per batch.
DURABILITIES: Final = {"normal": "NORMAL", "full": "FULL"}

#: Page cache, in KiB. The working set of the write path is the right edge of the messages b-tree, the pages of
#: recently deleted rows and the endpoints being written. A page not in it comes from the operating system's file
#: cache, cheaply: measured, 100,000 endpoint records and message rows written in batches of 1,000, then each
#: record rewritten in random order and its row deleted, cost the same CPU with a cache of 2, 8 or 32 MiB (6.6-7.7
#: and 11.4-13.7 us a record), while a 32 MiB cache, once full, is 32 MiB of the node's memory for good (335 bytes
#: of each of 100,000 DELAYED messages in a resolution storm). 8 MiB: the least that measured as fast everywhere.
_CACHE_KIB: Final = 8 * 1024
#: The page reader's cache: a page of rows is read once, in id order, so a small cache does
_READER_CACHE_KIB: Final = 4 * 1024

#: Nudge the checkpointer (``checkpointer.py``) when the WAL passes this many bytes, and checkpoint inline when it
#: passes the hard limit. Large rather than SQLite's 1000 pages: the write path rewrites the same few pages over
#: and over (the right edge of the messages tree, the freelist), and a checkpoint copies each page once however
#: often it was rewritten: fewer, larger checkpoints do less work.
#: the largest batch (rows) written on the event loop with durability ``normal`` (see ``Store.inline_rows``); a
#: larger one goes to the writer thread, where the loop keeps reading requests while SQLite works
INLINE_ROWS: Final = 64
_CHECKPOINT_BYTES: Final = 16 * 1024 * 1024
_CHECKPOINT_HARD_LIMIT: Final = 256 * 1024 * 1024

#: Debian and others build SQLite with SECURE_DELETE on, which zeroes every deleted row, and writes pages just to
#: do so. FAST zeroes only on pages that are written anyway: no extra I/O, and delivered bodies still do not
#: linger in pages that were rewritten. (OFF measured no faster than FAST.)
_SECURE_DELETE: Final = "FAST"

#: After a checkpoint, truncate the WAL to this size, so that one burst does not leave a huge file behind.
_WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024

#: How long SQLite waits for a lock held by someone else. The flock keeps other nodes out, but an operator's
#: ``sqlite3`` shell poking at the file should delay a batch, not fail it.
_BUSY_TIMEOUT_MS: Final = 5000

# SQLite primary result codes (the low byte of an extended code) that get their own message.
_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


class SqliteStore(Store):
    """The durable store: ``data_dir/aiobroker.sqlite3``, guarded by ``data_dir/aiobroker.lock``.

    ``open`` and ``write`` may be called from different threads (the node opens on its main thread and writes
    from its writer thread, or from the event loop for a small batch), never at the same time; hence
    ``check_same_thread=False`` and no lock of our own.
    """

    name = "sqlite"
    durable = True
    pages = True

    def __init__(self, data_dir: Path, durability: str = "normal") -> None:
        check_durability(durability)
        self.data_dir = Path(data_dir).absolute()  # messages name the directory as the operator can find it
        self.durability = durability
        # With ``normal`` a commit appends to the log without an fsync: a batch of a few messages costs ~0.1 ms,
        # less than handing it to a thread and back (two wake-ups, each a chance to wait for a CPU: measured, the
        # node's time waiting to run fell from ~0.9 s to ~0.1 s in a 6 s run at 5,000 msg/s). ``full`` fsyncs
        # every commit, milliseconds the event loop must not stand still for.
        self.inline_rows = INLINE_ROWS if durability == "normal" else 0
        self.inline_reads = True  # a body by its rowid from the local file: ~0.6 us (node/pages.py)
        self.db_path = self.data_dir / DB_FILE
        self.lock_path = self.data_dir / LOCK_FILE
        self._conn: sqlite3.Connection | None = None
        #: the connection pages are read on (``read_rows``, in a thread of its own while the writer writes: the
        #: write-ahead log lets it read the last committed state without waiting), made on the first page
        self._reader: sqlite3.Connection | None = None
        self._reading = threading.Lock()
        #: a paged open reads the transmission queue's bodies (``open_paged``)
        self._tx_bodies = True
        self._lock_fd: int | None = None
        self.wal_path = self.db_path.with_name(DB_FILE + "-wal")
        self._checkpointer: Checkpointer | None = None
        #: the WAL file's size when the checkpointer was last nudged (see write)
        self._wal_nudged = 0
        #: what open() made that was not there before (files, then the directory), for abandon() to remove
        self._created: list[Path] = []

    @property
    def location(self) -> str:
        return str(self.data_dir)

    # --- the Store interface ------------------------------------------------------------------------------

    def open(self) -> Snapshot:
        return self._open(None)

    def open_paged(self, window: int, tx_bodies: bool = True) -> Snapshot:
        self._tx_bodies = tx_bodies
        return self._open(window)

    def read_rows(self, location: str, after_id: int, upto_id: int, limit: int) -> list[MessageRow]:
        with self._reading:
            try:
                return read_page(self._reader_connection(), location, after_id, upto_id, limit)
            except sqlite3.Error as exc:
                raise self._sqlite_error("reading messages from", exc) from exc

    def read_bodies(self, ids: list[int]) -> dict[int, bytes]:
        with self._reading:
            try:
                return read_bodies(self._reader_connection(), ids)
            except sqlite3.Error as exc:
                raise self._sqlite_error("reading messages from", exc) from exc

    def _reader_connection(self) -> sqlite3.Connection:
        """The connection reads run on beside the writer's (made on first use; under ``_reading``)."""
        if self._reader is None:
            if self._conn is None:
                raise StoreError(f"the store in {self.data_dir} is not open; call open() first")
            self._reader = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            self._reader.execute(f"PRAGMA cache_size = {-_READER_CACHE_KIB}")
            self._reader.execute("PRAGMA query_only = ON")
        return self._reader

    def _open(self, window: int | None) -> Snapshot:
        if self._lock_fd is not None:
            raise StoreError(f"the store in {self.data_dir} is already open")
        self._created = [p for p in self._own_paths() if not p.exists()]
        self._make_data_dir()
        self._lock_data_dir()
        try:
            return self._open_database(window)
        except BaseException:
            # Release the lock: a node that failed to start must not keep the directory. The error that made
            # the open fail is the one to report, not one from closing a half-open connection.
            with suppress(StoreError):
                self.close()
            raise

    def write(self, batch: WriteBatch) -> None:
        conn = self._conn
        if conn is None:
            raise StoreError(f"the store in {self.data_dir} is not open; call open() first")
        if not batch:
            return
        # Encode before BEGIN: a value that cannot be encoded fails the batch before the file is touched.
        prepared = statements(batch)
        try:
            with transaction(conn):
                for sql, params in prepared:
                    conn.executemany(sql, params)
            wal = _file_size(self.wal_path) or 0
            # After a complete checkpoint SQLite writes the log again from its start, in the same file, which keeps
            # its size: a file past the threshold says the log once grew that far, not that it is that full now. So
            # nudge when the file grows past its size at the last nudge (checkpoints falling behind), not after every
            # batch once it has been that large: that ran a checkpoint, fsyncs included, after every batch
            # (hundreds a second at 5,000 msg/s), and the writes beside them stalled now and then for tens to
            # hundreds of milliseconds. The checkpointer's own interval (1 s) keeps a log that no longer grows short.
            if wal < self._wal_nudged:
                self._wal_nudged = wal  # truncated (journal_size_limit) or gone
            if wal > _CHECKPOINT_BYTES and wal > self._wal_nudged and self._checkpointer is not None:
                self._wal_nudged = wal
                self._checkpointer.nudge()
                if wal > _CHECKPOINT_HARD_LIMIT:  # the checkpointer is not keeping up: bound the log ourselves
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise self._sqlite_error("writing a batch to", exc) from exc

    def close(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()
        with self._reading:  # a page being read finishes first
            reader, self._reader = self._reader, None
        if reader is not None:
            with suppress(sqlite3.Error):
                reader.close()
        conn, self._conn = self._conn, None
        fd, self._lock_fd = self._lock_fd, None
        try:
            if conn is not None:
                conn.close()  # checkpoints the WAL into the database file
        except sqlite3.Error as exc:
            raise self._sqlite_error("closing", exc) from exc
        finally:
            if fd is not None:
                os.close(fd)  # closing the only descriptor releases the flock

    def announce(self, url: str) -> None:
        """Write ``url`` into the lock file under the pid, for a standby on this directory to read
        (:class:`StoreInUse` ``owner``). One ``pwrite`` of both lines: a reader sees the old pid alone or both."""
        fd = self._lock_fd
        if fd is None:
            raise StoreError(f"the store in {self.data_dir} is not open; call open() first")
        try:
            os.pwrite(fd, f"{os.getpid()}\n{url}\n".encode(), 0)
        except OSError as exc:
            raise _os_error(f"cannot write lock file {self.lock_path}", self.data_dir, exc) from exc

    def abandon(self) -> None:
        self.close()
        created, self._created = self._created, []
        for path in created:
            try:
                if path == self.data_dir:
                    path.rmdir()  # only if empty: anything else in it was put there by someone else
                else:
                    path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not remove %s after a failed start: %s", path, exc)

    def _own_paths(self) -> list[Path]:
        """The files this store keeps, then its directory: removed in this order by abandon()."""
        return [
            self.db_path,
            self.wal_path,
            self.db_path.with_name(DB_FILE + "-shm"),
            self.lock_path,
            self.data_dir,
        ]

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            path=str(self.db_path),
            durability=self.durability,
            size=_file_size(self.db_path),
            wal_size=_file_size(self.db_path.with_name(DB_FILE + "-wal")),
        )
        return info

    def __repr__(self) -> str:
        state = "open" if self._conn is not None else "closed"
        return f"<SqliteStore {str(self.data_dir)!r} durability={self.durability} {state}>"

    # --- opening ------------------------------------------------------------------------------------------

    def _make_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(f"cannot create data directory {self.data_dir}", self.data_dir, exc) from exc

    def _lock_data_dir(self) -> None:
        """Take the directory for this process, or say which process has it."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _os_error(f"cannot create lock file {self.lock_path}", self.data_dir, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            pid, url = _read_holder(fd)
            os.close(fd)
            raise StoreInUse(
                f"data directory {self.data_dir} is in use by another aiobroker node (pid {pid}"
                f"{', listening on ' + url if url else ''}); stop it or choose another --data-dir",
                owner=url,
            ) from exc
        except OSError as exc:  # e.g. ENOLCK: a file system without locks
            os.close(fd)
            raise _os_error(f"cannot lock {self.lock_path}", self.data_dir, exc) from exc
        try:
            # Only after locking: the pid in the file is always that of the holder (or of a dead one).
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise _os_error(f"cannot write lock file {self.lock_path}", self.data_dir, exc) from exc
        self._lock_fd = fd

    def _open_database(self, window: int | None) -> Snapshot:
        try:
            self._conn = conn = sqlite3.connect(
                self.db_path,
                isolation_level=None,  # autocommit: we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,
            )
            self._configure(conn)
            self._prepare_schema(conn)
            snapshot = self._read_snapshot(conn, window)
            self._checkpointer = Checkpointer(self.db_path)
            self._checkpointer.start()
            return snapshot
        except sqlite3.Error as exc:
            raise self._sqlite_error("opening", exc) from exc

    def _configure(self, conn: sqlite3.Connection) -> None:
        # The first statement that reads the file: a file that is not a database fails here.
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise StoreError(
                f"cannot use a write-ahead log for {self.db_path} (journal mode stays {mode!r});"
                " put --data-dir on a local file system"
            )
        conn.execute(f"PRAGMA synchronous = {DURABILITIES[self.durability]}")
        conn.execute(f"PRAGMA secure_delete = {_SECURE_DELETE}")
        conn.execute(f"PRAGMA cache_size = {-_CACHE_KIB}")  # negative: KiB rather than pages
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it, off the commit path
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")

    def _prepare_schema(self, conn: sqlite3.Connection) -> None:
        """Create the tables in an empty file; in any other, check that it is an aiobroker store we can read."""
        with transaction(conn):
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                for sql in SCHEMA:
                    conn.execute(sql)
                conn.execute(PUT_META, (SCHEMA_KEY, packb(SCHEMA_VERSION)))
                return
            missing = [t for t in TABLES if t not in tables]
            if missing:
                raise self._not_ours(f"no {missing[0]} table")
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (SCHEMA_KEY,)).fetchone()
            if row is None:
                raise self._not_ours(f"no {SCHEMA_KEY} in its meta table")
            version = self._decode(row[0])
            if type(version) is not int or version < 1:
                raise self._corrupt(f"{SCHEMA_KEY} is {version!r}")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"data directory {self.data_dir} holds a store of schema version {version}, newer than this"
                    f" aiobroker supports ({SCHEMA_VERSION}); run a newer aiobroker or choose another --data-dir"
                )
            if version < SCHEMA_VERSION:
                # in the same transaction as the check: a store is migrated whole or not at all
                for step in range(version, SCHEMA_VERSION):
                    for sql in MIGRATIONS[step]:
                        conn.execute(sql)
                conn.execute(PUT_META, (SCHEMA_KEY, packb(SCHEMA_VERSION)))
                log.info("store %s: schema version %d brought up to %d", self.data_dir, version, SCHEMA_VERSION)

    def _read_snapshot(self, conn: sqlite3.Connection, window: int | None) -> Snapshot:
        decode = self._decode
        meta = {key: decode(value) for key, value in conn.execute("SELECT key, value FROM meta") if key != SCHEMA_KEY}
        objects = [
            (kind, name, decode(data))
            for kind, name, data in conn.execute("SELECT kind, name, data FROM objects ORDER BY kind, name")
        ]
        endpoints = [
            (handle, decode(data))
            for handle, data in conn.execute("SELECT handle, data FROM endpoints ORDER BY handle")
        ]
        if window is None:
            return Snapshot(meta, objects, endpoints, rows_of(conn.execute(SELECT_MESSAGES)))
        queues = [name for kind, name, _ in objects if kind == "queue"]
        messages, stored = read_paged(conn, window, queues, self._tx_bodies)
        return Snapshot(meta, objects, endpoints, messages, stored)

    def _decode(self, blob: Any) -> Any:
        if not isinstance(blob, bytes):
            raise self._corrupt(f"a value is {type(blob).__name__}, not a msgpack blob")
        try:
            # The blob's own length bounds every string and array in it; no frame limit applies at rest.
            return unpackb(blob, max_size=max(len(blob), 1))
        except ProtocolError as exc:
            raise self._corrupt(f"a value does not decode: {exc}") from exc

    # --- errors -------------------------------------------------------------------------------------------

    def _corrupt(self, what: str) -> StoreError:
        return StoreError(
            f"data directory {self.data_dir} holds a corrupt store ({what}): move it aside or restore a backup"
        )

    def _not_ours(self, what: str) -> StoreError:
        return StoreError(
            f"{self.db_path} is a SQLite database but not an aiobroker store ({what});"
            " move it aside or choose another --data-dir"
        )

    def _sqlite_error(self, doing: str, exc: sqlite3.Error) -> StoreError:
        """Say what went wrong in the operator's terms; ``doing`` reads like "opening" or "writing a batch to"."""
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        where = self.db_path
        if primary in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
            return self._corrupt(str(exc))
        if primary == _SQLITE_FULL:
            return StoreError(
                f"disk full while {doing} {where} ({exc}); free some space on the disk holding"
                f" {self.data_dir}, then retry"
            )
        if primary in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_CANTOPEN):
            return StoreError(
                f"cannot write {where} while {doing} it ({exc}); make {self.data_dir} and its files writable by"
                f" this user (uid {os.geteuid()}), or choose another --data-dir"
            )
        if primary == _SQLITE_IOERR:
            return StoreError(
                f"I/O error while {doing} {where} ({exc}); check the disk holding {self.data_dir}"
                " and the kernel log, then restart the node"
            )
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return StoreError(f"{where} is locked by another program ({exc}); close whatever else has the file open")
        return StoreError(f"SQLite failed while {doing} {where} ({type(exc).__name__}: {exc})")


# --- helpers ------------------------------------------------------------------------------------------------


def check_durability(durability: str) -> None:
    """Refuse a ``durability`` other than those in :data:`DURABILITIES` (a typo must not silently mean "normal")."""
    if durability not in DURABILITIES:
        allowed = ", ".join(repr(d) for d in DURABILITIES)
        raise ValueError(f"durability must be one of {allowed}, not {durability!r}")


def _os_error(what: str, data_dir: Path, exc: OSError) -> StoreError:
    """``what`` failed: add why, in the operator's terms, and what to do about it."""
    code = exc.errno
    if code in (errno.EACCES, errno.EPERM):
        why = (
            f"permission denied (running as uid {os.geteuid()}); make {data_dir} writable by this user"
            " or choose another --data-dir"
        )
    elif code == errno.EROFS:
        why = f"{data_dir} is on a read-only file system; choose another --data-dir"
    elif code in (errno.ENOSPC, errno.EDQUOT):
        why = f"the disk holding {data_dir} is full; free some space, then start the node again"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        why = f"{data_dir} or one of its parents is a regular file, not a directory; choose another --data-dir"
    else:
        why = f"{exc.strerror or exc}; fix that or choose another --data-dir"
    return StoreError(f"{what}: {why}")


def _read_holder(fd: int) -> tuple[str, str | None]:
    """The pid the lock holder wrote, or "unknown" (it may not have written it yet), and the address it announced
    (None: not yet, or an older aiobroker's file)."""
    try:
        lines = os.pread(fd, 1024, 0).decode("utf-8", "replace").splitlines()
    except OSError:
        return "unknown", None
    pid = lines[0].strip() if lines and lines[0].strip().isdigit() else "unknown"
    url = lines[1].strip() if len(lines) > 1 and "://" in lines[1] else None
    return pid, url


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
