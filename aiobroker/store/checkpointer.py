"""Copying the SQLite write-ahead log back into the database, away from the commit path.

SQLite's automatic checkpoint runs inside whichever commit crosses its threshold: that commit then copies every
page in the log and fsyncs the database, a stall of milliseconds to tens of milliseconds that every message
waiting on that commit shares (the p99 latency). So the writer's connection does not checkpoint; this thread does,
on a connection of its own, with PASSIVE checkpoints, which never block the writer. The writer nudges it when the
log passes ``threshold`` bytes; if the log still passes ``hard_limit`` (checkpoints not keeping up), the writer
checkpoints inline, so the log stays bounded.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("aiobroker.store")


class Checkpointer:
    def __init__(self, db_path: Path, *, interval: float = 1.0) -> None:
        self.db_path = db_path
        self.interval = interval
        self.checkpoints = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="aiobroker-checkpointer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def nudge(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stopping:
                self._wake.wait(self.interval)
                self._wake.clear()
                if self._stopping:
                    break
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                    self.last_error = None
                except sqlite3.Error as exc:  # not fatal: the log grows until the next try succeeds
                    if self.last_error != str(exc):
                        log.warning("checkpointing %s failed (%s); will try again", self.db_path, exc)
                    self.last_error = str(exc)
        finally:
            conn.close()
