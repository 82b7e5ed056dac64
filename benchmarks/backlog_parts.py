"""The pure parts of benchmarks/bench_backlog.py, kept apart so a test can hold them without starting a node: the
bodies (conversation and number), the fill plan (which batch of which conversation is sent when), the record of
what the node acknowledged, the drain's exactly-once check, and the floors.

A backlog body starts with two unsigned 64-bit big-endian integers, the conversation's index (0..C-1, in the order
the conversations were begun) and the message's number within it (0, 1, 2, ...), then padding up to the size.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

HEADER = struct.Struct(">QQ")  # conversation index, number within the conversation
HEADER_SIZE = HEADER.size
MIB = 1024 * 1024

#: resident bytes a stored 128-byte message may cost the node (issue 17), its queue's window included
FLOOR_BYTES_PER_MESSAGE = 120.0
FLOOR_BYTES_SIZE = 128
#: seconds from a restarted node's process start to serving, with 10,000,000 stored messages (issue 17)
FLOOR_RESTART_S = 20.0
#: the drain's throughput against the one-node throughput (bench_node.py's) of the same size, in the same run
FLOOR_DRAIN_RATIO = 0.5


def make_body(size: int, conversation: int, number: int, *, _pads: dict[int, bytes] = {}) -> bytes:  # noqa: B006
    """A body of ``size`` bytes (at least 16) that starts with ``conversation`` and ``number``."""
    pad = _pads.get(size)
    if pad is None:
        if size < HEADER_SIZE:
            raise ValueError(f"a body is at least {HEADER_SIZE} bytes (conversation + number)")
        pad = _pads[size] = b"\x5a" * (size - HEADER_SIZE)
    return HEADER.pack(conversation, number) + pad


def read_body(body: bytes) -> tuple[int, int]:
    """(conversation, number) of a body made by :func:`make_body`."""
    conversation, number = HEADER.unpack_from(body, 0)
    return int(conversation), int(number)


def per_conversation(messages: int, conversations: int) -> list[int]:
    """How many of ``messages`` each conversation carries: as even as it goes, the first ones one more."""
    if conversations < 1:
        raise ValueError("at least one conversation")
    each, extra = divmod(messages, conversations)
    return [each + (1 if c < extra else 0) for c in range(conversations)]


def fill_batches(counts: Sequence[int], batch: int, mine: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """``(conversation, first number, count)`` batches of the conversations ``mine``, round and round them in
    turn, each taking up to ``batch`` of its next numbers, until each has sent its ``counts[c]``.

    Going round keeps every conversation's backlog growing alike (a drain then meets them all), and a producer
    has one batch of a conversation in flight at a time only when it owns more conversations than its window."""
    if batch < 1:
        raise ValueError("a batch is at least one message")
    sent = {c: 0 for c in mine}
    active = [c for c in mine if counts[c] > 0]
    rounds = 0
    max_rounds = max(counts, default=0) // batch + 2  # the bound: the largest conversation, one batch a round
    while active and rounds < max_rounds:
        rounds += 1
        still = []
        for c in active:
            k = min(batch, counts[c] - sent[c])
            yield c, sent[c], k
            sent[c] += k
            if sent[c] < counts[c]:
                still.append(c)
        active = still


class Acked:
    """What the node acknowledged, per conversation: ranges of numbers ``[first, count]``, in order, merged."""

    __slots__ = ("ranges",)

    def __init__(self, conversations: int) -> None:
        self.ranges: list[list[list[int]]] = [[] for _ in range(conversations)]

    def add(self, conversation: int, first: int, count: int) -> None:
        ranges = self.ranges[conversation]
        if ranges and ranges[-1][0] + ranges[-1][1] == first:
            ranges[-1][1] += count
        else:
            ranges.append([first, count])

    @property
    def total(self) -> int:
        return sum(count for ranges in self.ranges for _, count in ranges)

    @property
    def gaps(self) -> int:
        """Conversations whose acknowledged numbers are not one run from 0: a batch refused between two taken."""
        return sum(1 for ranges in self.ranges if len(ranges) > 1 or (ranges and ranges[0][0] != 0))

    def to_json(self) -> list[list[list[int]]]:
        return self.ranges

    @classmethod
    def from_json(cls, data: list[list[list[int]]]) -> Acked:
        acked = cls(len(data))
        acked.ranges = [[[int(f), int(n)] for f, n in ranges] for ranges in data]
        return acked


class DrainChecker:
    """Exactly once and in order per conversation, against what the node acknowledged (:class:`Acked`).

    Cheap per message (a list index and a compare); keeps the first few problems in words."""

    __slots__ = ("ranges", "at", "nxt", "left", "received", "expected", "problems", "_kept")

    def __init__(self, acked: Acked) -> None:
        self.ranges = acked.ranges
        self.at = [0] * len(self.ranges)  # index of the range due, per conversation
        self.nxt = [r[0][0] if r else -1 for r in self.ranges]  # the number due, per conversation (-1: none more)
        self.left = [r[0][1] if r else 0 for r in self.ranges]  # numbers left in the range due
        self.expected = acked.total
        self.received = 0  # messages that arrived as due
        self.problems = 0
        self._kept: list[str] = []

    def see(self, conversation: int, number: int) -> None:
        if 0 <= conversation < len(self.nxt) and number == self.nxt[conversation]:
            self.received += 1
            left = self.left[conversation] - 1
            if left:
                self.left[conversation] = left
                self.nxt[conversation] = number + 1
                return
            at = self.at[conversation] + 1
            ranges = self.ranges[conversation]
            self.at[conversation] = at
            if at < len(ranges):
                self.nxt[conversation], self.left[conversation] = ranges[at]
            else:
                self.nxt[conversation], self.left[conversation] = -1, 0
            return
        self._problem(conversation, number)

    def _problem(self, conversation: int, number: int) -> None:
        self.problems += 1
        if not 0 <= conversation < len(self.nxt):
            what = f"a message of conversation {conversation}, which was never begun"
        elif self.nxt[conversation] < 0:
            what = f"conversation {conversation}: number {number} after all it sent had arrived (duplicate)"
        else:
            what = (f"conversation {conversation}: number {number} while {self.nxt[conversation]} was due"
                    " (duplicate, loss or reordering)")
        if len(self._kept) < 5:
            self._kept.append(what)

    @property
    def complete(self) -> bool:
        return self.received >= self.expected

    @property
    def ok(self) -> bool:
        return self.received == self.expected and self.problems == 0

    def missing(self) -> int:
        return self.expected - self.received

    def summary(self) -> dict[str, Any]:
        return {
            "exactly_once": self.ok,
            "received_as_due": self.received,
            "expected": self.expected,
            "problems": self.problems,
            "first_problems": list(self._kept),
        }


@dataclass(frozen=True)
class Floor:
    what: str
    measured: str
    passed: bool


def floors(case: dict[str, Any], *, max_memory: int | None) -> list[Floor]:
    """The floors of one case (one size) from its figures; a figure that is missing (a phase that did not run)
    fails its floor, saying so."""
    size, n = case["size"], case["messages"]
    stored = case.get("stored", 0)
    out: list[Floor] = []
    refused = case.get("refused")
    out.append(Floor(f"{fmt_size(size)}: all {n:,} messages stored",
                     f"{stored:,} stored" + (f", then refused: {refused.split(' (')[0].split(';')[0]}" if refused else ""), stored >= n))
    per_msg = case.get("rss_per_message")
    if size == FLOOR_BYTES_SIZE:
        ok = per_msg is not None and per_msg <= FLOOR_BYTES_PER_MESSAGE
        out.append(Floor(f"{fmt_size(size)}: resident memory <= {FLOOR_BYTES_PER_MESSAGE:.0f} B a stored message",
                         "not measured" if per_msg is None else f"{per_msg:,.0f} B", ok))
    restart = case.get("restart_s")
    partial = f" (only {stored:,} of {n:,} were stored)" if stored < n else ""
    out.append(Floor(f"{fmt_size(size)}: restart to serving < {FLOOR_RESTART_S:.0f} s ({stored:,} stored)",
                     ("not measured" if restart is None else f"{restart:.2f} s") + partial,
                     restart is not None and restart < FLOOR_RESTART_S))
    drain, base = case.get("drain_rate"), case.get("baseline_rate")
    ratio = drain / base if drain and base else None
    out.append(Floor(f"{fmt_size(size)}: drain >= {FLOOR_DRAIN_RATIO:.0%} of one-node throughput",
                     "not measured" if ratio is None else f"{ratio:.0%} ({drain:,.0f} of {base:,.0f} msg/s)",
                     ratio is not None and ratio >= FLOOR_DRAIN_RATIO))
    if max_memory:
        peak = case.get("peak_growth")
        ok = peak is not None and peak <= max_memory
        out.append(Floor(f"{fmt_size(size)}: resident growth within max_memory ({max_memory / MIB:,.0f} MiB)",
                         "not measured" if peak is None else f"peak {peak / MIB:,.0f} MiB", ok))
    return out


def fmt_size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"
