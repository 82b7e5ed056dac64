"""The ``store`` command: work on a stopped node's store (talks to no node). ``store migrate`` copies a node's state
from one store into another, empty one, e.g. from the embedded SQLite store to PostgreSQL as a deployment grows."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..core.records import Snapshot, WriteBatch
from ..errors import StoreError
from ..store.base import Store
from .arguments import add_command
from .common import EXIT_STATUS_LOCAL, CommandError
from .render import echo


#: messages per transaction of a migration: a page read from the source and written to the target at a time, so
#: that a store bigger than memory moves (at 128 B a message, ~10 MiB a batch)
BATCH = 50_000
#: seconds between progress lines while messages are copied
PROGRESS_EVERY = 2.0


def _open(kind: str, data_dir: Path, what: str, window: int | None = None) -> tuple[Store, Snapshot]:
    """Open a store for the migration; one that pages is read a window of each queue at a time (``window``)."""
    from ..store import open_store
    from ..store.base import StoreInUse

    store = open_store(kind, data_dir)
    try:
        return store, store.open_paged(window) if window is not None and store.pages else store.open()
    except StoreInUse as exc:
        store.close()
        raise CommandError(f"the {what} store is in use: {exc.message}; stop that node first (a store is moved"
                           " while no node runs on it)") from exc
    except StoreError as exc:
        raise CommandError(f"cannot open the {what} store: {exc.message}") from exc


def _messages(snapshot: Snapshot) -> int:
    """Every message a (paged) snapshot holds or counts."""
    return len(snapshot.messages) + sum(run[0] for run in snapshot.stored.values())


def run_store_migrate(args: argparse.Namespace) -> None:
    if args.to_data_dir is None:
        if args.target == "sqlite":
            raise CommandError("--to sqlite needs --to-data-dir DIR: where the new SQLite store goes")
        args.to_data_dir = Path("unused")  # a store that is not sqlite has no data directory
    if args.source == "sqlite" and not (args.data_dir / "aiobroker.sqlite3").is_file():
        raise CommandError(f"no SQLite store in {args.data_dir} (no aiobroker.sqlite3 there); give the node's --data-dir")
    if args.batch < 1:
        raise CommandError(f"--batch must be at least 1 (messages a transaction), not {args.batch}")
    started = time.perf_counter()
    source, snapshot = _open(args.source, args.data_dir, "source", args.batch)
    try:
        if not source.durable:
            raise CommandError(f"--from {args.source}: that store keeps nothing, so there is nothing to move")
        if not (snapshot.meta or snapshot.objects or snapshot.messages):
            raise CommandError(f"{source.location} holds no node's state: nothing to move")
        total = _messages(snapshot)
        echo(
            f"read {source.location}: {len(snapshot.objects)} object(s), {len(snapshot.endpoints)} conversation"
            f" endpoint(s), {total} message(s) in {time.perf_counter() - started:.1f}s"
        )
        target, existing = _open(args.target, args.to_data_dir, "target", 1)
        try:
            if not target.durable:
                raise CommandError(f"--to {args.target}: that store keeps nothing; choose a durable one")
            if existing.meta or existing.objects or existing.endpoints or existing.messages or existing.stored:
                raise CommandError(
                    f"{target.location} already holds a node's state ({len(existing.objects)} object(s),"
                    f" {_messages(existing)} message(s)); migrate into an empty store (a new database or schema,"
                    " or a new --to-data-dir)"
                )
            _copy(source, snapshot, target, total, args.batch)
        finally:
            target.close()
        check, copied = _open(args.target, args.to_data_dir, "target", args.batch)
        check.close()
        if (len(copied.objects), len(copied.endpoints), _messages(copied), copied.meta) != (
            len(snapshot.objects), len(snapshot.endpoints), total, snapshot.meta
        ):
            raise CommandError(f"{target.location} does not read back what was written; do not use it")
        echo(
            f"moved the node's state to {target.location} and read it back; {source.location} is left as it was."
            f" Start the node with --store {args.target}"
        )
    finally:
        source.close()


def _copy(source: Store, snapshot: Snapshot, target: Store, total: int, batch: int) -> None:
    """Write the snapshot to ``target``, then each queue's messages the source left in itself, a page a transaction,
    and the meta table last: a copy cut short has no broker instance, so no node starts on it by mistake."""
    writing = time.perf_counter()
    last_said = writing
    done = len(snapshot.messages)
    echo(f"writing them to {target.location}, {batch:,} message(s) a transaction ...")
    _write(target, WriteBatch(
        objects={(kind, name): value for kind, name, value in snapshot.objects},
        endpoints=dict(snapshot.endpoints),
        messages={row[0]: row for row in snapshot.messages},
    ))
    for location, (_count, _size, after, upto) in snapshot.stored.items():
        while rows := _read(source, location, after, upto, batch):
            _write(target, WriteBatch(messages={row[0]: row for row in rows}))
            done += len(rows)
            after = rows[-1][0]
            if time.perf_counter() - last_said >= PROGRESS_EVERY:
                last_said = time.perf_counter()
                echo(f"  {done:,} of {total:,} message(s) written ({done / (last_said - writing):,.0f}/s)")
    _write(target, WriteBatch(meta=dict(snapshot.meta)))
    echo(f"written in {time.perf_counter() - writing:.1f}s")


def _read(source: Store, location: str, after: int, upto: int, batch: int) -> list[Any]:
    try:
        return source.read_rows(location, after, upto, batch)
    except StoreError as exc:
        raise CommandError(f"reading {source.location} failed: {exc.message}; the target holds part of the copy:"
                           " empty it (or choose another) before trying again") from exc


def _write(target: Store, batch: WriteBatch) -> None:
    try:
        target.write(batch)
    except StoreError as exc:
        raise CommandError(
            f"writing to {target.location} failed: {exc.message}; the target may hold part of the copy (whole"
            " transactions of messages), without the node's broker instance, so no node starts on it as this one:"
            " empty it (or choose another) before trying again"
        ) from exc


def add_store(commands: Any) -> None:
    p = add_command(
        commands,
        "store",
        "work on a stopped node's store (talks to no node)",
        ["aiobroker store migrate --from sqlite --data-dir ./aiobroker-data --to postgresql://aiobroker@db/aiobroker"],
        exit_status=EXIT_STATUS_LOCAL,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", title="actions")
    actions.required = True
    k = add_command(
        actions,
        "migrate",
        "copy a stopped node's state (objects, conversations, messages, its broker instance) into another, empty"
        " store",
        [
            "aiobroker store migrate --from sqlite --data-dir ./aiobroker-data --to postgresql://aiobroker@db/aiobroker",
            "aiobroker store migrate --from postgresql://aiobroker@db/aiobroker --to sqlite --to-data-dir ./moved",
        ],
        exit_status=EXIT_STATUS_LOCAL,
        details="Stop the node first: both stores are locked while they are copied, so a running node refuses it."
        "\nThe messages are copied --batch at a time (one transaction each, with progress), so a store bigger than"
        "\nmemory moves; the node's broker instance is written last, so a copy cut short is never taken for the"
        "\nnode (empty the target and run again). The source is not changed; the node keeps its broker instance,"
        "\nso its peers and routes still find it.",
    )
    k.add_argument("--from", dest="source", required=True, metavar="STORE",
                   help="the store to copy from: sqlite (in --data-dir) or a postgresql:// URL")
    k.add_argument("--to", dest="target", required=True, metavar="STORE",
                   help="the empty store to copy into: a postgresql:// URL, or sqlite (in --to-data-dir)")
    k.add_argument("--data-dir", type=Path, default=Path("aiobroker-data"), metavar="DIR",
                   help="the source's data directory when it is sqlite (default ./aiobroker-data)")
    k.add_argument("--to-data-dir", type=Path, default=None, metavar="DIR",
                   help="the target's data directory when it is sqlite (required then; must be new or empty)")
    k.add_argument("--batch", type=int, default=BATCH, metavar="N",
                   help=f"messages a transaction, read from the source and written to the target at once (default"
                        f" {BATCH:,})")
    k.set_defaults(run=run_store_migrate)
