"""The ``status`` command: the node, its store, its queues' depth, conversations by state, delayed messages."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..client import Client
from ..errors import Standby
from ..durations import duration, until
from .arguments import add_command
from .render import STATE_NAMES, echo, size, table, to_json


def standby_status(exc: Standby, args: argparse.Namespace) -> None:
    """A standby answers no request, but its refusal says what ``status`` would: its role, its owner, since when."""
    node = {"role": "standby", "owner": exc.owner, "since": exc.since, "message": exc.message}
    if args.json:
        echo(to_json({"node": node}))
        return
    since = f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(exc.since))}" if exc.since else ""
    echo(f"role       standby {since} ({duration(time.time() - exc.since)})" if exc.since else "role       standby")
    echo(f"owner      {exc.owner or 'unknown (the store does not say where its owner listens)'}")
    echo(f"           {exc.message}")


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
    if node.get("role"):
        echo(f"role       {node['role']}")
    uptime = node.get("uptime_seconds")
    echo(f"uptime     {duration(float(uptime)) if isinstance(uptime, int | float) else '?'}")
    echo(
        f"clients    {node.get('connections', '?')} connection(s), {node.get('requests_served', '?')} request(s)"
        f" served, {node.get('waiting_receives', 0)} receive(s) waiting"
    )
    admission = node.get("admission")
    if isinstance(admission, dict):  # who holds the connection slots ([limits]), and who was turned away
        echo(
            f"slots      {admission.get('established', '?')} established ({admission.get('privileged', '?')} admin or"
            f" peer), {admission.get('handshaking', '?')} in their handshake, from {admission.get('addresses', '?')}"
            f" address(es); {admission.get('refused', '?')} refused, {admission.get('idle_closed', '?')} closed"
            " idle since start"
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
    memory = st.get("memory")
    if memory:
        echo(f"memory     {_memory_words(memory)}")

    echo()
    queues = st.get("queues", [])
    if queues:
        echo("queues")
        rows = [
            [
                "  " + str(q.get("name")),
                q.get("waiting"),
                q.get("in_store_only", 0),
                q.get("locked"),
                q.get("retained"),
                q.get("status"),
                q.get("disabled_reason") or ("-" if q.get("status") == "on" else "status off"),
            ]
            for q in queues
        ]
        echo(table(["  NAME", "WAITING", "IN STORE ONLY", "LOCKED", "RETAINED", "STATUS", "DISABLED BECAUSE"], rows))
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
    echo()
    _dynamic(st.get("dynamic_routing", {}))
    echo()
    _security(st.get("security", {}))


def _memory_words(memory: dict[str, Any]) -> str:
    """What the node holds for messages against its budget, and whether it refuses sends (docs/semantics.md)."""
    held = f"{size(memory.get('held_bytes'))} held for messages"
    if memory.get("max_memory") is None:
        return held + " (no budget)"
    words = f"{held} of a budget of {size(memory.get('max_memory'))} (max_memory)"
    if memory.get("over"):
        words += (
            f"; OVER: sends are refused and peers' messages wait at the peers until it is below"
            f" {size(memory.get('accepts_again_below'))}"
        )
    refused = memory.get("refused_sends") or 0
    words += f"; {refused} send(s) refused for it" if refused else ""
    stored = memory.get("in_store_only") or 0
    if stored:
        words += f"; {stored} waiting message(s) ({size(memory.get('in_store_only_bytes'))}) in the store only"
    return words


def _security(sec: dict[str, Any]) -> None:
    """Dialog security and authorization in one line, and what was dropped or refused (tampering shows here)."""
    if not sec:
        return
    echo(
        f"security: authorization {'on' if sec.get('authorization') else 'off'}, node identity"
        f" {sec.get('node_identity') or '(none)'}, {sec.get('identities', 0)} identities, {sec.get('bindings', 0)}"
        f" binding(s), {sec.get('secured_conversations', 0)} secured conversation(s)"
    )
    dropped, first, refused = (sec.get(k, 0) for k in ("messages_dropped", "first_messages_dropped", "refused"))
    if dropped or first or refused:
        echo(
            f"  failed dialog security: {dropped} message(s) and {first} first message(s) dropped unacknowledged"
            f" (altered, or sealed for another key), {refused} conversation(s) refused; the node's log says which"
        )


def _dynamic(dyn: dict[str, Any]) -> None:
    """Dynamic routing: who is asked, and per service what waits, the request in flight, the last answer."""
    if not dyn.get("enabled"):
        echo("dynamic routing: off (no resolver configured, no Broker Configuration Notice service)")
        return
    echo(
        f"dynamic routing: asks {_asks(dyn)}; {dyn.get('requests_made', 0)} request(s) made,"
        f" {dyn.get('in_flight', 0)} in flight, {dyn.get('delayed_messages', 0)} message(s) waiting"
    )
    services = dyn.get("services", {})
    if services:
        rows = []
        for name, s in services.items():
            flight = s.get("in_flight")
            last = s.get("last")
            binding = (s.get("binding_request") or {}).get("in_flight")
            if binding and not flight:
                flight = {**binding, "via": "binding: " + binding["via"]}
            rows.append(
                [
                    "  " + name,
                    s.get("delayed_conversations"),
                    s.get("delayed_messages"),
                    f"{flight['via']} ({duration(flight['age_seconds'])} ago)" if flight else "-",
                    (("ok: " if last["ok"] else "failed: ") + str(last["text"])) if last else "-",
                    until(s["next_retry_in"]) if s.get("next_retry_in") is not None else "-",
                ]
            )
        echo(table(["  SERVICE", "CONVERSATIONS", "MESSAGES", "REQUEST IN FLIGHT", "LAST ANSWER", "NEXT TRY"], rows))


async def cmd_diagnose(client: Client, args: argparse.Namespace) -> None:
    d = await client.diagnose(args.service, args.broker_instance)
    if args.json:
        echo(to_json(d))
        return
    where = "on this node" if d.get("local") else "not on this node"
    echo(f"service {d.get('service')!r} ({where}); the routing steps:")
    for line in d.get("steps", []):
        echo(f"  {line}")
    if d.get("delayed_messages"):
        echo(
            f"{d['delayed_messages']} message(s) in {d['delayed_conversations']} conversation(s) wait:"
            f" {d.get('delayed_reason')}"
        )
    request = d.get("request") or {}
    if d.get("dynamic_routing"):
        flight, last = request.get("in_flight"), request.get("last")
        echo(f"dynamic routing asks {_asks(d)}")
        echo(f"  request in flight: {flight['via'] + ' for ' + duration(flight['age_seconds']) if flight else 'none'}")
        echo(f"  last answer: {(('ok: ' if last['ok'] else 'failed: ') + last['text']) if last else 'none yet'}")
        if request.get("next_retry_in") is not None:
            echo(f"  asks again {until(request['next_retry_in'])}")


def _asks(d: dict[str, Any]) -> str:
    """Whom dynamic routing asks, as the node said (a node without ``asks`` gave only the resolver's name)."""
    return str(d.get("asks") or f"the {d.get('resolver')}")


def add_diagnose(commands: Any, client: argparse.ArgumentParser, as_json: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "diagnose",
        "explain, step by step, where messages to a service go or why they wait",
        ["aiobroker diagnose //shop/Orders", "aiobroker diagnose //shop/Orders --broker-instance 1f2e... --json"],
        parents=[client, as_json],
    )
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("--broker-instance", metavar="I", help="as for a conversation that names this broker instance")
    p.set_defaults(run=cmd_diagnose)


def _when(at: Any) -> str:
    if not isinstance(at, int | float):
        return "-"
    return until(float(at) - time.time())


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
        ["aiobroker status", "aiobroker status --json", "aiobroker status --address tcp://a:4022,b:4022"],
        parents=[client, as_json],
    )
    p.set_defaults(run=cmd_status, on_standby=standby_status)
