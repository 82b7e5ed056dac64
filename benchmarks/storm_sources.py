"""The resolution storm's other sources of answers, each held until the run opens a gate (bench_resolution_storm.py):

- ``dnsgate``: dnsmasq serves the SRV and address records; a UDP relay in front of it holds every query until the
  gate file exists, then forwards it and relays the reply. Logged per query: ``request`` and ``served`` for SRV
  questions (a route question each), ``address_request`` / ``address_served`` for the A and AAAA look-ups that
  follow.
- ``bcngate``: the Broker Configuration Notice service of ``examples/bcn_service.py`` (its ``answer``), started when
  the gate opens, answering with ``--answerers`` receives at once. Logged: ``request`` (with ``kind``: route for
  MissingRoute, binding for MissingRemoteServiceBinding) and ``served`` (the request's conversation ended).

Both log timed JSON lines as the http registry does (``t_ns``: CLOCK_MONOTONIC, ``wall``: time.time()), with a
``released`` line when the gate opens.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from common import LOOPBACK, REPO

DNS_ZONE = "storm.test"
#: the relay's queries to dnsmasq at once, how long it waits for each reply, and how many times it tries
UPSTREAM_AT_ONCE = 64
UPSTREAM_WAIT = 1.0
UPSTREAM_TRIES = 5
#: the relay's receive buffer, bytes
RECEIVE_BUFFER = 16 * 1024 * 1024
DNS_TARGET = f"b.{DNS_ZONE}"


def srv_name(service: str) -> str:
    """The SRV name the dns_srv resolver asks for a service (its default template, its label rule)."""
    sys.path.insert(0, str(REPO))
    from resolvers.dns_srv import service_label

    return f"_aiobroker._tcp.{service_label(service)}.{DNS_ZONE}"


def dnsmasq_conf(path: Path, services: list[str], port_b: int, ttl: int) -> None:
    """An authoritative zone with one SRV record per service, all pointing at node B's host and port."""
    lines = [f"srv-host={srv_name(s)},{DNS_TARGET},{port_b},0,0" for s in services]
    lines.append(f"host-record={DNS_TARGET},{LOOPBACK}")
    path.write_text("\n".join(lines) + "\n")


def dnsmasq_argv(binary: str, port: int, conf: Path, ttl: int) -> list[str]:
    import os

    user = ["--user=root"] if os.geteuid() == 0 else []
    return [binary, "--keep-in-foreground", f"--conf-file={conf}", "--no-resolv", "--no-hosts", "--no-poll",
            "--pid-file=", "--log-facility=-", f"--listen-address={LOOPBACK}", "--bind-interfaces", f"--port={port}",
            f"--auth-server=ns.{DNS_ZONE},{LOOPBACK}", f"--auth-zone={DNS_ZONE}", f"--auth-ttl={ttl}",
            "--dns-forward-max=10000", *user]


class EventLog:
    def __init__(self, path: Path) -> None:
        self.file = path.open("a", buffering=1)

    def __call__(self, event: str, **fields: Any) -> None:
        self.file.write(json.dumps({"event": event, "t_ns": time.monotonic_ns(), "wall": time.time(), **fields})
                        + "\n")

    def close(self) -> None:
        self.file.close()


async def watch_gate(gate: Path, max_hold: float, log: EventLog) -> None:
    import anyio

    for _ in range(int(max_hold * 1000) + 10):
        if gate.exists():
            log("released")
            return
        await anyio.sleep(0.001)
    raise SystemExit(f"the gate {gate} never opened")


