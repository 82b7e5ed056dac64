"""The load ``aiobroker bench`` puts through a node, and what it measures.

Theory of operation
-------------------
The run makes its own objects on the node (two queues and two services named ``aiobroker-bench-<id>...``), so it
never touches an application's. Each producer is a connection of its own that begins ``conversations`` dialogs and
sends ``batch`` messages at a time to them in turn; each consumer is a connection of its own that receives batches
from the target queue and commits them. All of them run in this one process, on one event loop: a message's latency
is the time from just before its send request left to its receipt, on one clock (``time.monotonic_ns``), so no clock
of another machine is involved. With ``rate`` the producers are paced, and a message's latency is also counted from
when it was *due* (a producer the node holds back is latency too, which a send-time count would hide).

Every message carries its producer, conversation and sequence number; the consumers check that each conversation's
messages arrive exactly once and in order, and the summary says how many did not. At the end the producers end
their dialogs, the consumers end the target sides as the EndDialogs arrive, and the run drops what it made (unless
``keep``).

The client runs in one process on one core: against a fast node it is often the bench, not the node, that is
busy. Run several ``aiobroker bench`` at once to load a node from more cores.
"""

from __future__ import annotations

import math
import struct
import time
import uuid
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ..client import Client, Dialog
from ..errors import BrokerError

#: what each body starts with: producer, conversation, sequence number, send time, due time (ns; 0: unpaced)
HEADER = struct.Struct("<IIQqq")
MIN_SIZE = HEADER.size
#: how long the consumers may take, after the producers are done, to receive what is left and the EndDialogs
DRAIN_SECONDS = 60.0


@dataclass
class Plan:
    producers: int = 1
    consumers: int = 1
    conversations: int = 1  #: per producer
    size: int = 128
    count: int | None = 100_000  #: messages in all (None: for ``duration`` seconds)
    duration: float | None = None
    batch: int = 100
    rate: float | None = None  #: messages a second in all (None: as fast as the node takes them)
    keep: bool = False


@dataclass
class Tally:
    """What the consumers saw, as it happens (the progress line reads it)."""

    sent: int = 0
    received: int = 0
    received_bytes: int = 0
    #: distinct messages received (``sent - distinct`` never arrived)
    distinct: int = 0
    #: a message that came again: exactly-once broken
    duplicates: int = 0
    #: a message that came after a later one of its conversation: order broken
    out_of_order: int = 0
    latencies_ns: array = field(default_factory=lambda: array("q"))  # type: ignore[type-arg]
    due_latencies_ns: array = field(default_factory=lambda: array("q"))  # type: ignore[type-arg]
    #: messages received in each whole second of the run (for the plot)
    per_second: list[int] = field(default_factory=list)
    #: per (producer, conversation): a bit per sequence number seen, and the highest seen
    seen: dict[tuple[int, int], bytearray] = field(default_factory=dict)
    highest: dict[tuple[int, int], int] = field(default_factory=dict)
    started_ns: int = 0
    finished_ns: int = 0
    ends_seen: int = 0
    #: when the consumers stop, received or not (set once the producers are done)
    drain_deadline: float = math.inf
    #: the consumers had not drained DRAIN_SECONDS after the last send (a slow node, not a lost message)
    drain_timed_out: bool = False


def body_for(size: int, producer: int, conversation: int, seq: int, due_ns: int) -> bytes:
    header = HEADER.pack(producer, conversation, seq, time.monotonic_ns(), due_ns)
    return header + b"\0" * (size - MIN_SIZE)


async def run(first: Client, make_client: Callable[[], Client], plan: Plan, tally: Tally) -> dict[str, Any]:
    """Set up, run the load, tear down; returns the names it made and what it could not drop (for the summary)."""
    tag = uuid.uuid4().hex[:8]
    names = {
        "queue_from": f"aiobroker-bench-{tag}-from",
        "queue_to": f"aiobroker-bench-{tag}-to",
        "from": f"//aiobroker/bench/{tag}/from",
        "to": f"//aiobroker/bench/{tag}/to",
    }
    await first.create_queue(names["queue_from"])
    await first.create_queue(names["queue_to"])
    await first.create_service(names["from"], names["queue_from"])
    await first.create_service(names["to"], names["queue_to"], ["DEFAULT"])
    left: list[str] = []
    try:
        await _load(make_client, plan, tally, names)
    finally:
        if not plan.keep:
            with anyio.CancelScope(shield=True):
                left = await _drop(first, names)
    return {"names": names, "left": left}


