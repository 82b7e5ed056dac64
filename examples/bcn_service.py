"""A Broker Configuration Notice (BCN) service: the application side of dynamic routing, as the seeds describe it.

When a node has no route for a service and this service exists (on the node, or reached by a route), the node
begins a conversation with ``SQL/ServiceBroker/BrokerConfiguration`` and sends a ``MissingRoute`` message naming
the service. This program receives it, looks the service up in a directory file, creates the route through the
admin API and ends the conversation; if it knows no address, it ends the conversation with an error, and the node
asks again later. One request arrives per service however many conversations wait. A MissingRemoteServiceBinding (asked at the same
time as the MissingRoute, for conversations to another node with no binding) is ended with an error: this directory
knows no certificates, so conversations that do not require encryption go on unsecured.

The directory is a JSON file, read again on every request so that edits count at once::

    {"//shop/Orders": "tcp://10.0.0.2:4022", "//shop/Billing": "tcp://10.0.0.3:4022"}

Run it next to a node::

    python examples/bcn_service.py --address tcp://127.0.0.1:4022 --directory services.json

It runs until SIGINT or SIGTERM. When the node goes away (restarted, or the network between them broke), it
connects again with back-off (0.5 s doubling to 30 s) and goes on answering: a request it had received but not
answered was never committed, so the node gives it back.

It uses only the public client API.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from xml.etree import ElementTree

import anyio

import aiobroker
from aiobroker.core.catalog import BCN_CONTRACT, BCN_CONTRACT_HTTPS, BCN_SERVICE

log = logging.getLogger("bcn_service")
QUEUE = "bcn-requests"


def service_named_in(body: bytes) -> str | None:
    """The SERVICE_NAME of a MissingRoute (either spelling of its namespace), or None."""
    try:
        root = ElementTree.fromstring(body)  # the node checked it is well-formed XML without a DTD
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "SERVICE_NAME":
            return (element.text or "").strip() or None
    return None


def look_up(directory: Path, service: str) -> str | None:
    try:
        table = json.loads(directory.read_text())
    except (OSError, ValueError) as exc:
        log.warning("cannot read the directory %s: %s", directory, exc)
        return None
    address = table.get(service) if isinstance(table, dict) else None
    return address if isinstance(address, str) else None


async def set_up(client: aiobroker.Client) -> None:
    """The BCN service and its queue, accepting the contract in both of the seeds' spellings."""
    if QUEUE not in {q["name"] for q in await client.list("queue")}:
        await client.create_queue(QUEUE)
    if BCN_SERVICE not in {s["name"] for s in await client.list("service")}:
        await client.create_service(BCN_SERVICE, QUEUE, [BCN_CONTRACT, BCN_CONTRACT_HTTPS])


async def answer(client: aiobroker.Client, message: aiobroker.Message, dialog: aiobroker.Dialog, directory: Path) -> None:
    if message.is_end_dialog or message.is_error:
        await dialog.end()
        return
    if message.message_type.endswith("/MissingRemoteServiceBinding"):
        # the node asks for the binding together with the route; this directory knows addresses only: the
        # request ends without a binding, and conversations that do not require encryption go on unsecured
        await dialog.end(error=(2, "this BCN service knows no remote service bindings (addresses only)"))
        return
    if not message.message_type.endswith("/MissingRoute"):
        await dialog.end(error=(2, f"this BCN service answers MissingRoute only, not {message.message_type}"))
        return
    service = service_named_in(message.body)
    if service is None:
        await dialog.end(error=(3, "the MissingRoute names no service"))
        return
    address = look_up(directory, service)
    if address is None:
        log.info("no address known for %r; ending the request with an error", service)
        await dialog.end(error=(1, f"no address known for {service!r} in {directory}"))
        return
    name = f"bcn:{service}"
    try:
        await client.create_route(name, address, service_name=service)
    except aiobroker.DuplicateObject:  # an old answer: replace it (not a list of every route per request)
        await client.drop("route", name)
        await client.create_route(name, address, service_name=service)
    log.info("route for %r -> %s created; ending the request", service, address)
    await dialog.end()


#: after the node goes away: the first reconnection attempt, doubling up to the cap while it stays away
RECONNECT_FIRST = 0.5
RECONNECT_CAP = 30.0


async def serve_once(address: str, directory: Path, budget: list[int]) -> None:
    """One connection's worth of answering; ``budget`` holds the requests left to handle (None: no limit)."""
    async with aiobroker.connect(address) as client:
        await set_up(client)
        log.info("serving %s on %s with directory %s", BCN_SERVICE, address, directory)
        while budget[0] != 0:
            # Leaving the block commits the batch. Should the node go away first, the batch was never committed:
            # the node gives its messages back, and they are answered after the reconnection.
            async with await client.receive(QUEUE, max_messages=100, timeout=None) as batch:
                for message in batch:
                    await answer(client, message, batch.dialog(message), directory)
                    budget[0] -= 1


async def serve(address: str, directory: Path, max_requests: int | None) -> None:
    """Answer requests until ``max_requests`` were handled (None: for good). When the node goes away (a restart,
    a network outage) the program connects again, with back-off, rather than leave dynamic routing unanswered."""
    budget = [-1 if max_requests is None else max_requests]
    delay = RECONNECT_FIRST
    while budget[0] != 0:
        try:
            await serve_once(address, directory, budget)
            return
        except (aiobroker.ConnectionLost, aiobroker.Timeout) as exc:
            log.warning("lost the node at %s (%s); connecting again in %.1fs", address, exc, delay)
        await anyio.sleep(delay)  # back-off between attempts (this is the program's pace, not a wait for an event)
        delay = min(RECONNECT_CAP, delay * 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A Broker Configuration Notice service answering MissingRoute requests")
    p.add_argument("--address", default="tcp://127.0.0.1:4022", help="the node (default tcp://127.0.0.1:4022)")
    p.add_argument("--directory", type=Path, required=True, help="JSON file: service name -> tcp://host:port")
    p.add_argument("--max-requests", type=int, help="stop after this many messages (default: run until a signal)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    async def run() -> None:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            await serve(args.address, args.directory, args.max_requests)
            tg.cancel_scope.cancel()

    failures: list[str] = []
    try:
        anyio.run(run)
    except* aiobroker.BrokerError as group:  # one line each, as every command here says what went wrong
        failures.extend(getattr(exc, "message", str(exc)) for exc in group.exceptions)
    for failure in failures:
        print(f"bcn_service: error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
