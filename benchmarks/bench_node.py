"""One producer and one consumer through ONE aiobroker node, against the relay baseline measured in the same run.

For each body size (128 B and 4 KiB by default) and each node store (memory, sqlite; durability normal):

* throughput: the producer sends N messages as fast as it can, in batches (``dialog.send_many``, which returns
  once the node has stored them); the consumer receives in batches and commits each batch; throughput = N / (time
  from the first send to the last receive). The consumer checks that sequence numbers 0..N-1 arrive exactly once,
  in order: anything else FAILS the run, loudly.
* latency: the producer paces sends at a fixed rate (5,000 msg/s; each 1 ms tick sends what is due, in one
  batch), every body starting with its send time (``time.monotonic_ns()``, a clock all processes share on Linux);
  the consumer records receive time - send time. p50 and p99 in ms, after a warm-up.

The relay baseline (benchmarks/relay.py: a process that only parses frames and forwards them) runs the same two
measurements, and the node's throughput is printed as a ratio to it. Producer and consumer share one load process;
the node (or relay) runs in its own process, so the two cores are used the same way in baseline and node runs.

Floors the project must meet (PASS/FAIL printed): memory store, 128 B: throughput >= 15% of the relay's;
sqlite store (durability normal), 128 B: >= 40,000 msg/s; every node case: p99 < 5 ms at 5,000 msg/s.

Exit status: 0 all ran and passed; 1 a floor failed; 2 an exactly-once check failed or something did not run.
"""

from __future__ import annotations

import argparse
import functools
from collections import deque
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # run as `python -m benchmarks.<name>`
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import (
    LOGS_DIR,
    LOOPBACK,
    BenchError,
    Deadline,
    Progress,
    SequenceChecker,
    body_send_ns,
    body_seq,
    fmt_ms,
    fmt_rate,
    fmt_size,
    make_body,
    median,
    print_table,
    run_worker,
    start_process,
    stop_process,
    throughput,
    wait_for_port,
)

import pauses  # noqa: E402
import relay  # noqa: E402

BENCH_NODE_PY = Path(__file__).resolve()

QUEUE_IN, SERVICE_TARGET = "bench_in", "bench_target"
QUEUE_INIT, SERVICE_INIT = "bench_init_q", "bench_init"
MESSAGE_TYPE = CONTRACT = "DEFAULT"

FLOOR_MEMORY_RATIO = 0.15  # memory store, 128 B: at least 15% of the relay's throughput
FLOOR_SQLITE_RATE = 40_000.0  # sqlite store (durability normal), 128 B: at least 40,000 msg/s
FLOOR_P99_MS = common.LATENCY_FLOOR_MS  # every node case: p99 under 5 ms at 5,000 msg/s
FLOOR_SIZE = 128
FLOOR_POSTGRESQL_RATE = 30_000.0  # postgresql store, 128 B: at least 30,000 msg/s (issue 14)
FLOOR_POSTGRESQL_P99_MS = 10.0  # postgresql store: p99 under 10 ms at 5,000 msg/s (a server round trip a batch)

#: the PostgreSQL server the ``postgresql`` target runs against (started in main when asked for): its own cluster in
#: a temporary directory (tests/postgres.py), with the durability a production server has (fsync, synchronous_commit
#: on); every node run gets a fresh database, as every other run gets a fresh data directory
POSTGRES: Any = None


def store_argument(store: str) -> str:
    """What ``--store`` says for a target: its name, or for postgresql a fresh database's URL."""
    return POSTGRES.new_database() if store == "postgresql" else store


