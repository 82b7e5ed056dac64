"""The load both two-node benchmarks put through A -> B (``bench_federation.py``, ``bench_security.py``).

A producer on node A streams ``n`` numbered messages over one conversation, a window of ``start_send_many``
batches in flight; a consumer on node B receives batches, checks that every number arrives exactly once and in
order, and commits with ``start_commit`` (commits in flight, not waited for one by one). Throughput is counted from
the first send to the moment the last number arrives.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from common import Deadline, Progress, SequenceChecker, body_seq, make_body


async def stream(dialog: Any, consumer: Any, queue: str, *, n: int, size: int, batch: int, window: int,
                 deadline: Deadline, progress: Progress) -> tuple[SequenceChecker, int]:
    """Send ``n`` bodies of ``size`` bytes on ``dialog`` and receive them from ``queue`` through ``consumer``
    (an ``aiobroker`` client of node B). Returns the checker and the nanoseconds from first send to last receive
    (to the deadline if the run did not finish). A body of another length counts as a problem: not the one sent."""
    import anyio

    checker = SequenceChecker(n)
    marks: dict[str, int] = {}

    async def produce() -> None:
        in_flight: deque[Any] = deque()
        marks["first"] = time.monotonic_ns()
        for first in range(0, n, batch):
            if deadline.passed:
                break
            k = min(batch, n - first)
            in_flight.append(dialog.start_send_many([("DEFAULT", make_body(size, first + i)) for i in range(k)]))
            if len(in_flight) >= window:
                await in_flight.popleft().wait()
        for pending in in_flight:
            await pending.wait()

    async def consume() -> None:
        commits: deque[Any] = deque()
        for _ in range(10_000_000):
            if checker.complete or deadline.passed:
                break
            received = await consumer.receive(queue, max_messages=2000, timeout=1.0)
            for m in received.messages:
                if len(m.body) != size:
                    checker.problems += 1
                checker.see(body_seq(m.body))
            if checker.complete:
                marks["last"] = time.monotonic_ns()
            commits.append(received.start_commit())
            while commits and commits[0].done:
                await commits.popleft().wait()
            progress.tick(checker.expected)
        for pending in commits:
            await pending.wait()

    with anyio.move_on_after(deadline.left()):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await produce()
    return checker, marks.get("last", time.monotonic_ns()) - marks["first"]
