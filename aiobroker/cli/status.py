"""The ``status`` command: the node, its store, its queues' depth, conversations by state, delayed messages."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..client import Client
from .arguments import add_command
from .render import STATE_NAMES, duration, echo, size, table, to_json


async def cmd_status(client: Client, args: argparse.Namespace) -> None:
    st = await client.status()
    if args.json:
        echo(to_json(st))
        return
    node = st.get("node", {})
    store = st.get("store", {})
    echo(
        f"node       {node.get('listen', client.url)}  (aiobroker {node.get('version', '?')}, pid {node.get('pid', '?')})"
    )
    uptime = node.get("uptime_seconds")
    echo(f"uptime     {duration(float(uptime)) if isinstance(uptime, int | float) else '?'}")
    echo(
        f"clients    {node.get('connections', '?')} connection(s), {node.get('requests_served', '?')} request(s)"
        f" served, {node.get('waiting_receives', 0)} receive(s) waiting"
    )
    store_line = f"store      {store.get('store', '?')}"
    if store.get("path"):
        store_line += f" at {store['path']}"
    details = []
    if store.get("durability"):
        details.append(f"durability {store['durability']}")
    if "size" in store:
        details.append(f"{size(store.get('size'))} + WAL {size(store.get('wal_size'))}")
    if not store.get("durable", True):
        details.append("nothing kept across restarts")
    if details:
        store_line += f" ({', '.join(details)})"
    echo(store_line)
    echo(f"instance   {st.get('broker_instance', '?')}")
    objects = st.get("objects", {})
    if objects:
        echo("objects    " + ", ".join(f"{n} {k.replace('_', ' ')}(s)" for k, n in objects.items()))
    echo(f"leases     {st.get('leases', 0)} receive lease(s) held")

    echo()
    queues = st.get("queues", [])
    if queues:
        echo("queues")
        rows = [
            [
                "  " + str(q.get("name")),
                q.get("waiting"),
                q.get("locked"),
                q.get("retained"),
                q.get("status"),
                q.get("disabled_reason") or ("-" if q.get("status") == "on" else "status off"),
            ]
            for q in queues
        ]
        echo(table(["  NAME", "WAITING", "LOCKED", "RETAINED", "STATUS", "DISABLED BECAUSE"], rows))
    else:
        echo("queues: none")

    echo()
    by_state = st.get("conversations_by_state", {})
    echo(f"conversations: {st.get('conversations', sum(by_state.values()))} endpoint(s)")
    codes = list(STATE_NAMES) + [c for c in by_state if c not in STATE_NAMES]
    echo(
        table(
            ["  STATE", "", "COUNT"], [["  " + c, STATE_NAMES.get(c, "?"), by_state.get(c, 0)] for c in codes]
        )
    )

    echo()
    delayed = st.get("delayed", {})
    if delayed:
        echo("delayed messages (waiting for a route)")
        rows = [
            ["  " + service, d.get("conversations"), d.get("messages"), d.get("reason") or "-"]
            for service, d in delayed.items()
        ]
        echo(table(["  TO SERVICE", "CONVERSATIONS", "MESSAGES", "REASON"], rows))
    else:
        echo("delayed messages: none")

    echo()
    _transmission(st.get("transmission", {}), st.get("peers", {}))


def _when(at: Any) -> str:
    if not isinstance(at, int | float):
        return "-"
    left = float(at) - time.time()
    return f"in {duration(left)}" if left > 0 else "now"


def _transmission(tx: dict[str, Any], peers: dict[str, Any]) -> None:
    """The transmission queue: per link and per conversation, each with its state in words."""
    echo(f"transmission queue: {tx.get('messages', 0)} message(s) in {tx.get('conversations', 0)} conversation(s)")
    links = tx.get("links", [])
    if links:
        rows = [
            [
                "  " + str(link.get("address")),
                link.get("state"),
                link.get("conversations"),
                link.get("unacknowledged"),
                _when(link.get("next_attempt")) if not str(link.get("state", "")).startswith("connected") else "-",
            ]
            for link in links
        ]
        echo(table(["  LINK", "STATE", "CONVERSATIONS", "UNACKNOWLEDGED", "NEXT ATTEMPT"], rows))
    entries = tx.get("entries", [])
    if entries:
        rows = [
            [
                "  " + str(e.get("handle")),
                e.get("far_service"),
                e.get("messages"),
                e.get("state") or "-",
                e.get("last_error") or "-",
                _when(e.get("next_attempt")),
            ]
            for e in entries
        ]
        echo(table(["  CONVERSATION", "TO SERVICE", "MESSAGES", "STATE", "LAST ERROR", "NEXT ATTEMPT"], rows))
    if peers.get("forwarded") or peers.get("forward_backlog"):
        echo(
            f"forwarding: {peers.get('forwarded', 0)} message(s) passed on, {peers.get('forward_backlog', 0)} waiting"
            f" for their link, {peers.get('dropped_forwards', 0)} dropped"
        )


def add_status(commands: Any, client: argparse.ArgumentParser, as_json: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "status",
        "show the node, its queues' depth, conversations by state, delayed messages and the transmission queue",
        ["aiobroker status", "aiobroker status --json"],
        parents=[client, as_json],
    )
    p.set_defaults(run=cmd_status)
