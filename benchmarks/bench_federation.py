"""Federation throughput: a producer on node A, a consumer on node B, on loopback; against the two-hop relay.

Each node runs in its own process on its own port, A with a route for the target service to B and B with one
back to A. The producer streams numbered messages over one conversation (a window of batches in flight); the
consumer on B receives, checks every number arrives exactly once and in order, and commits. In the same run, the
baseline is the bare relay with two hops (producer -> relay -> relay -> consumer), the same framing, batched.

Floors (issue 3): memory store at least 10% of the two-hop relay; SQLite ``normal`` at least 30,000 msg/s.

    .venv/bin/python benchmarks/bench_federation.py            # the full run (a few minutes)
    .venv/bin/python benchmarks/bench_federation.py --quick    # a smoke run (under a minute)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import relay  # noqa: E402
import two_nodes  # noqa: E402
from common import LOGS_DIR, LOOPBACK, BenchError, fmt_rate, fmt_size  # noqa: E402

FLOOR_MEMORY_RATIO = 0.10
FLOOR_SQLITE = 30_000.0
CONFIG = """
[node]
store = "{store}"
durability = "normal"
data_dir = "{data_dir}"
log_level = "warning"
[federation]
ack_timeout = 10
[[queue]]
name = "{queue}"
[[service]]
name = "{service}"
queue = "{queue}"
contracts = {contracts}
[[route]]
name = "to-peer"
service_name = "{far_service}"
address = "tcp://127.0.0.1:{far_port}"
"""


def start_node(name: str, store: str, port: int, far_port: int, service: str, far_service: str, accepts: bool,
               workdir: Path) -> Any:
    data_dir = workdir / f"data-{name}"
    config = workdir / f"{name}.toml"
    config.write_text(CONFIG.format(store=store, data_dir=data_dir, queue=f"q{name}", service=service,
                                    contracts='["DEFAULT"]' if accepts else "[]", far_service=far_service,
                                    far_port=far_port))
    log = LOGS_DIR / f"federation-node-{name}.log"
    proc = common.start_process([sys.executable, "-m", "aiobroker", "serve", "--config", str(config), "--listen",
                                 f"{LOOPBACK}:{port}", "--http", "off"], log_path=log)
    common.wait_for_port(port, proc=proc, what=f"node {name} ({store})", log_path=log, timeout=30)
    return proc


async def load(args: argparse.Namespace) -> dict[str, Any]:
    import aiobroker

    n, size = args.messages, args.size
    progress = common.Progress(f"federation {args.store} {fmt_size(size)} received", n)
    async with aiobroker.connect(f"tcp://{LOOPBACK}:{args.port_a}") as ca, \
            aiobroker.connect(f"tcp://{LOOPBACK}:{args.port_b}") as cb:
        dialog = await ca.begin_dialog("svcA", "svcB")
        checker, elapsed = await two_nodes.stream(dialog, cb, "qb", n=n, size=size, batch=args.batch,
                                                  window=args.window, deadline=common.Deadline(args.max_seconds),
                                                  progress=progress)
    return {"store": args.store, "size": size, "messages": n, "received": checker.expected,
            "throughput": common.throughput(checker.expected, elapsed), "check": checker.summary()}


def run_case(store: str, size: int, messages: int, max_seconds: float) -> dict[str, Any]:
    port_a, port_b = common.free_port(), common.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="aiobroker-bench-federation-"))
    procs = []
    try:
        procs.append(start_node("b", store, port_b, port_a, "svcB", "svcA", True, workdir))
        procs.append(start_node("a", store, port_a, port_b, "svcA", "svcB", False, workdir))
        meter = common.CpuMeter([p.pid for p in procs])
        result = common.run_worker(
            [sys.executable, __file__, "load", "--port-a", str(port_a), "--port-b", str(port_b), "--store", store,
             "--size", str(size), "--messages", str(messages), "--max-seconds", str(max_seconds)],
            timeout=max_seconds + 60, what=f"federation load ({store}, {fmt_size(size)})")
        result["cpu"] = meter.stop()
        return result
    finally:
        for proc in procs:
            common.stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["load"]:
        p = argparse.ArgumentParser(prog="bench_federation.py load", description="the load process (internal)")
        p.add_argument("--port-a", type=int, required=True)
        p.add_argument("--port-b", type=int, required=True)
        p.add_argument("--store", required=True)
        p.add_argument("--size", type=int, default=128)
        p.add_argument("--messages", type=int, default=200_000)
        p.add_argument("--batch", type=int, default=1000)
        p.add_argument("--window", type=int, default=4)
        p.add_argument("--max-seconds", type=float, default=120)
        args = p.parse_args(argv[1:])
        return common.worker_main("federation load", lambda: common.run_async(load, args))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer messages, one repeat")
    p.add_argument("--messages", type=int, default=None, help="messages per node run (default 200,000)")
    p.add_argument("--sizes", default="128", help="body sizes, comma list (default 128)")
    p.add_argument("--stores", default="memory,sqlite", help="comma list (default memory,sqlite)")
    p.add_argument("--repeat", type=int, default=None, help="runs per case; the median counts (default 3)")
    p.add_argument("--max-seconds", type=float, default=180.0, help="bound on each run")
    args = p.parse_args(argv)
    messages = args.messages or (30_000 if args.quick else 200_000)
    repeat = args.repeat or (1 if args.quick else 3)
    baseline_messages = 100_000 if args.quick else 1_000_000
    out: dict[str, Any] = {"machine": common.machine_info(), "cases": []}
    failed = False
    for size in common.parse_sizes(args.sizes):
        print(f"== {fmt_size(size)} bodies: two-hop relay baseline", flush=True)
        base = relay.relay_throughput(size, 2, repeat, messages=baseline_messages, max_seconds=args.max_seconds)
        rows = [["relay, 2 hops", fmt_rate(base["throughput"]), "1.00", "-", "yes" if base["exactly_once"] else "NO"]]
        for store in args.stores.split(","):
            runs = []
            for r in range(repeat):
                try:
                    res = run_case(store, size, messages, args.max_seconds)
                except BenchError as exc:
                    print(f"  {store}: {exc}", flush=True)
                    failed = True
                    break
                runs.append(res)
                print(f"  {store} run {r + 1}/{repeat}: {fmt_rate(res['throughput'])} msg/s,"
                      f" exactly once: {res['check']['exactly_once']}", flush=True)
            if not runs:
                continue
            rate = common.median([r["throughput"] for r in runs])
            once = all(r["check"]["exactly_once"] and r["received"] == messages for r in runs)
            ratio = rate / base["throughput"] if base["throughput"] else 0.0
            if store == "memory":
                floor_ok, floor = ratio >= FLOOR_MEMORY_RATIO, f">= {FLOOR_MEMORY_RATIO:.0%} of relay"
            else:
                floor_ok, floor = rate >= FLOOR_SQLITE, f">= {FLOOR_SQLITE:,.0f} msg/s"
            failed |= not (floor_ok and once)
            rows.append([f"A -> B, {store}", fmt_rate(rate), f"{ratio:.3f}",
                         f"{'PASS' if floor_ok else 'FAIL'} ({floor})", "yes" if once else "NO"])
            out["cases"].append({"size": size, "store": store, "throughput": rate, "ratio": ratio,
                                 "baseline": base["throughput"], "exactly_once": once, "runs": runs})
        common.print_table(["case", "msg/s", "x relay", "floor", "exactly once"], rows)
    path = common.write_results("federation", out)
    print(f"results: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
