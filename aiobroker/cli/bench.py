"""The ``bench`` command: put a measured load through a running node, as ``nats bench`` does for NATS.

The load and its checks are :mod:`~aiobroker.cli.bench_run`; this module reads the options, shows progress on
stderr while it runs (a line a second), and prints the summary: a table, or JSON with ``--json``; ``--plot`` draws
it (:mod:`~aiobroker.cli.bench_plot`, with the ``plot`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import anyio

from ..client import Client
from . import arguments
from .arguments import add_command
from .bench_run import DRAIN_SECONDS, MIN_SIZE, Plan, Tally, run
from .common import EXIT_ERROR, TOKEN_ENV, CommandError
from .render import echo, note

EXIT_STATUS_BENCH = (
    "exit status:\n  0 done, every message arrived exactly once and in order,"
    "\n  1 a message was lost, came twice or out of order, or the node refused (one line on stderr),"
    "\n  2 usage error, 130 interrupted"
)


async def cmd_bench(client: Client, args: argparse.Namespace) -> int | None:
    plan = Plan(
        producers=args.producers,
        consumers=args.consumers,
        conversations=args.conversations,
        size=args.size,
        count=None if args.duration is not None else args.count,
        duration=args.duration,
        batch=args.batch,
        rate=args.rate,
        keep=args.keep,
    )
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None

    def make_client() -> Client:  # each producer and consumer on a connection of its own, as the first one is
        return Client(client.url, token=token, ssl_context=client.ssl_context)

    tally = Tally()
    made: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(_progress, tally, plan)
        made = await run(client, make_client, plan, tally)
        tg.cancel_scope.cancel()
    summary = summarize(plan, tally)
    summary["objects"] = made["names"]
    if args.json:
        echo(json.dumps(summary, indent=2))
    else:
        _print_table(summary)
    for left in made["left"]:
        note(f"bench: could not drop {left}")
    if args.plot:
        from .bench_plot import plot

        plot(args.plot, summary, tally)
        note(f"bench: drew {args.plot}")
    if tally.drain_timed_out:
        note(
            f"bench: the consumers were still receiving {DRAIN_SECONDS:.0f}s after the last send, and were stopped:"
            f" {summary['missing']} message(s) not yet received (a node slower than the producers, not a lost"
            " message); try a smaller --count or a --rate the node keeps up with"
        )
        return EXIT_ERROR
    if summary["missing"] or summary["duplicates"] or summary["out_of_order"]:
        note(
            f"bench: {summary['missing']} message(s) never arrived, {summary['duplicates']} arrived twice,"
            f" {summary['out_of_order']} out of order: the node broke exactly-once or in-order delivery;"
            " please report it with the node's log"
        )
        return EXIT_ERROR
    return None


async def _progress(tally: Tally, plan: Plan) -> None:
    """A line a second on stderr: what has been sent and received so far, and the rate of the last second."""
    live = sys.stderr.isatty()
    last, last_at = 0, time.monotonic()
    while True:
        await anyio.sleep(1.0)
        now = time.monotonic()
        rate = (tally.received - last) / (now - last_at)
        last, last_at = tally.received, now
        goal = f"/{plan.count:,}" if plan.count is not None else ""
        line = f"bench: sent {tally.sent:,}{goal}, received {tally.received:,}, {rate:,.0f} msg/s"
        print(("\r" + line + "   ") if live else f"aiobroker: {line}", end="" if live else "\n", file=sys.stderr,
              flush=True)


def _percentile(values: list[int], p: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(p / 100 * len(values)))] / 1e6


def summarize(plan: Plan, tally: Tally) -> dict[str, Any]:
    """The run in numbers: rates, latency percentiles in milliseconds, and the exactly-once and order checks."""
    elapsed = max(1e-9, (tally.finished_ns - tally.started_ns) / 1e9)
    latencies = sorted(tally.latencies_ns)
    due = sorted(tally.due_latencies_ns)
    return {
        "producers": plan.producers,
        "consumers": plan.consumers,
        "conversations": plan.producers * plan.conversations,
        "size": plan.size,
        "batch": plan.batch,
        "rate": plan.rate,
        "sent": tally.sent,
        "received": tally.received,
        "seconds": round(elapsed, 3),
        "msg_per_s": round(tally.received / elapsed, 1),
        "mb_per_s": round(tally.received_bytes / elapsed / 1e6, 3),
        "latency_ms": {f"p{p:g}": _percentile(latencies, p) for p in (50, 99, 99.9)}
        | {"max": latencies[-1] / 1e6 if latencies else None},
        # from when each message was due, with --rate: a producer the node held back shows here
        "latency_from_due_ms": {f"p{p:g}": _percentile(due, p) for p in (50, 99, 99.9)} if due else None,
        "missing": tally.sent - tally.distinct,
        "duplicates": tally.duplicates,
        "out_of_order": tally.out_of_order,
        "drain_timed_out": tally.drain_timed_out,
        "per_second": tally.per_second,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_table(s: dict[str, Any]) -> None:
    lat, due = s["latency_ms"], s["latency_from_due_ms"]
    rows = [
        ("messages", f"{s['received']:,} of {s['sent']:,} received in {s['seconds']:.2f} s"),
        ("throughput", f"{s['msg_per_s']:,.0f} msg/s, {s['mb_per_s']:.2f} MB/s of bodies ({s['size']} B each)"),
        ("latency ms", f"p50 {_ms(lat['p50'])}  p99 {_ms(lat['p99'])}  p99.9 {_ms(lat['p99.9'])}  max {_ms(lat['max'])}"),
    ]
    if due is not None:
        rows.append(("from due ms", f"p50 {_ms(due['p50'])}  p99 {_ms(due['p99'])}  p99.9 {_ms(due['p99.9'])}"))
    rows.append(("load", f"{s['producers']} producer(s), {s['consumers']} consumer(s), {s['conversations']}"
                 f" conversation(s), batches of {s['batch']}" + (f", paced at {s['rate']:,.0f} msg/s" if s["rate"] else "")))
    ok = not (s["missing"] or s["duplicates"] or s["out_of_order"])
    rows.append(("exactly once", "yes, and in order" if ok else
                 f"NO: {s['missing']} never arrived, {s['duplicates']} twice, {s['out_of_order']} out of order"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        echo(f"{name:<{width}}  {value}")


def _size(text: str) -> int:
    value = arguments.positive_int(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"a message is at least {MIN_SIZE} bytes (it carries its producer, conversation, sequence number and"
            f" times), got {value}"
        )
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected messages a second, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected messages a second > 0, got {text!r}")
    return value


def check_plot(args: argparse.Namespace) -> None:
    """Before connecting: ``--plot`` needs matplotlib (the ``plot`` extra); say so now, not after the run."""
    if getattr(args, "plot", None):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CommandError(
                "--plot needs matplotlib: pip install 'aiobroker[plot]' (or leave out --plot)"
            ) from None


def add_bench(commands: Any, client: argparse.ArgumentParser) -> None:
    p = add_command(
        commands,
        "bench",
        "put a measured load through a node: throughput, latency, exactly-once",
        [
            "aiobroker bench",
            "aiobroker bench --count 1000000 --size 4096 --producers 2 --consumers 2",
            "aiobroker bench --duration 30 --rate 5000 --json",
            "aiobroker bench --plot bench.png",
        ],
        details="The run makes its own queues and services on the node (aiobroker-bench-<id>...), sends from its"
        " producers to its consumers on that one node, checks that every message arrives exactly once and in order,"
        " and drops what it made. A message's latency is from its send to its receipt, on this process's clock;"
        " with --rate also from when it was due. Unpaced, the producers send as fast as the node takes messages and the"
        " latency is mostly time spent waiting in the queue; measure latency with --rate below the node's throughput."
        " The producers and consumers share this one process: against a"
        " fast node the bench may be the busier side (run several at once to load a node from more cores).",
        parents=[client],
        exit_status=EXIT_STATUS_BENCH,
    )
    p.add_argument("--producers", type=arguments.positive_int, default=1, metavar="N",
                   help="sending connections (default 1)")
    p.add_argument("--consumers", type=arguments.positive_int, default=1, metavar="N",
                   help="receiving connections (default 1)")
    p.add_argument("--conversations", type=arguments.positive_int, default=1, metavar="N",
                   help="conversations per producer, sent to in turn (default 1)")
    p.add_argument("--size", type=_size, default=128, metavar="BYTES", help=f"message body size (default 128, at least {MIN_SIZE})")
    how_long = p.add_mutually_exclusive_group()
    how_long.add_argument("--count", type=arguments.positive_int, default=100_000, metavar="N",
                          help="messages to send in all (default 100,000)")
    how_long.add_argument("--duration", type=arguments.positive_seconds, metavar="SECONDS",
                          help="send for this long instead of a count")
    p.add_argument("--batch", type=arguments.positive_int, default=100, metavar="N",
                   help="messages per send request, and per receive at most (default 100)")
    p.add_argument("--rate", type=_rate, metavar="MSG/S",
                   help="pace the producers at this many messages a second in all (default: as fast as they can)")
    p.add_argument("--keep", action="store_true", help="leave the queues and services the run made")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (progress stays on stderr)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw throughput over time and the latency distribution (needs the plot extra: matplotlib)")
    p.set_defaults(run=cmd_bench, prepare=check_plot)
