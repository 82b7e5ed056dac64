"""The producer and consumer side of each system bench_peers.py compares, one class pair per system.

Each producer has ``open()``, ``send(bodies)`` (returns once the system's own window lets more be sent: what is
confirmed to the producer and when is the system's business, see :data:`bench_peers.SYSTEMS`), ``finish()``
(waits until everything sent is confirmed, where the system confirms) and ``close()``. Each consumer has
``open()`` (when it returns, the consumer is subscribed and nothing sent from then on can be missed) and
``run(on_bodies)``: it receives until ``on_bodies(list_of_bodies)`` returns True, acknowledging what it received
the way the system acknowledges (or not at all). Bodies are common.make_body's: send time, sequence number, padding.

Runs in the worker processes only; each client library is imported where it is used, so that the orchestrator
(and the tests of its pure parts) need none of them.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from common import LOOPBACK

OnBodies = Callable[[list[bytes]], bool]

#: messages a producer may have sent and not yet had confirmed (aiobroker: 4 batches of 1,000 in flight, the
#: same as bench_node.py; JetStream: nats-py's own default for publish_async; MQTT: unacknowledged PUBLISHes)
WINDOW = 4000
#: messages a consumer asks for at once (aiobroker receive, JetStream pull)
RECEIVE_BATCH = 1000
#: NATS core drops messages for a consumer that falls behind ("slow consumer"); the consumer sends its count back
#: every CREDIT_EVERY messages, and the producer keeps at most this many bytes beyond the last count it heard of
CREDIT_EVERY = 1000
CREDIT_WINDOW_BYTES = 16 << 20
#: how long a consumer's single receive waits before looking again (its run is bounded by the caller)
POLL_S = 0.5


# --- aiobroker -----------------------------------------------------------------------------------------------------


class AiobrokerProducer:
    def __init__(self, port: int, size: int) -> None:
        self.url = f"tcp://{LOOPBACK}:{port}"
        self.window: deque[Any] = deque()

    async def open(self) -> None:
        import aiobroker

        import bench_node as bn

        self.client = await aiobroker.connect(self.url)
        self.dialog = await self.client.begin_dialog(bn.SERVICE_INIT, bn.SERVICE_TARGET, bn.CONTRACT)
        self.mtype = bn.MESSAGE_TYPE

    async def send(self, bodies: list[bytes]) -> None:
        # Dialog.start_send_many: started in order, so stored in order; each completes once the node stored it
        self.window.append(self.dialog.start_send_many([(self.mtype, b) for b in bodies]))
        while len(self.window) > WINDOW // RECEIVE_BATCH or (self.window and self.window[0].done):
            await self.window.popleft().wait()

    async def finish(self) -> None:
        while self.window:
            await self.window.popleft().wait()

    async def close(self) -> None:
        await self.client.aclose()


class AiobrokerConsumer:
    def __init__(self, port: int, size: int) -> None:
        self.url = f"tcp://{LOOPBACK}:{port}"

    async def open(self) -> None:
        import aiobroker

        import bench_node as bn

        self.client = await aiobroker.connect(self.url)
        await self.client.create_queue(bn.QUEUE_IN)
        await self.client.create_queue(bn.QUEUE_INIT)
        await self.client.create_service(bn.SERVICE_TARGET, queue=bn.QUEUE_IN, contracts=[bn.CONTRACT])
        await self.client.create_service(bn.SERVICE_INIT, queue=bn.QUEUE_INIT, contracts=[bn.CONTRACT])
        self.queue = bn.QUEUE_IN

    async def run(self, on_bodies: OnBodies) -> None:
        # As bench_node.py: each batch's commit is sent and the next receive follows it at once; the commits'
        # answers are checked as they come, and all of them before the run ends.
        commits: deque[Any] = deque()
        done = False
        while not done:
            batch = await self.client.receive(self.queue, max_messages=RECEIVE_BATCH, timeout=POLL_S)
            if len(batch) == 0:
                continue
            done = on_bodies([m.body for m in batch.messages])
            commits.append(batch.start_commit())
            while commits and commits[0].done:
                await commits.popleft().wait()
        for pending in commits:
            await pending.wait()

    async def close(self) -> None:
        await self.client.aclose()


# --- the relay (benchmarks/relay.py) -------------------------------------------------------------------------------


class RelayProducer:
    def __init__(self, port: int, size: int) -> None:
        self.port = port

    async def open(self) -> None:
        import anyio

        import relay

        self.stream = await anyio.connect_tcp(LOOPBACK, self.port)
        await self.stream.send(relay.HELLO_PRODUCER)
        if await relay.read_one_frame(self.stream, relay.PAIR_TIMEOUT) != ["ready"]:
            raise RuntimeError("the relay did not answer ready")
        self.encode = relay.encode_frames

    async def send(self, bodies: list[bytes]) -> None:
        await self.stream.send(self.encode(bodies))  # TCP's own flow control is the window

    async def finish(self) -> None:
        await self.stream.send_eof()

    async def close(self) -> None:
        await self.stream.aclose()


class RelayConsumer:
    def __init__(self, port: int, size: int) -> None:
        self.port = port

    async def open(self) -> None:
        import anyio

        import relay

        self.stream = await anyio.connect_tcp(LOOPBACK, self.port)
        await self.stream.send(relay.HELLO_CONSUMER)  # the relay holds it until a producer comes
        self.decoder = relay.FrameDecoder()
        self.recv_max = relay.RECV_MAX

    async def run(self, on_bodies: OnBodies) -> None:
        feed, receive = self.decoder.feed, self.stream.receive
        while True:
            frames = feed(await receive(self.recv_max))
            if frames and on_bodies(frames):
                return

    async def close(self) -> None:
        await self.stream.aclose()


# --- NATS core (nats-py) -------------------------------------------------------------------------------------------

NATS_SUBJECT, NATS_CREDIT = "bench.core", "bench.credit"


class NatsProducer:
    def __init__(self, port: int, size: int) -> None:
        self.url = f"nats://{LOOPBACK}:{port}"
        self.window = max(2 * CREDIT_EVERY, min(100_000, CREDIT_WINDOW_BYTES // size))
        self.sent = 0
        self.heard = 0
        self.event = asyncio.Event()

    async def open(self) -> None:
        import nats

        self.nc = await nats.connect(self.url, allow_reconnect=False)

        async def on_credit(msg: Any) -> None:
            self.heard = max(self.heard, int(msg.data))
            self.event.set()

        await self.nc.subscribe(NATS_CREDIT, cb=on_credit)
        await self.nc.flush()

    async def send(self, bodies: list[bytes]) -> None:
        publish = self.nc.publish
        for body in bodies:
            await publish(NATS_SUBJECT, body)
        self.sent += len(bodies)
        while self.sent - self.heard > self.window:
            self.event.clear()
            await self.event.wait()

    async def finish(self) -> None:
        await self.nc.flush()  # written to the server (NATS core confirms nothing more)

    async def close(self) -> None:
        await self.nc.close()


class NatsConsumer:
    def __init__(self, port: int, size: int) -> None:
        self.url = f"nats://{LOOPBACK}:{port}"
        self.pending: list[bytes] = []
        self.event = asyncio.Event()

    async def open(self) -> None:
        import nats

        self.nc = await nats.connect(self.url, allow_reconnect=False)

        async def on_msg(msg: Any) -> None:
            self.pending.append(msg.data)
            self.event.set()

        await self.nc.subscribe(NATS_SUBJECT, cb=on_msg, pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30)
        await self.nc.flush()  # the server has the subscription

    async def run(self, on_bodies: OnBodies) -> None:
        count = credited = 0
        while True:
            await self.event.wait()
            self.event.clear()
            bodies, self.pending = self.pending, []
            if on_bodies(bodies):
                return
            count += len(bodies)
            if count - credited >= CREDIT_EVERY:
                credited = count
                await self.nc.publish(NATS_CREDIT, str(count).encode())

    async def close(self) -> None:
        await self.nc.close()


# --- NATS JetStream, file storage, a pull consumer with acknowledgements ------------------------------------------

JS_STREAM, JS_SUBJECT, JS_CONSUMER = "BENCH", "bench.js", "bench"
#: a pull request's life on the server; one is renewed when the server says it expired
JS_EXPIRES_NS = 30_000_000_000


class JetStreamProducer:
    def __init__(self, port: int, size: int) -> None:
        self.url = f"nats://{LOOPBACK}:{port}"
        self.errors: list[str] = []

    async def open(self) -> None:
        import nats

        self.nc = await nats.connect(self.url, allow_reconnect=False)
        # publish_async: nats-py's pipelined publish; each future completes with the stream's PubAck (stored)
        self.js = self.nc.jetstream(publish_async_max_pending=WINDOW)

    def _check(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            self.errors.append("cancelled")
        elif fut.exception() is not None and len(self.errors) < 5:
            self.errors.append(repr(fut.exception()))

    async def send(self, bodies: list[bytes]) -> None:
        publish, check = self.js.publish_async, self._check
        for body in bodies:
            (await publish(JS_SUBJECT, body)).add_done_callback(check)

    async def finish(self) -> None:
        await asyncio.wait_for(self.js.publish_async_completed(), timeout=60)
        if self.errors:
            raise RuntimeError(f"JetStream refused messages: {'; '.join(self.errors[:3])}")

    async def close(self) -> None:
        await self.nc.close()


class JetStreamConsumer:
    """A pull consumer that keeps pull requests outstanding (as nats.go's ``Consume`` does): the server sends
    messages as they are stored, up to the batches requested, and a new request goes out whenever less than a
    batch is left requested. Each received batch is acknowledged by acking its last message (``AckPolicy.ALL``,
    one acknowledgement per batch, as aiobroker's consumer commits once per batch)."""

    def __init__(self, port: int, size: int) -> None:
        self.url = f"nats://{LOOPBACK}:{port}"
        self.pending: list[Any] = []
        self.event = asyncio.Event()
        self.requested = 0  # messages asked for and not yet delivered (over all outstanding requests)

    async def open(self) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

        self.nc = await nats.connect(self.url, allow_reconnect=False)
        js = self.nc.jetstream()
        await js.add_stream(StreamConfig(name=JS_STREAM, subjects=[JS_SUBJECT], storage=StorageType.FILE))
        await js.add_consumer(JS_STREAM, ConsumerConfig(
            durable_name=JS_CONSUMER, ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=4 * RECEIVE_BATCH))
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{JS_STREAM}.{JS_CONSUMER}"
        self.inbox = self.nc.new_inbox()

        async def on_msg(msg: Any) -> None:
            self.pending.append(msg)
            self.event.set()

        await self.nc.subscribe(self.inbox, cb=on_msg, pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30)
        await self._pull()
        await self._pull()
        await self.nc.flush()

    async def _pull(self) -> None:
        self.requested += RECEIVE_BATCH
        request = json.dumps({"batch": RECEIVE_BATCH, "expires": JS_EXPIRES_NS}).encode()
        await self.nc.publish(self.next_subject, request, reply=self.inbox)

    async def run(self, on_bodies: OnBodies) -> None:
        while True:
            await self.event.wait()
            self.event.clear()
            msgs, self.pending = self.pending, []
            bodies = []
            last = None
            for msg in msgs:
                if msg.data or not msg.headers:
                    bodies.append(msg.data)
                    last = msg
                else:  # a status (408: a request expired; 409: the consumer's limits): ask again
                    self.requested = 0
            self.requested -= len(bodies)
            if last is not None:
                await self.nc.publish(last.reply, b"+ACK")
            while self.requested < RECEIVE_BATCH:
                await self._pull()
            if bodies and on_bodies(bodies):
                await self.nc.flush()  # the last acknowledgement reaches the server
                return

    async def close(self) -> None:
        await self.nc.close()


# --- mosquitto: MQTT 3.1.1, QoS 1, a minimal client ------------------------------------------------------------------
#
# paho-mqtt runs its network loop in a thread and makes a Python object, a lock round and a callback per message;
# the client below writes each batch of PUBLISHes in one write and each received chunk's PUBACKs in one write, so
# the broker rather than the client is what is measured (see benchmarks/README.md).

MQTT_TOPIC = b"bench/peers"
_U16 = struct.Struct(">H")


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _remaining_length(len(body)) + body


def mqtt_connect(client_id: str) -> bytes:
    cid = client_id.encode()
    # protocol "MQTT" level 4 (3.1.1), flags: clean session; keep-alive 600 s
    return mqtt_packet(0x10, b"\x00\x04MQTT\x04\x02" + _U16.pack(600) + _U16.pack(len(cid)) + cid)


def mqtt_publish_header(packet_id: int, payload_len: int) -> bytes:
    """A QoS 1 PUBLISH's fixed and variable header; the payload follows."""
    var = _U16.pack(len(MQTT_TOPIC)) + MQTT_TOPIC + _U16.pack(packet_id)
    return bytes((0x32,)) + _remaining_length(len(var) + payload_len) + var


class MqttReader:
    """Splits a byte stream into MQTT packets: ``feed(chunk)`` returns ``[(first_byte, body), ...]``."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        buf = self.buf + chunk if self.buf else chunk
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            length, mult, i, complete = 0, 1, pos + 1, False
            for _ in range(4):  # the remaining length: 1 to 4 bytes, 7 bits each, low first
                if i >= end:
                    break
                byte = buf[i]
                i += 1
                length += (byte & 0x7F) * mult
                if not byte & 0x80:
                    complete = True
                    break
                mult *= 128
            else:
                raise ValueError("malformed MQTT remaining length (over 4 bytes)")
            if not complete or end - i < length:
                break  # the rest of this packet is in a later chunk
            out.append((buf[pos], buf[i:i + length]))
            pos = i + length
        self.buf = buf[pos:]
        return out


async def _mqtt_open(port: int, client_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, MqttReader]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(mqtt_connect(client_id))
    parser = MqttReader()
    packets = await _mqtt_expect(reader, parser)
    if packets[0][0] >> 4 != 2 or packets[0][1][1] != 0:
        raise RuntimeError(f"mosquitto refused the connection: {packets[0]!r}")
    return reader, writer, parser


async def _mqtt_expect(reader: asyncio.StreamReader, parser: MqttReader) -> list[tuple[int, bytes]]:
    for _ in range(1000):
        chunk = await asyncio.wait_for(reader.read(1 << 16), timeout=10)
        if not chunk:
            raise RuntimeError("mosquitto closed the connection")
        packets = parser.feed(chunk)
        if packets:
            return packets
    raise RuntimeError("no MQTT packet after 1,000 reads")


class MqttProducer:
    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.sent = 0
        self.acked = 0
        self.event = asyncio.Event()

    async def open(self) -> None:
        self.reader, self.writer, self.parser = await _mqtt_open(self.port, f"bench-producer-{time.monotonic_ns()}")
        self.acks = asyncio.ensure_future(self._read_acks())

    async def _read_acks(self) -> None:
        feed, read = self.parser.feed, self.reader.read
        while True:
            chunk = await read(1 << 18)
            if not chunk:
                return
            for first, _ in feed(chunk):
                if first >> 4 == 4:  # PUBACK (mosquitto acknowledges in order)
                    self.acked += 1
            self.event.set()

    async def send(self, bodies: list[bytes]) -> None:
        parts = []
        pid = self.sent
        for body in bodies:
            pid = pid % 65535 + 1
            parts.append(mqtt_publish_header(pid, len(body)))
            parts.append(body)
        self.writer.write(b"".join(parts))
        self.sent += len(bodies)
        await self.writer.drain()
        while self.sent - self.acked > WINDOW:
            await self._wait_acks()

    async def _wait_acks(self) -> None:
        if self.acks.done():
            raise RuntimeError("mosquitto closed the producer's connection")
        self.event.clear()
        await asyncio.wait_for(self.event.wait(), timeout=30)

    async def finish(self) -> None:
        for _ in range(1_000_000):
            if self.acked >= self.sent:
                return
            await self._wait_acks()

    async def close(self) -> None:
        self.writer.write(b"\xe0\x00")  # DISCONNECT
        self.acks.cancel()
        self.writer.close()


class MqttConsumer:
    def __init__(self, port: int, size: int) -> None:
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer, self.parser = await _mqtt_open(self.port, f"bench-consumer-{time.monotonic_ns()}")
        topic = _U16.pack(len(MQTT_TOPIC)) + MQTT_TOPIC
        self.writer.write(mqtt_packet(0x82, _U16.pack(1) + topic + b"\x01"))  # SUBSCRIBE, QoS 1
        packets = await _mqtt_expect(self.reader, self.parser)
        if packets[0][0] >> 4 != 9 or packets[0][1][2] != 1:
            raise RuntimeError(f"mosquitto did not grant the QoS 1 subscription: {packets[0]!r}")

    async def run(self, on_bodies: OnBodies) -> None:
        feed, read, write = self.parser.feed, self.reader.read, self.writer.write
        while True:
            chunk = await read(1 << 18)
            if not chunk:
                raise RuntimeError("mosquitto closed the consumer's connection")
            bodies = []
            acks = []
            for first, body in feed(chunk):
                if first >> 4 != 3:
                    continue
                tlen = _U16.unpack_from(body, 0)[0]
                acks.append(b"\x40\x02" + body[2 + tlen:4 + tlen])  # PUBACK with the packet id
                bodies.append(body[4 + tlen:])
            if acks:
                write(b"".join(acks))
            if bodies and on_bodies(bodies):
                await self.writer.drain()
                return

    async def close(self) -> None:
        self.writer.write(b"\xe0\x00")
        self.writer.close()


CLIENTS: dict[str, tuple[type[Any], type[Any]]] = {
    "relay": (RelayProducer, RelayConsumer),
    "memory": (AiobrokerProducer, AiobrokerConsumer),
    "sqlite": (AiobrokerProducer, AiobrokerConsumer),
    "nats": (NatsProducer, NatsConsumer),
    "jetstream": (JetStreamProducer, JetStreamConsumer),
    "mosquitto": (MqttProducer, MqttConsumer),
}
