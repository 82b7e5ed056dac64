"""A TCP proxy put in front of a node, for tests of what crosses the wire (tests/test_dialog_security_hosts.py).

    recording_proxy.py --listen HOST:PORT --target HOST:PORT [--record PREFIX] [--events FILE]
                       [--tamper-message N]

Every connection accepted on ``--listen`` gets its own connection to ``--target``, and bytes are passed on both
ways as they come. ``up`` is what the connecting side (a peer node's link) sends, ``down`` what the target answers.

``--record PREFIX``
    Appends every byte seen to ``PREFIX-<connection>-<up|down>.bin`` (one file per connection and direction, so a
    body split across two reads is still contiguous in its file), flushed as it is written.
``--events FILE``
    Splits both directions into frames (4-byte big-endian length + msgpack, decoded with ``aiobroker.wire.codec``)
    and writes one JSON line per connection opened or closed and per ENVELOPES frame (each with ``t``, the time it
    was seen: ``time.monotonic()``, the same clock in every process of the machine): its messages as
    ``[conversation_id, seq, sealed]`` (sealed: ``"plain"``, ``"sealed"`` or ``"key-header"``) and its acks as
    ``[conversation_id, from_initiator, next_seq]``.
``--tamper-message N``
    The Nth message (sequence number N, counting from 0) gets one byte of its body flipped, once: the first message
    envelope with that number that travels ``up``, whichever the connection (a resend of it goes on untouched). Its
    frame is decoded, changed and encoded again with ``aiobroker.wire.codec``; every other frame goes on as the
    original bytes. Written to the events file as ``{"tampered": {...}}``.

It prints ``listening on HOST:PORT`` (flushed) once it accepts connections, and exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import IO, Any

from aiobroker.errors import ProtocolError
from aiobroker.wire.codec import HEADER, HEADER_SIZE, encode_frame, unpackb

ENVELOPES = 20
MESSAGE, ACK = 0, 1
CHUNK = 1 << 16


def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _sealed(value: Any) -> str:
    if isinstance(value, list):
        return "key-header"
    return "sealed" if value else "plain"


class Proxy:
    def __init__(self, args: argparse.Namespace) -> None:
        self.target = _split(args.target)
        self.record: str | None = args.record
        self.events: IO[str] | None = open(args.events, "a") if args.events else None  # noqa: SIM115 - closed in close()
        self.tamper_at: int | None = args.tamper_message
        self.messages_up = 0  # message envelopes seen travelling up, all connections
        self.tampered = False
        self.connections = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def event(self, obj: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.write(json.dumps({**obj, "t": time.monotonic()}) + "\n")
            self.events.flush()

    @property
    def parsing(self) -> bool:
        return self.events is not None or self.tamper_at is not None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        conn = self.connections
        self.connections += 1
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError as exc:
                self.event({"conn": conn, "error": f"cannot reach the target: {exc}"})
                writer.close()
                return
            self.event({"conn": conn, "open": True})
            await asyncio.gather(
                self.pump(conn, "up", reader, up_writer),
                self.pump(conn, "down", up_reader, writer),
                return_exceptions=True,
            )
            for w in (writer, up_writer):
                w.close()
            self.event({"conn": conn, "closed": True})
        finally:
            self.tasks.discard(task)

    async def pump(self, conn: int, direction: str, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        record = open(f"{self.record}-{conn}-{direction}.bin", "ab") if self.record else None  # noqa: SIM115
        buffer = bytearray()
        parsing = self.parsing
        try:
            while True:
                try:
                    chunk = await src.read(CHUNK)
                except OSError:
                    break
                if not chunk:
                    break
                if record is not None:
                    record.write(chunk)
                    record.flush()
                if not parsing:
                    out = chunk
                else:
                    buffer += chunk
                    try:
                        out = self.frames(conn, direction, buffer)
                    except ProtocolError as exc:  # not our protocol (any more): pass the rest on as it is
                        self.event({"conn": conn, "dir": direction, "unparsed": exc.message})
                        parsing = False
                        out = bytes(buffer)
                        buffer.clear()
                if out:
                    dst.write(out)
                    try:
                        await dst.drain()
                    except OSError:
                        break
        finally:
            if record is not None:
                record.close()
            try:
                if dst.can_write_eof():
                    dst.write_eof()  # half-close: the other direction may still be answering
                else:
                    dst.close()
            except OSError:
                pass

    def frames(self, conn: int, direction: str, buffer: bytearray) -> bytes:
        """Take the whole frames off the front of ``buffer``; what to pass on for them (their bytes, or the
        re-encoded frame for the one tampered with)."""
        out: list[bytes] = []
        pos = 0
        while len(buffer) - pos >= HEADER_SIZE:
            (length,) = HEADER.unpack_from(buffer, pos)
            end = pos + HEADER_SIZE + length
            if len(buffer) < end:
                break
            raw = bytes(buffer[pos:end])
            pos = end
            frame = unpackb(raw[HEADER_SIZE:])
            if isinstance(frame, list) and frame and frame[0] == ENVELOPES and len(frame) == 3:
                raw = self.envelopes(conn, direction, frame, raw)
            out.append(raw)
        del buffer[:pos]
        return b"".join(out)

    def envelopes(self, conn: int, direction: str, frame: list[Any], raw: bytes) -> bytes:
        messages, acks = frame[1], frame[2]
        tampered = False
        seen = []
        for env in messages:
            if not (isinstance(env, list) and len(env) == 14 and env[0] == MESSAGE):
                continue
            seen.append([env[1], env[3], _sealed(env[13])])
            if direction != "up":
                continue
            if not self.tampered and env[3] == self.tamper_at and isinstance(env[10], bytes):
                body = bytearray(env[10])
                if body:
                    at = len(body) // 2
                    body[at] ^= 0x01
                    env[10] = bytes(body)
                    tampered = self.tampered = True
                    self.event(
                        {
                            "tampered": {
                                "conn": conn,
                                "conversation_id": env[1],
                                "seq": env[3],
                                "index": self.messages_up,
                                "byte": at,
                                "sealed": _sealed(env[13]),
                            }
                        }
                    )
            self.messages_up += 1
        got_acks = [[a[1], a[2], a[3]] for a in acks if isinstance(a, list) and len(a) == 5 and a[0] == ACK]
        self.event({"conn": conn, "dir": direction, "messages": seen, "acks": got_acks})
        return encode_frame(frame) if tampered else raw

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None


async def serve(args: argparse.Namespace) -> int:
    proxy = Proxy(args)
    host, port = _split(args.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await asyncio.start_server(proxy.handle, host, port, reuse_address=True)
    print(f"listening on {host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        for task in list(proxy.tasks):
            task.cancel()
        await asyncio.gather(*proxy.tasks, return_exceptions=True)
        proxy.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--target", required=True, metavar="HOST:PORT")
    parser.add_argument("--record", default=None, metavar="PREFIX")
    parser.add_argument("--events", default=None, metavar="FILE")
    parser.add_argument("--tamper-message", type=int, default=None, metavar="N")
    return asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
