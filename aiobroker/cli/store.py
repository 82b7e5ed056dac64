"""The ``store`` command: work on a stopped node's store (talks to no node). ``store migrate`` copies a node's state
from one store into another, empty one, e.g. from the embedded SQLite store to PostgreSQL as a deployment grows."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..core.records import WriteBatch
from ..errors import StoreError
from .arguments import add_command
from .common import EXIT_STATUS_LOCAL, CommandError
from .render import echo


def _open(kind: str, data_dir: Path, what: str) -> tuple[Any, Any]:
    from ..store import open_store
    from ..store.base import StoreInUse

    store = open_store(kind, data_dir)
    try:
        return store, store.open()
    except StoreInUse as exc:
        store.close()
        raise CommandError(f"the {what} store is in use: {exc.message}; stop that node first (a store is moved"
                           " while no node runs on it)") from exc
    except StoreError as exc:
        raise CommandError(f"cannot open the {what} store: {exc.message}") from exc


def run_store_migrate(args: argparse.Namespace) -> None:
    if args.to_data_dir is None:
        if args.target == "sqlite":
            raise CommandError("--to sqlite needs --to-data-dir DIR: where the new SQLite store goes")
        args.to_data_dir = Path("unused")  # a store that is not sqlite has no data directory
    if args.source == "sqlite" and not (args.data_dir / "aiobroker.sqlite3").is_file():
        raise CommandError(f"no SQLite store in {args.data_dir} (no aiobroker.sqlite3 there); give the node's --data-dir")
    started = time.perf_counter()
    source, snapshot = _open(args.source, args.data_dir, "source")
    try:
        if not source.durable:
            raise CommandError(f"--from {args.source}: that store keeps nothing, so there is nothing to move")
        if not (snapshot.meta or snapshot.objects or snapshot.messages):
            raise CommandError(f"{source.location} holds no node's state: nothing to move")
        echo(
            f"read {source.location}: {len(snapshot.objects)} object(s), {len(snapshot.endpoints)} conversation"
            f" endpoint(s), {len(snapshot.messages)} message(s) in {time.perf_counter() - started:.1f}s"
        )
        target, existing = _open(args.target, args.to_data_dir, "target")
        try:
            if not target.durable:
                raise CommandError(f"--to {args.target}: that store keeps nothing; choose a durable one")
            if existing.meta or existing.objects or existing.endpoints or existing.messages:
                raise CommandError(
                    f"{target.location} already holds a node's state ({len(existing.objects)} object(s),"
                    f" {len(existing.messages)} message(s)); migrate into an empty store (a new database or schema,"
                    " or a new --to-data-dir)"
                )
            batch = WriteBatch(
                meta=dict(snapshot.meta),
                objects={(kind, name): value for kind, name, value in snapshot.objects},
                endpoints=dict(snapshot.endpoints),
                messages={row[0]: row for row in snapshot.messages},
            )
            echo(f"writing them to {target.location} in one transaction ...")
            writing = time.perf_counter()
            try:
                target.write(batch)
            except StoreError as exc:
                raise CommandError(
                    f"writing to {target.location} failed, nothing of it was kept: {exc.message}"
                ) from exc
            echo(f"written in {time.perf_counter() - writing:.1f}s")
        finally:
            target.close()
        check, copied = _open(args.target, args.to_data_dir, "target")
        check.close()
        if (len(copied.objects), len(copied.endpoints), len(copied.messages), copied.meta) != (
            len(snapshot.objects), len(snapshot.endpoints), len(snapshot.messages), snapshot.meta
        ):
            raise CommandError(f"{target.location} does not read back what was written; do not use it")
        echo(
            f"moved the node's state to {target.location} and read it back; {source.location} is left as it was."
            f" Start the node with --store {args.target}"
        )
    finally:
        source.close()


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
        "\nThe copy is one transaction: it is all there or, if it fails, nothing is. The source is not changed;"
        "\nthe node keeps its broker instance, so its peers and routes still find it.",
    )
    k.add_argument("--from", dest="source", required=True, metavar="STORE",
                   help="the store to copy from: sqlite (in --data-dir) or a postgresql:// URL")
    k.add_argument("--to", dest="target", required=True, metavar="STORE",
                   help="the empty store to copy into: a postgresql:// URL, or sqlite (in --to-data-dir)")
    k.add_argument("--data-dir", type=Path, default=Path("aiobroker-data"), metavar="DIR",
                   help="the source's data directory when it is sqlite (default ./aiobroker-data)")
    k.add_argument("--to-data-dir", type=Path, default=None, metavar="DIR",
                   help="the target's data directory when it is sqlite (required then; must be new or empty)")
    k.set_defaults(run=run_store_migrate)