async def _load(make_client: Callable[[], Client], plan: Plan, tally: Tally, names: dict[str, str]) -> None:
    dialogs_total = plan.producers * plan.conversations
    stop_sending = anyio.Event()
    tally.started_ns = time.monotonic_ns()
    async with anyio.create_task_group() as tg:
        if plan.duration is not None:

            async def timer() -> None:
                await anyio.sleep(plan.duration or 0)
                stop_sending.set()

            tg.start_soon(timer)
        for c in range(plan.consumers):
            tg.start_soon(_consumer, make_client, plan, tally, names, dialogs_total, c)
        async with anyio.create_task_group() as producers:
            for p in range(plan.producers):
                producers.start_soon(_producer, make_client, plan, tally, names, p, stop_sending)
        stop_sending.set()  # every producer is done (count reached): the timer has nothing left to stop
        # the consumers drain what is left, then the EndDialogs, within a bound; they stop themselves at it (not a
        # cancellation, so that each closes its connection as usual)
        tally.drain_deadline = anyio.current_time() + DRAIN_SECONDS
    tally.finished_ns = time.monotonic_ns()


def _share(total: int, parts: int, i: int) -> int:
    return total // parts + (1 if i < total % parts else 0)


async def _producer(
    make_client: Callable[[], Client], plan: Plan, tally: Tally, names: dict[str, str], p: int, stop: anyio.Event
) -> None:
    quota = _share(plan.count, plan.producers, p) if plan.count is not None else None
    interval_ns = int(1e9 * plan.batch / (plan.rate / plan.producers)) if plan.rate else 0
    async with make_client() as client:
        dialogs: list[Dialog] = [
            await client.begin_dialog(names["from"], names["to"]) for _ in range(plan.conversations)
        ]
        seqs = [0] * len(dialogs)
        sent = 0
        due_ns = time.monotonic_ns()
        turn = 0
        while not stop.is_set() and (quota is None or sent < quota):
            n = plan.batch if quota is None else min(plan.batch, quota - sent)
            if interval_ns:
                wait = due_ns - time.monotonic_ns()
                if wait > 0:
                    await anyio.sleep(wait / 1e9)
            c = turn % len(dialogs)
            turn += 1
            start = seqs[c]
            paced = due_ns if interval_ns else 0
            batch = [("DEFAULT", body_for(plan.size, p, c, start + i, paced)) for i in range(n)]
            await dialogs[c].send_many(batch)
            seqs[c] = start + n
            sent += n
            tally.sent += n
            due_ns += interval_ns
        for dialog in dialogs:
            await dialog.end()


async def _consumer(
    make_client: Callable[[], Client], plan: Plan, tally: Tally, names: dict[str, str], dialogs_total: int, c: int
) -> None:
    async with make_client() as client:
        while tally.ends_seen < dialogs_total:
            if anyio.current_time() > tally.drain_deadline:
                tally.drain_timed_out = True
                return
            batch = await client.receive(names["queue_to"], max_messages=max(plan.batch, 100), timeout=0.5)
            if not batch:
                continue
            now = time.monotonic_ns()
            second = (now - tally.started_ns) // 1_000_000_000
            ends = []
            for message in batch:
                if message.is_end_dialog:
                    ends.append(message)
                    continue
                _see(tally, message.body, now, second)
            await batch.commit()
            for message in ends:
                await batch.dialog(message).end()
                tally.ends_seen += 1


def _see(tally: Tally, body: bytes, now: int, second: int) -> None:
    producer, conversation, seq, sent_ns, due_ns = HEADER.unpack_from(body)
    key = (producer, conversation)
    bits = tally.seen.get(key)
    if bits is None:
        bits = tally.seen[key] = bytearray()
    byte, mask = seq >> 3, 1 << (seq & 7)
    if byte >= len(bits):
        bits.extend(bytes(byte - len(bits) + 4096))
    if bits[byte] & mask:
        tally.duplicates += 1
        return
    bits[byte] |= mask
    tally.distinct += 1
    if seq < tally.highest.get(key, -1):
        tally.out_of_order += 1
    else:
        tally.highest[key] = seq
    tally.received += 1
    tally.received_bytes += len(body)
    tally.latencies_ns.append(now - sent_ns)
    if due_ns:
        tally.due_latencies_ns.append(now - due_ns)
    per = tally.per_second
    while len(per) <= second:
        per.append(0)
    per[second] += 1


async def _drop(client: Client, names: dict[str, str]) -> list[str]:
    """Drop what the run made; returns, in words, what could not be dropped and why (the summary says so)."""
    left = []
    for kind, name in (("service", names["from"]), ("service", names["to"]), ("queue", names["queue_from"]),
                       ("queue", names["queue_to"])):
        try:
            await client.drop(kind, name)
        except BrokerError as exc:  # a conversation still open (the run was cut short): say so, drop the rest
            left.append(f"{kind} {name}: {exc.message}")
    return left
