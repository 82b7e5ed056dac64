"""What the HTTP monitoring listener costs: one-node throughput with it on and /metrics scraped every second,
against it off, in the same run.

Each round runs the same throughput case as bench_node.py (one producer, one consumer, one node in its own
process, a fresh data directory) twice, once with ``--http off`` and once with ``--http 127.0.0.1:PORT`` while a
thread of this process fetches ``/metrics`` every second, as Prometheus would. The order alternates from round to
round (off/on, on/off, ...), since this shared machine's throughput drifts by tens of percent over minutes; the
medians of the rounds are compared. The bar (issue 13): with the listener on and scraped, at most 3% lower.

Exit status: 0 the bar was met; 1 it was not; 2 an exactly-once check failed or a run did not complete.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from bench_node import run_node_case  # noqa: E402
from common import BenchError, fmt_rate, fmt_size, median  # noqa: E402

#: the most throughput may drop with the listener on and scraped every second
BAR = 0.03


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_monitoring.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="rounds of (off, on) runs, order alternating (default 7)")
    p.add_argument("--messages", type=int, default=200_000, help="messages per run (default 200,000)")
    p.add_argument("--size", type=int, default=128, help="body bytes (default 128)")
    p.add_argument("--store", default="memory", help="node store (default memory: the node's own cost shows most)")
    p.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes (default 1)")
    p.add_argument("--pin", action="store_true", help="pin the server to the first CPU and the load to the last")
    p.add_argument("--max-seconds", type=float, default=180.0, help="bound on each run (default 180)")
    args = p.parse_args(argv)
    common.sigterm_as_interrupt()

    case = dict(mode="throughput", store=args.store, size=args.size, durability="normal", messages=args.messages,
                batch=1000, receive_batch=1000, rate=5000.0, duration=5.0, warmup=1.0,
                max_seconds=args.max_seconds, start_timeout=20.0, pin=args.pin, wait_idle=0.0)  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    print(f"bench_monitoring: {args.rounds} rounds, {args.messages:,} x {fmt_size(args.size)} on the {args.store}"
          f" store; /metrics scraped every {args.scrape_every:g} s when on", flush=True)
    try:
        for r in range(args.rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for which in order:
                res = run_node_case(**case, http=which == "on",  # type: ignore[arg-type]
                                    scrape_every=args.scrape_every if which == "on" else 0.0)
                if not res["check"]["exactly_once"]:
                    print(f"  *** EXACTLY-ONCE FAILED ({which}) ***", flush=True)
                    return 2
                runs[which].append(res)
                scrapes = f", {res['scrapes']} scrapes ({res['scrape_failures']} failed)" if which == "on" else ""
                print(f"  round {r + 1}/{args.rounds} http {which:3}: {fmt_rate(res['throughput'])}{scrapes}",
                      flush=True)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (the node and load processes were stopped)", file=sys.stderr)
        return 130
    off = median([r["throughput"] for r in runs["off"]])
    on = median([r["throughput"] for r in runs["on"]])
    change = on / off - 1
    scraped = sum(r["scrapes"] for r in runs["on"])
    failed = sum(r["scrape_failures"] for r in runs["on"])
    ok = change >= -BAR and failed == 0
    print(f"\nmedian throughput: off {fmt_rate(off)}, on and scraped {fmt_rate(on)}: {change:+.1%}"
          f" ({scraped} scrapes answered, {failed} failed); bar: at most {BAR:.0%} lower: {'PASS' if ok else 'FAIL'}")
    path = common.write_results("monitoring", {
        "settings": vars(args), "off": runs["off"], "on": runs["on"],
        "median_off": off, "median_on": on, "change": change, "pass": ok,
    })  # fmt: skip
    print(f"results: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