def dnsgate_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="storm dnsgate", description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--port", type=int, required=True, help="UDP port the resolver asks")
    p.add_argument("--upstream", type=int, required=True, help="dnsmasq's UDP port")
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--gate", type=Path, required=True)
    p.add_argument("--max-hold", type=float, default=900.0)
    args = p.parse_args(argv)

    import asyncio

    import dns.message
    import dns.rdatatype
    import uvloop

    log = EventLog(args.log)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Event()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)

        class Upstream(asyncio.DatagramProtocol):
            def __init__(self) -> None:
                self.reply: asyncio.Future[bytes] = loop.create_future()

            def datagram_received(self, data: bytes, addr: Any) -> None:
                if not self.reply.done():
                    self.reply.set_result(data)

        async def relay(data: bytes, client: Any, front: asyncio.DatagramTransport) -> None:
            try:
                question = dns.message.from_wire(data).question[0]
                name, kind = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
            except Exception:  # noqa: BLE001 - not a query we can read: relay it all the same
                name, kind = "?", "?"
            prefix = "" if kind == "SRV" else "address_"
            log(prefix + "request", name=name, type=kind)
            await gate.wait()
            # a bounded number at once, each tried again if dnsmasq's reply does not come: a thousand datagrams
            # sent to it in one burst overflow its socket's buffer, and a query lost here would hold a question
            # for the whole of the resolver's (long, for the gate) time-out
            async with upstream_slots:
                for _ in range(UPSTREAM_TRIES):
                    transport, upstream = await loop.create_datagram_endpoint(
                        Upstream, remote_addr=(LOOPBACK, args.upstream))
                    try:
                        transport.sendto(data)
                        reply = await asyncio.wait_for(upstream.reply, UPSTREAM_WAIT)
                        break
                    except TimeoutError:
                        continue
                    finally:
                        transport.close()
                else:
                    log(prefix + "lost", name=name, type=kind)
                    return
            front.sendto(reply, client)
            log(prefix + "served", name=name, type=kind)

        tasks: set[asyncio.Task[None]] = set()
        upstream_slots = asyncio.Semaphore(UPSTREAM_AT_ONCE)

        class Front(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                task = loop.create_task(relay(data, addr, self.transport))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        front, _ = await loop.create_datagram_endpoint(Front, local_addr=(LOOPBACK, args.port))
        # the node's questions come in bursts (1,000 SRV questions, then 2,000 address look-ups at once): the
        # default receive buffer holds ~200 such datagrams and the kernel drops the rest, which would then wait for
        # the resolver's (long, for the gate) time-out
        sock = front.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", socket.SO_RCVBUF), RECEIVE_BUFFER)
        except OSError:  # not root: as much as net.core.rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)

        async def open_gate() -> None:
            for _ in range(int(args.max_hold * 1000) + 10):
                if args.gate.exists():
                    gate.set()
                    log("released")
                    return
                await asyncio.sleep(0.001)

        opener = loop.create_task(open_gate())
        await stop.wait()
        opener.cancel()
        front.close()

    try:
        uvloop.run(main())
    finally:
        log.close()
    return 0


def bcngate_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="storm bcngate", description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--address", required=True, help="node A")
    p.add_argument("--directory", type=Path, required=True, help="bcn_service.py's directory file")
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--gate", type=Path, required=True)
    p.add_argument("--answerers", type=int, default=16, help="receives in flight at once")
    p.add_argument("--max-hold", type=float, default=900.0)
    args = p.parse_args(argv)

    import anyio

    sys.path.insert(0, str(REPO / "examples"))
    import bcn_service

    import aiobroker

    log = EventLog(args.log)

    async def answerer(client: aiobroker.Client) -> None:
        while True:
            async with await client.receive(bcn_service.QUEUE, max_messages=100, timeout=None) as batch:
                for message in batch:
                    if message.is_end_dialog or message.is_error:
                        await bcn_service.answer(client, message, batch.dialog(message), args.directory)
                        continue
                    kind = "route" if message.message_type.endswith("/MissingRoute") else "binding"
                    service = bcn_service.service_named_in(message.body)
                    log("request", kind=kind, name=service)
                    await bcn_service.answer(client, message, batch.dialog(message), args.directory)
                    log("served", kind=kind, name=service)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

                async def stop() -> None:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

                tg.start_soon(stop)
                await watch_gate(args.gate, args.max_hold, log)
                async with aiobroker.connect(args.address) as client:
                    async with anyio.create_task_group() as answering:
                        for _ in range(args.answerers):
                            answering.start_soon(answerer, client)

    try:
        anyio.run(main, backend_options={"use_uvloop": True})
    finally:
        log.close()
    return 0