def start_postgres() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from postgres import PostgresServer, pg_bindir

    if pg_bindir() is None:
        raise SystemExit("error: the postgresql target needs PostgreSQL's server (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="aiobroker-bench-pg-"))
    os.chmod(root, 0o755)
    return PostgresServer(root / "pg").init().start("fsync=on", "full_page_writes=on", "synchronous_commit=on")
#: A consumer that receives nothing for this long after the producer finished gives up (and the run fails).
STALL_SECONDS = 10.0


# --- the load process (producer + consumer, through the aiobroker client) -------------------------------------


async def setup_node(client: Any) -> Any:
    """Queues, services and one dialog bench_init -> bench_target (not timed)."""
    await client.create_queue(QUEUE_IN)
    await client.create_queue(QUEUE_INIT)
    await client.create_service(SERVICE_TARGET, queue=QUEUE_IN, contracts=[CONTRACT])
    await client.create_service(SERVICE_INIT, queue=QUEUE_INIT, contracts=[CONTRACT])
    return await client.begin_dialog(SERVICE_INIT, SERVICE_TARGET, CONTRACT)


def check_batch(batch: Any, checker: SequenceChecker, problems: list[str]) -> None:
    for m in batch.messages:
        if m.message_type != MESSAGE_TYPE and len(problems) < 5:
            problems.append(f"message of type {m.message_type!r} arrived (expected {MESSAGE_TYPE!r})")
        checker.see(body_seq(m.body))


async def load_throughput(args: argparse.Namespace) -> dict[str, Any]:
    import aiobroker
    import anyio

    n, size, batch_size = args.messages, args.size, args.batch
    url = f"tcp://{LOOPBACK}:{args.port}"
    deadline = Deadline(args.max_seconds)
    checker = SequenceChecker(n)
    problems: list[str] = []
    state: dict[str, Any] = {"t_first": None, "t_last": None, "sent": 0, "batches_received": 0,
                             "empty_receives": 0, "producer_done": False}
    progress = Progress(f"node {args.store} {fmt_size(size)} received", n)

    async with aiobroker.connect(url) as producer_client, aiobroker.connect(url) as consumer_client:
        dialog = await setup_node(producer_client)

        async def produce() -> None:
            # a window of batches in flight: started in order, so stored in order (Dialog.start_send_many)
            window: deque[Any] = deque()
            sent = 0
            for _ in range(n // batch_size + 2):
                if sent >= n or deadline.passed:
                    break
                k = min(batch_size, n - sent)
                now = time.monotonic_ns()
                msgs = [(MESSAGE_TYPE, make_body(size, sent + i, now)) for i in range(k)]
                if state["t_first"] is None:
                    state["t_first"] = time.monotonic_ns()
                window.append(dialog.start_send_many(msgs))
                if len(window) >= args.window:
                    await window.popleft().wait()
                sent += k
                state["sent"] = sent
            for pending in window:
                await pending.wait()
            state["producer_done"] = True

        commits: deque[Any] = deque()

        async def consume() -> None:
            extra_checks = 0
            last_progress = time.monotonic()
            for _ in range(10_000_000):
                timeout = 0.5 if checker.complete else 1.0
                batch = await consumer_client.receive(QUEUE_IN, max_messages=args.receive_batch, timeout=timeout)
                if len(batch) == 0:
                    state["empty_receives"] += 1
                    if checker.complete:
                        extra_checks += 1
                        if extra_checks >= 2:  # nothing more came: no duplicates after the last one
                            return
                    elif state["producer_done"] and time.monotonic() - last_progress > STALL_SECONDS:
                        problems.append(f"nothing arrived for {STALL_SECONDS:.0f} s after the producer finished"
                                        f" ({checker.expected:,} of {n:,} received)")
                        return
                    continue
                last_progress = time.monotonic()
                now = time.monotonic_ns()
                state["batches_received"] += 1
                check_batch(batch, checker, problems)
                if checker.complete and state["t_last"] is None:
                    state["t_last"] = now
                commits.append(batch.start_commit())  # overlaps the next receive, which follows it in order
                while commits and commits[0].done:
                    await commits.popleft().wait()
                progress.tick(checker.expected)

        with anyio.move_on_after(deadline.left()) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await produce()

    summary = checker.summary()
    if problems:
        summary["exactly_once"] = False
        summary["first_problems"] = problems + summary["first_problems"]
    end = state["t_last"] or time.monotonic_ns()
    elapsed = end - (state["t_first"] or end)
    return {
        "mode": "throughput",
        "store": args.store,
        "size": size,
        "messages": n,
        "sent": state["sent"],
        "received": checker.expected,
        "batch": batch_size,
        "receive_batch": args.receive_batch,
        "batches_received": state["batches_received"],
        "empty_receives": state["empty_receives"],
        "elapsed_s": elapsed / 1e9,
        "throughput": throughput(n if state["t_last"] else checker.expected, elapsed),
        "timed_out": scope.cancelled_caught,
        "check": summary,
    }


async def load_latency(args: argparse.Namespace) -> dict[str, Any]:
    import aiobroker
    import anyio

    size, rate = args.size, args.rate
    total = int(rate * (args.warmup + args.duration))
    url = f"tcp://{LOOPBACK}:{args.port}"
    deadline = Deadline(args.max_seconds)
    checker = SequenceChecker(total)
    problems: list[str] = []
    samples: list[tuple[int, int, int]] = []  # (seq, send ns, receive ns)
    progress = Progress(f"node {args.store} {fmt_size(size)} latency at {rate:,.0f} msg/s", total)
    pace: dict[str, Any] = {}

    async with aiobroker.connect(url) as producer_client, aiobroker.connect(url) as consumer_client:
        dialog = await setup_node(producer_client)

        async def send_batch(first: int, count: int) -> None:
            await dialog.send_many([(MESSAGE_TYPE, make_body(size, first + i)) for i in range(count)])

        commits: deque[Any] = deque()

        async def consume() -> None:
            # As a consumer that cares for latency would: the commit is sent and the next receive follows it in
            # the same write, so a receive is already waiting at the node when the next messages arrive, instead
            # of a commit's round trip later. Commits are checked as their answers come.
            last_progress = time.monotonic()
            for _ in range(10_000_000):
                while commits and commits[0].done:
                    await commits.popleft().wait()
                if checker.complete or deadline.passed:
                    for pending in commits:
                        await pending.wait()
                    return
                batch = await consumer_client.receive(QUEUE_IN, max_messages=args.receive_batch, timeout=0.5)
                if len(batch) == 0:
                    if pace and time.monotonic() - last_progress > STALL_SECONDS:
                        problems.append(f"nothing arrived for {STALL_SECONDS:.0f} s after the producer finished"
                                        f" ({checker.expected:,} of {total:,} received)")
                        return
                    continue
                last_progress = time.monotonic()
                now = time.monotonic_ns()
                for m in batch.messages:
                    samples.append((body_seq(m.body), body_send_ns(m.body), now))
                check_batch(batch, checker, problems)
                commits.append(batch.start_commit())

        with anyio.move_on_after(deadline.left()) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                pace.update(await common.paced_send(send_batch, rate=rate, total=total, tick=args.tick,
                                                    max_seconds=args.warmup + args.duration + 5.0,
                                                    progress=progress))

    summary = checker.summary()
    if problems:
        summary["exactly_once"] = False
        summary["first_problems"] = problems + summary["first_problems"]
    return {
        "mode": "latency",
        "store": args.store,
        "size": size,
        "rate": rate,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "pacing": pace,
        **common.latency_report(samples, start_ns=pace.get("start_ns", 0), warmup=args.warmup, rate=rate,
                                samples_out=args.samples_out),
        "timed_out": scope.cancelled_caught,
        "check": summary,
    }


def load_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench_node.py load", description="Load process for one node run (internal).")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--mode", choices=("throughput", "latency"), required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--receive-batch", type=int, default=1000)
    p.add_argument("--window", type=int, default=4, help="send batches in flight at once (pipelined, in order)")
    p.add_argument("--rate", type=float, default=5000.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--tick", type=float, default=0.001)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--samples-out", help="latency mode: write the measured [send ns, receive ns] pairs here (JSON)")
    args = p.parse_args(argv)
    fn = load_throughput if args.mode == "throughput" else load_latency
    return common.worker_main(f"node-load-{args.store}", lambda: common.run_async(fn, args))


# --- orchestration ----------------------------------------------------------------------------------------------


def check_node_available() -> str | None:
    """None if ``aiobroker`` can be imported with ``connect`` and ``python -m aiobroker`` exists, else why not."""
    try:
        mod = importlib.import_module("aiobroker")
    except Exception as exc:  # noqa: BLE001 - reported as one line
        return f"cannot import aiobroker ({type(exc).__name__}: {exc})"
    if not callable(getattr(mod, "connect", None)):
        return "aiobroker has no connect() yet (the client is not there)"
    try:
        has_main = importlib.util.find_spec("aiobroker.__main__") is not None
    except Exception:  # noqa: BLE001
        has_main = False
    if not has_main:
        return "aiobroker has no __main__ ('python -m aiobroker serve' is not there)"
    return None


def run_node_case(
    *,
    mode: str,
    store: str,
    size: int,
    durability: str,
    messages: int,
    batch: int,
    receive_batch: int,
    rate: float,
    duration: float,
    warmup: float,
    max_seconds: float,
    start_timeout: float,
    pin: bool,
    wait_idle: float,
    http: bool = False,
    scrape_every: float = 0.0,
) -> dict[str, Any]:
    """Start a fresh node (own process, fresh data directory), run the load process against it, stop it by pid.

    The node's HTTP monitoring listener is off unless ``http``; with ``scrape_every`` > 0 its /metrics is fetched
    that often while the load runs (bench_monitoring.py), and ``result["scrapes"]`` says how many answered."""
    port = common.free_port()
    http_port = common.free_port() if http else None
    data_dir = Path(tempfile.mkdtemp(prefix=f"aiobroker-bench-{store}-"))
    log = LOGS_DIR / f"node-{store}.log"
    server_cpus, load_cpus = common.cpu_plan(pin, 1)
    argv = [sys.executable, "-m", "aiobroker", "serve", "--listen", f"{LOOPBACK}:{port}",
            "--store", store_argument(store),
            "--data-dir", str(data_dir), "--durability", durability,
            "--http", f"{LOOPBACK}:{http_port}" if http_port else "off"]
    proc = start_process(argv, log_path=log, cpus=server_cpus[0])
    scraper = common.Scraper(f"http://{LOOPBACK}:{http_port}/metrics", scrape_every) if http_port and scrape_every \
        else None
    try:
        wait_for_port(port, proc=proc, what=f"aiobroker node (store {store})", log_path=log, timeout=start_timeout)
        if wait_idle:
            common.wait_until_quiet(wait_idle, say=lambda m: print(m, flush=True))
        meter = common.CpuMeter([proc.pid])
        load_argv = [sys.executable, str(BENCH_NODE_PY), "load", "--port", str(port), "--store", store, "--mode",
                     mode, "--size", str(size), "--messages", str(messages), "--batch", str(batch),
                     "--receive-batch", str(receive_batch), "--rate", str(rate), "--duration", str(duration),
                     "--warmup", str(warmup), "--max-seconds", str(max_seconds)]
        what = f"node load ({store}, {mode}, {fmt_size(size)})"
        if scraper is not None:
            scraper.start()
        try:
            if mode == "latency":
                result = common.run_latency_worker(load_argv, timeout=max_seconds + 60, what=what, cpus=load_cpus)
            else:
                result = run_worker(load_argv, timeout=max_seconds + 60, what=what, cpus=load_cpus)
        finally:
            if scraper is not None:
                scraper.stop()
        result["cpu"] = meter.stop()
        if scraper is not None:
            result["scrapes"], result["scrape_failures"] = scraper.answered, scraper.failed
        if proc.poll() is not None:
            raise BenchError(f"the node exited with code {proc.returncode} during the run"
                             f"{common._log_hint(log)}")
        return result
    finally:
        was_running = proc.poll() is None
        code = stop_process(proc)
        if was_running and code not in (0, None, -15):
            print(f"    note: the node exited with code {code} on SIGTERM (log: {common._rel(log)})", flush=True)
        shutil.rmtree(data_dir, ignore_errors=True)


def summarize_throughput(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["throughput"] for r in runs]
    return {
        "throughput": median(rates),
        "throughput_min": min(rates),
        "throughput_max": max(rates),
        "server_us_per_msg": median([r["cpu"]["server_cpu_s"] / max(1, r["received"]) * 1e6 for r in runs]),
        "others_cores": max(common.CpuMeter.contention(r["cpu"]) for r in runs),
        "exactly_once": all(r["check"]["exactly_once"] and not r["timed_out"] for r in runs),
        "runs": runs,
    }


def main_bench(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bench_node.py",
        description="One producer and one consumer through one aiobroker node (stores memory and sqlite), "
        "against the relay baseline measured in the same run. Prints throughput (and its ratio to the "
        "relay), p50/p99 latency at a fixed rate, and PASS/FAIL for the project's floors.",
        epilog="Floors: memory 128 B throughput >= 15% of the relay; sqlite (normal) 128 B >= 40,000 msg/s; "
        "p99 < 5 ms at 5,000 msg/s. Exit status 0 = all passed, 1 = a floor failed, 2 = exactly-once failure "
        "or error. Results: benchmarks/results/node-<time>.json",
    )
    p.add_argument("--quick", action="store_true", help="small run, a smoke test of under ~30 s")
    p.add_argument("--messages", type=int, help="messages per node throughput run (default 200,000; --quick "
                   "20,000); also the baseline's unless --baseline-messages is given")
    p.add_argument("--baseline-messages", type=int, help="messages per relay throughput run (default 1,000,000;"
                   " --quick 50,000): the relay is fast, so short runs would mostly measure start-up")
    p.add_argument("--sizes", default="128,4096", help="body sizes in bytes, comma list (default: 128,4096)")
    p.add_argument("--stores", default="memory,sqlite", help="node stores, comma list (default: memory,sqlite)")
    p.add_argument("--durability", default="normal", help="node --durability (default: normal)")
    p.add_argument("--baseline-only", action="store_true", help="run only the relay baseline")
    p.add_argument("--repeat", type=int, help="throughput runs per case, median reported (default 3; --quick 1)")
    p.add_argument("--batch", type=int, default=1000, help="messages per send_many / relay write (default 1000)")
    p.add_argument("--receive-batch", type=int, default=1000, help="max_messages per receive (default 1000)")
    p.add_argument("--rate", type=float, default=5000.0, help="latency runs: msg/s (default 5000)")
    p.add_argument("--duration", type=float, help="latency runs: measured seconds (default 5; --quick 1.5)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    p.add_argument("--no-throughput", action="store_true",
                   help="skip the throughput runs (and their floors): latency runs only, with the relay's latency "
                   "as the baseline")
    p.add_argument("--pin", action="store_true", help="pin the server to the first CPU(s) and the load to the last")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each run, wait up to S s for other processes to leave the CPUs idle")
    p.add_argument("--retry-busy", type=int, default=0, metavar="K",
                   help=common.RETRY_BUSY_HELP)
    p.add_argument("--start-timeout", type=float, default=20.0, help="seconds for a node to start (default 20)")
    p.add_argument("--max-seconds", type=float, default=180.0, help="bound on each run (default 180)")
    args = p.parse_args(argv)

    try:
        sizes = common.parse_sizes(args.sizes)
    except ValueError as exc:
        p.error(str(exc))
    stores = [] if args.baseline_only else [s.strip() for s in args.stores.split(",") if s.strip()]
    messages = args.messages or (20_000 if args.quick else 200_000)
    baseline_messages = args.baseline_messages or args.messages or (50_000 if args.quick else 1_000_000)
    repeat = args.repeat or (1 if args.quick else 3)
    duration = args.duration or (1.5 if args.quick else 5.0)
    warmup = 0.3 if args.quick else 1.0

    if stores:
        why = check_node_available()
        if why:
            print(f"error: the node benchmark cannot run: {why}. Run with --baseline-only to measure the relay "
                  "alone.", file=sys.stderr)
            return 2

    global POSTGRES
    if "postgresql" in stores:
        POSTGRES = start_postgres()
    try:
        return _run(args, p, sizes, stores, messages, baseline_messages, repeat, duration, warmup)
    finally:
        if POSTGRES is not None:
            POSTGRES.stop()


def _run(args: Any, p: Any, sizes: list[int], stores: list[str], messages: int, baseline_messages: int, repeat: int,
         duration: float, warmup: float) -> int:
    common_kw = dict(max_seconds=args.max_seconds, pin=args.pin, wait_idle=args.wait_idle)
    relay_kw = dict(messages=baseline_messages, batch=args.batch, **common_kw)
    node_kw = dict(durability=args.durability, messages=messages, batch=args.batch,
                   receive_batch=args.receive_batch, rate=args.rate, duration=duration, warmup=warmup,
                   start_timeout=args.start_timeout, **common_kw)
    targets = ["relay"] + stores
    results: dict[str, dict[int, dict[str, Any]]] = {t: {} for t in targets}
    errors: list[str] = []
    node_broken: str | None = None
    started = time.monotonic()

    print(f"bench_node: sizes {', '.join(fmt_size(s) for s in sizes)}; targets {', '.join(targets)}; "
          f"node N={messages:,}, relay N={baseline_messages:,}, x{repeat}; latency at {args.rate:,.0f} msg/s "
          f"for {duration} s" + (" (skipped)" if args.no_latency else ""), flush=True)
    for size in sizes:
        # Throughput: the repeats are interleaved (relay, node stores, relay, ...) so a change in the machine's
        # load over time affects baseline and node alike.
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
        for r in range(0 if args.no_throughput else repeat):
            for target in targets:
                if target != "relay" and node_broken:
                    continue
                label = f"{target:6} {fmt_size(size):>6} throughput run {r + 1}/{repeat}"
                try:
                    if target == "relay":
                        res = common.run_unless_busy(
                            functools.partial(relay.run_relay_case, mode="throughput", size=size, hops=1,
                                              **relay_kw),
                            args.retry_busy, label.strip())
                    else:
                        res = common.run_unless_busy(
                            functools.partial(run_node_case, mode="throughput", store=target, size=size, **node_kw),
                            args.retry_busy, label.strip())
                except BenchError as exc:
                    print(f"  {label}: ERROR: {exc}", flush=True)
                    errors.append(f"{target} {fmt_size(size)} throughput: {exc}")
                    if target == "relay":
                        return finish(args, sizes, targets, results, errors, repeat, 2)
                    node_broken = str(exc)
                    continue
                runs[target].append(res)
                print(f"  {label}: {relay.describe_run(res)}", flush=True)
                if not res["check"]["exactly_once"]:
                    print(f"  *** EXACTLY-ONCE FAILED ({target}, {fmt_size(size)}): "
                          f"{'; '.join(res['check']['first_problems'][:3]) or 'messages missing'} ***", flush=True)
        for target in targets:
            if runs[target]:
                results[target][size] = {"throughput": summarize_throughput(runs[target])}
            elif args.no_throughput:
                results[target][size] = {}
        if args.no_latency:
            continue
        for target in targets:
            if target != "relay" and node_broken:
                continue
            if size not in results[target]:
                continue
            label = f"{target:6} {fmt_size(size):>6} latency at {args.rate:,.0f} msg/s for {duration} s"
            try:
                if target == "relay":
                    res = common.run_unless_busy(
                        functools.partial(relay.run_relay_case, mode="latency", size=size, hops=1, rate=args.rate,
                                          duration=duration, warmup=warmup, **common_kw),
                        args.retry_busy, label.strip())
                else:
                    res = common.run_unless_busy(
                        functools.partial(run_node_case, mode="latency", store=target, size=size, **node_kw),
                        args.retry_busy, label.strip())
            except BenchError as exc:
                print(f"  {label}: ERROR: {exc}", flush=True)
                errors.append(f"{target} {fmt_size(size)} latency: {exc}")
                if target != "relay":
                    node_broken = str(exc)
                continue
            results[target][size]["latency"] = res
            print(f"  {label}: {relay.describe_latency(res)}", flush=True)
    print(f"\n(all runs took {time.monotonic() - started:.0f} s)")
    return finish(args, sizes, targets, results, errors, repeat, None)


#: the throughput entry of a case run with --no-throughput
NOT_MEASURED: dict[str, Any] = {"throughput": float("nan"), "exactly_once": True, "others_cores": 0.0,
                                "server_us_per_msg": float("nan")}


def finish(
    args: argparse.Namespace,
    sizes: list[int],
    targets: list[str],
    results: dict[str, dict[int, dict[str, Any]]],
    errors: list[str],
    repeat: int,
    forced_status: int | None,
) -> int:
    rows = []
    floors: list[tuple[str, str, bool, bool]] = []  # (what, measured, passed, machine was busy)
    once_failed = False
    busy = False
    for size in sizes:
        base = results["relay"].get(size, {}).get("throughput", {}).get("throughput")
        base_thr = results["relay"].get(size, {}).get("throughput", {})
        base_busy = base_thr.get("others_cores", 0.0) > common.BUSY_THRESHOLD
        for target in targets:
            case = results[target].get(size)
            name = "relay (baseline)" if target == "relay" else f"node {target}"
            if case is None:
                rows.append([name, fmt_size(size), "not run", "", "", "", "", "", "", ""])
                continue
            thr = case.get("throughput") or NOT_MEASURED
            lat = case.get("latency")
            rate = thr["throughput"]
            ratio = rate / base if base else float("nan")
            once = thr["exactly_once"] and (lat is None or lat["check"]["exactly_once"])
            once_failed |= not once
            others = max(thr["others_cores"], common.CpuMeter.contention((lat or {}).get("cpu", {})))
            busy |= others > common.BUSY_THRESHOLD
            verdicts = []
            if target == "memory" and size == FLOOR_SIZE and base and thr is not NOT_MEASURED:
                ok = ratio >= FLOOR_MEMORY_RATIO
                verdicts.append(f">=15% {'PASS' if ok else 'FAIL'}")
                floors.append((f"memory {fmt_size(size)} throughput >= 15% of relay", f"{ratio:.1%}", ok,
                               thr["others_cores"] > common.BUSY_THRESHOLD or base_busy))
            if target == "sqlite" and size == FLOOR_SIZE and thr is not NOT_MEASURED:
                ok = rate >= FLOOR_SQLITE_RATE
                verdicts.append(f">=40k {'PASS' if ok else 'FAIL'}")
                floors.append((f"sqlite {fmt_size(size)} throughput >= 40,000 msg/s", fmt_rate(rate), ok,
                               thr["others_cores"] > common.BUSY_THRESHOLD))
            if target == "postgresql" and size == FLOOR_SIZE and thr is not NOT_MEASURED:
                ok = rate >= FLOOR_POSTGRESQL_RATE
                verdicts.append(f">=30k {'PASS' if ok else 'FAIL'}")
                floors.append((f"postgresql {fmt_size(size)} throughput >= 30,000 msg/s", fmt_rate(rate), ok,
                               thr["others_cores"] > common.BUSY_THRESHOLD))
            if target != "relay" and lat is not None:
                p99 = lat["latency"]["p99_ms"]
                limit = FLOOR_POSTGRESQL_P99_MS if target == "postgresql" else FLOOR_P99_MS
                ok = p99 == p99 and p99 < limit
                verdicts.append(f"p99<{limit:g}ms {'PASS' if ok else 'FAIL'}")
                lat_busy = common.CpuMeter.contention(lat.get("cpu", {})) > common.BUSY_THRESHOLD
                measured = f"{fmt_ms(p99)} ms"
                if "pauses" in lat:
                    measured += (f" ({pauses.describe(lat['pauses'])}; outside them p99 "
                                 f"{fmt_ms(lat['outside_pauses']['p99_ms'])} ms)")
                floors.append((f"{target} {fmt_size(size)} p99 < {limit:g} ms at {args.rate:,.0f} msg/s",
                               measured, ok, lat_busy or bool(lat.get("disturbed"))))
            rows.append([
                name, fmt_size(size), fmt_rate(rate),
                "1.00x" if target == "relay" else (f"{ratio:.3f}x" if base and rate == rate else "-"),
                "-" if thr is NOT_MEASURED else f"{thr['server_us_per_msg']:.2f}",
                fmt_ms(lat["latency"]["p50_ms"]) if lat else "-",
                fmt_ms(lat["latency"]["p99_ms"]) if lat else "-",
                "ok" if once else "FAILED",
                f"{others:.2f}" + (" BUSY" if others > common.BUSY_THRESHOLD else ""),
                ", ".join(verdicts),
            ])
    print()
    rate_header = "msg/s (not measured)" if args.no_throughput else f"msg/s (median of {repeat})"
    print_table(["target", "body", rate_header, "vs relay", "server cpu us/msg", "p50 ms", "p99 ms", "exactly-once",
                 "others' cores", "floors"], rows)
    if busy:
        print("note: other processes used CPU during runs marked BUSY: their figures are not reliable "
              "(use --wait-idle S, or rerun on a quiet machine)")
    if floors:
        print("\nfloors" + (" (a --quick run: indicative only)" if args.quick else "") + ":")
        for what, measured, ok, was_busy in floors:
            note = ("  (the machine was busy or the platform paused during this run: rerun before trusting it)"
                    if was_busy else "")
            print(f"  {'PASS' if ok else 'FAIL'}  {what}: {measured}{note}")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    path = common.write_results("node", {
        "settings": {k: v for k, v in vars(args).items()},
        "floors": [{"floor": w, "measured": m, "passed": ok, "machine_busy": b} for w, m, ok, b in floors],
        "errors": errors,
        "results": {t: {str(s): v for s, v in per.items()} for t, per in results.items()},
    })
    print(f"\nresults: {common._rel(path)}")
    if once_failed:
        print("\n*** EXACTLY-ONCE CHECK FAILED: a message was lost, duplicated or reordered (see above) ***",
              file=sys.stderr)
        return 2
    if forced_status is not None:
        return forced_status
    if errors:
        return 2
    if any(not f[2] for f in floors):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "load":
        return load_cli(argv[1:])
    return common.run_guarded(lambda: main_bench(argv), "the node, relay and load processes")


if __name__ == "__main__":
    sys.exit(main())
