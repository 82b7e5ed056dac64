"""A backlog bigger than memory (issue 17): fill a node's queue with no receiver, kill it, restart it, drain it.

For each case (by default 10,000,000 messages of 128 B and 1,000,000 of 4 KiB; ``--quick`` 500,000 and 50,000),
on the SQLite store (``--store postgresql``: a PostgreSQL server of its own, tests/postgres.py):

1. baseline: bench_node.py's throughput run (one producer, one consumer, a fresh node) of the same size and store:
   the one-node throughput the drain is held to.
2. fill: a fresh ``aiobroker serve`` with ``[limits] max_memory`` (``--max-memory``; 0: unbounded), one queue, no
   receiver; producers send N messages over C conversations (``--conversations``), in batches, several in flight,
   every batch acknowledged (stored). The node's resident size (VmRSS) before and after gives the bytes a stored
   message costs. A node that refuses a batch with ``Overloaded`` ends the fill: what it stored is said and the
   run goes on with it (and fails the floor "all stored").
3. restart: kill -9 the node; start it again on the same data; time from the process's start to serving (a
   client's ``status`` answered) and to the first message received; its resident size then.
4. drain: consumers receive and commit everything, checking every message arrived exactly once and in order per
   conversation (bodies carry the conversation and the number); msg/s from the first receive to the last.

Floors (issue 17): 128 B: at most 120 B resident a stored message (the queue's window included);
restart to serving under 20 s (10,000,000 stored); drain at least 50% of the baseline; every message stored; with
a budget, the resident growth within it.

Exit status: 0 every floor met; 1 a floor failed; 2 the exactly-once check failed or something could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # run as `python -m benchmarks.<name>`
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import backlog_parts as parts  # noqa: E402
import common  # noqa: E402
from backlog_parts import MIB, Acked, DrainChecker, fmt_size  # noqa: E402
from common import LOGS_DIR, LOOPBACK, BenchError, Deadline, Progress, start_process, stop_process  # noqa: E402

BENCH_BACKLOG_PY = Path(__file__).resolve()

QUEUE, SERVICE = "backlog_q", "backlog_target"
QUEUE_INIT, SERVICE_INIT = "backlog_init_q", "backlog_init"
MESSAGE_TYPE = "DEFAULT"

#: the cases of a run: (messages, size)
FULL = ((10_000_000, 128), (1_000_000, 4096))
QUICK = ((500_000, 128), (50_000, 4096))
#: the baseline's messages (bench_node.py's throughput run) per size, full and quick
BASELINE = {128: 200_000, 4096: 50_000}
BASELINE_QUICK = {128: 50_000, 4096: 10_000}
#: ``max_memory`` written for an unbounded node: the core's own "no budget" (core/budget.py's UNBOUNDED)
UNBOUNDED = 1 << 62
#: consumers that receive nothing for this long (while messages are missing) give up, and the run fails
STALL_SECONDS = 15.0


# --- the node's process ---------------------------------------------------------------------------------------


def rss(pid: int) -> int | None:
    """The resident size of a live process, in bytes (VmRSS); None once it has exited (or is a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    found = None
    for line in text.splitlines():
        if line.startswith("State:") and line.split()[1] in ("Z", "X"):
            return None
        if line.startswith("VmRSS:"):
            found = int(line.split()[1]) * 1024
    return found


class Resident:
    """The node's resident size, read every ``every`` calls of :meth:`see` (a batch each): the last reading and
    the largest."""

    __slots__ = ("pid", "every", "calls", "last", "peak")

    def __init__(self, pid: int, every: int = 20) -> None:
        self.pid, self.every, self.calls = pid, every, 0
        self.last = self.peak = rss(pid) or 0

    def see(self) -> None:
        self.calls += 1
        if self.calls % self.every == 0:
            self.read()

    def read(self) -> int:
        now = rss(self.pid)
        if now is not None:
            self.last = now
            self.peak = max(self.peak, now)
        return self.last


def disk_usage(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            pass
    return total


class Node:
    """``aiobroker serve`` on a data directory (or a PostgreSQL database) that outlives its processes."""

    def __init__(self, workdir: Path, store: str, max_memory: int | None) -> None:
        self.workdir = workdir
        self.store = store  # "sqlite", or a PostgreSQL database's URL
        self.data_dir = workdir / "data"
        self.config = workdir / "node.toml"
        budget = UNBOUNDED if not max_memory else max_memory
        self.config.write_text(f"[limits]\nmax_memory = {budget}\n")
        self.port = common.free_port()
        self.proc: Any = None
        self.log = LOGS_DIR / "backlog-node.log"
        self.starts = 0

    @property
    def url(self) -> str:
        return f"tcp://{LOOPBACK}:{self.port}"

    def start(self) -> int:
        """Start the process; returns the time it was started (monotonic ns, the clock every process shares)."""
        self.starts += 1
        self.log = LOGS_DIR / f"backlog-node-{self.starts}.log"
        argv = [sys.executable, "-m", "aiobroker", "serve", "--listen", f"{LOOPBACK}:{self.port}",
                "--store", self.store, "--data-dir", str(self.data_dir), "--durability", "normal", "--http", "off",
                "--config", str(self.config)]
        t0 = time.monotonic_ns()
        self.proc = start_process(argv, log_path=self.log)
        return t0

    def kill(self) -> None:
        """SIGKILL to its pid (a crash: nothing is flushed or closed), and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=30.0)

    def check_alive(self, during: str) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"the node exited (code {code}) during {during}{common._log_hint(self.log)}")

    def restore_line(self) -> str:
        """The node's own start-up line (what it restored, and in how long), or ''."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        for line in lines:
            if "listening on" in line and "restored" in line:
                return line.split("aiobroker.node: ", 1)[-1].strip()
        return ""


# --- the load processes (fill, drain) -------------------------------------------------------------------------


async def connect_when_serving(url: str, deadline: Deadline, pid: int,
                               resident: Resident | None = None) -> tuple[Any, dict[str, Any]]:
    """A client of the node at ``url`` and its first ``status``, once it answers (polled until ``deadline``);
    ``resident`` is read at each try."""
    import aiobroker
    import anyio

    last: BaseException | None = None
    start = time.monotonic()
    next_say = start + 5.0
    for _ in range(100_000):
        now = rss(pid)
        if now is None:
            raise BenchError("the node exited before it served")
        if resident is not None:
            resident.read()
        if time.monotonic() >= next_say:
            next_say += 5.0
            print(f"    .. waiting for the node to serve: {time.monotonic() - start:.0f} s, resident "
                  f"{now / MIB:,.0f} MiB", file=sys.stderr, flush=True)
        try:
            client = await aiobroker.connect(url)
        except (OSError, aiobroker.BrokerError) as exc:
            last = exc
        else:
            try:
                return client, await client.status()
            except BaseException:
                await client.aclose()
                raise
        if deadline.passed:
            break
        await anyio.sleep(0.01)  # polling for the port, under the deadline
    raise BenchError(f"the node did not serve in time (last: {last})")


async def load_fill(args: argparse.Namespace) -> dict[str, Any]:
    import aiobroker
    import anyio

    n, size, pid = args.messages, args.size, args.node_pid
    url = f"tcp://{LOOPBACK}:{args.port}"
    deadline = Deadline(args.max_seconds)
    counts = parts.per_conversation(n, args.conversations)
    acked = Acked(args.conversations)
    state: dict[str, Any] = {"acked": 0, "sent": 0, "refused": None}
    progress = Progress(f"fill {fmt_size(size)}", n, every=5.0)

    client, _ = await connect_when_serving(url, deadline, pid)
    async with client:
        await client.create_queue(QUEUE)
        await client.create_queue(QUEUE_INIT)
        await client.create_service(SERVICE, queue=QUEUE, contracts=[MESSAGE_TYPE])
        await client.create_service(SERVICE_INIT, queue=QUEUE_INIT, contracts=[MESSAGE_TYPE])
        handles = [(await client.begin_dialog(SERVICE_INIT, SERVICE, MESSAGE_TYPE)).handle
                   for _ in range(args.conversations)]
    rss_before = await settled_rss(pid)
    resident = Resident(pid)

    async def produce(p: int) -> None:
        mine = range(p, args.conversations, args.producers)
        async with aiobroker.connect(url) as producer:
            dialogs = {c: producer.dialog(handles[c]) for c in mine}
            window: deque[tuple[Any, int, int, int]] = deque()

            async def settle_oldest() -> None:
                pending, c, first, k = window.popleft()
                try:
                    await pending.wait()
                except aiobroker.Overloaded as exc:
                    if state["refused"] is None:
                        state["refused"] = exc.message
                    return
                acked.add(c, first, k)
                state["acked"] += k
                resident.see()
                progress.tick(state["acked"], f"stored, {rate(state['acked'], t_start):,.0f} msg/s; node resident "
                              f"{resident.last / MIB:,.0f} MiB")

            for c, first, k in parts.fill_batches(counts, args.batch, mine):
                if state["refused"] is not None or deadline.passed:
                    break
                window.append((dialogs[c].start_send_many(
                    [(MESSAGE_TYPE, parts.make_body(size, c, first + i)) for i in range(k)]), c, first, k))
                state["sent"] += k
                if len(window) >= args.window:
                    await settle_oldest()
            while window:
                await settle_oldest()

    t_start = time.monotonic()
    async with anyio.create_task_group() as tg:
        for p in range(args.producers):
            tg.start_soon(produce, p)
    elapsed = time.monotonic() - t_start
    rss_after = await settled_rss(pid)
    async with aiobroker.connect(url) as client:
        status = await client.status()
    Path(args.acked_out).write_text(json.dumps(acked.to_json()))
    return {
        "messages": n, "size": size, "conversations": args.conversations, "producers": args.producers,
        "stored": acked.total, "sent": state["sent"], "refused": state["refused"], "gaps": acked.gaps,
        "timed_out": deadline.passed and acked.total < n and state["refused"] is None,
        "elapsed_s": elapsed, "rate": acked.total / elapsed if elapsed > 0 else 0.0,
        "rss_before": rss_before, "rss_after": rss_after, "peak_rss": max(resident.peak, rss_after),
        "memory": status.get("memory"), "queue": queue_status(status),
        "store": {k: status.get("store", {}).get(k) for k in ("size", "wal_size", "rows_written", "write_seconds")},
    }


def rate(count: int, since: float) -> float:
    elapsed = time.monotonic() - since
    return count / elapsed if elapsed > 0 else 0.0


async def settled_rss(pid: int, max_wait: float = 5.0) -> int:
    """The node's resident size once it stops moving (two readings 0.5 s apart within 1 MiB), at most ``max_wait``
    seconds: the store may still be settling its last batch, the allocator giving pages back."""
    import anyio

    last = rss(pid) or 0
    for _ in range(int(max_wait / 0.5)):
        await anyio.sleep(0.5)  # between two readings of a value that has no event to wait on
        now = rss(pid) or 0
        if abs(now - last) < MIB:
            return now
        last = now
    return last


def queue_status(status: dict[str, Any]) -> dict[str, Any] | None:
    for q in status.get("queues", []):
        if q.get("name") == QUEUE:
            return dict(q)
    return None


async def load_drain(args: argparse.Namespace) -> dict[str, Any]:
    """Started together with the restarted node: waits until it serves, then drains the queue."""
    import aiobroker
    import anyio

    pid, t0 = args.node_pid, args.t0_ns
    url = f"tcp://{LOOPBACK}:{args.port}"
    acked = Acked.from_json(json.loads(Path(args.acked).read_text()))
    checker = DrainChecker(acked)
    deadline = Deadline(args.max_seconds)
    resident = Resident(pid)
    client, status = await connect_when_serving(url, Deadline(args.start_timeout), pid, resident)
    t_serving = time.monotonic_ns()
    rss_serving = resident.read()
    await client.aclose()
    print(f"    .. the node serves {(t_serving - t0) / 1e9:.2f} s after its start, resident "
          f"{(rss_serving or 0) / MIB:,.0f} MiB; draining", file=sys.stderr, flush=True)
    state: dict[str, Any] = {"t_first": None, "t_last": None, "receives": 0, "empty": 0,
                             "last_progress": time.monotonic()}
    problems: list[str] = []
    progress = Progress(f"drain {fmt_size(args.size)}", checker.expected, every=5.0)

    async def consume() -> None:
        async with aiobroker.connect(url) as consumer:
            commits: deque[Any] = deque()
            quiet = 0
            for _ in range(100_000_000):
                if deadline.passed:
                    break
                batch = await consumer.receive(QUEUE, max_messages=args.receive_batch, timeout=0.5)
                if len(batch) == 0:
                    state["empty"] += 1
                    if checker.complete:
                        quiet += 1
                        if quiet >= 2:  # nothing more came: no duplicates after the last one
                            break
                    elif time.monotonic() - state["last_progress"] > STALL_SECONDS:
                        problems.append(f"nothing arrived for {STALL_SECONDS:.0f} s with {checker.missing():,}"
                                        " messages missing")
                        break
                    continue
                now = time.monotonic_ns()
                if state["t_first"] is None:
                    state["t_first"] = now
                state["receives"] += 1
                state["last_progress"] = time.monotonic()
                for m in batch.messages:
                    checker.see(*parts.read_body(m.body))
                if checker.complete and state["t_last"] is None:
                    state["t_last"] = now
                commits.append(batch.start_commit())  # overlaps the next receive, which follows it in order
                while commits and commits[0].done:
                    await commits.popleft().wait()
                resident.see()
                progress.tick(checker.received, f"received, {rate(checker.received, t_first_s()):,.0f} msg/s")
            for pending in commits:
                await pending.wait()

    def t_first_s() -> float:
        return (state["t_first"] or time.monotonic_ns()) / 1e9

    if checker.expected:
        async with anyio.create_task_group() as tg:
            for _ in range(args.consumers):
                tg.start_soon(consume)
    summary = checker.summary()
    if problems:
        summary["exactly_once"] = False
        summary["first_problems"] = problems + summary["first_problems"]
    end = state["t_last"] or time.monotonic_ns()
    elapsed = (end - state["t_first"]) / 1e9 if state["t_first"] else 0.0
    return {
        "restart_s": (t_serving - t0) / 1e9,
        "first_message_s": (state["t_first"] - t0) / 1e9 if state["t_first"] else None,
        "rss_serving": rss_serving, "memory_serving": status.get("memory"), "queue_serving": queue_status(status),
        "received": checker.received, "receives": state["receives"], "empty_receives": state["empty"],
        "elapsed_s": elapsed, "rate": checker.received / elapsed if elapsed > 0 else 0.0,
        "peak_rss": resident.peak, "rss_end": resident.read(), "consumers": args.consumers,
        "timed_out": deadline.passed and not checker.complete, "check": summary,
    }


def load_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench_backlog.py load", description="A load process (internal).")
    p.add_argument("--mode", choices=("fill", "drain"), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--node-pid", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--messages", type=int, default=0)
    p.add_argument("--conversations", type=int, default=1000)
    p.add_argument("--producers", type=int, default=2)
    p.add_argument("--consumers", type=int, default=2)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--receive-batch", type=int, default=1000)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--acked-out", help="fill: where to write what the node acknowledged (JSON)")
    p.add_argument("--acked", help="drain: what the node acknowledged (the fill's --acked-out)")
    p.add_argument("--t0-ns", type=int, default=0, help="drain: when the node's process was started")
    p.add_argument("--start-timeout", type=float, default=120.0)
    p.add_argument("--max-seconds", type=float, default=1800.0)
    args = p.parse_args(argv)
    fn = load_fill if args.mode == "fill" else load_drain
    return common.worker_main(f"backlog-{args.mode}", lambda: common.run_async(fn, args))


# --- orchestration --------------------------------------------------------------------------------------------


def run_case(args: argparse.Namespace, case: dict[str, Any], store: str, baseline_n: int) -> None:
    """One size (``case["size"]``, ``case["messages"]``): the baseline, then fill, kill -9, restart and drain one
    node. The figures go into ``case`` as they come, so a phase that fails leaves those before it."""
    import bench_node

    n, size = case["messages"], case["size"]
    label = f"{fmt_size(size)} x {n:,}"

    print(f"  {label}: baseline (bench_node.py throughput, {baseline_n:,} messages, a fresh node)", flush=True)
    base = bench_node.run_node_case(
        mode="throughput", store=args.store, size=size, durability="normal", messages=baseline_n, batch=1000,
        receive_batch=1000, rate=5000.0, duration=1.0, warmup=0.3, max_seconds=args.max_seconds,
        start_timeout=args.start_timeout, pin=False, wait_idle=0.0)
    case["baseline"] = base
    case["baseline_rate"] = base["throughput"]
    busy = common.CpuMeter.contention(base["cpu"])
    print(f"  {label}: baseline {base['throughput']:,.0f} msg/s (others' cores {busy:.2f})", flush=True)
    if not base["check"]["exactly_once"]:
        raise BenchError(f"the baseline's exactly-once check failed: {base['check']['first_problems'][:3]}")

    workdir = Path(tempfile.mkdtemp(prefix="aiobroker-backlog-", dir=args.data_root))
    node = Node(workdir, store, args.max_memory)
    try:
        node.start()
        common.wait_for_port(node.port, proc=node.proc, what="aiobroker node", log_path=node.log,
                             timeout=args.start_timeout)
        acked_path = workdir / "acked.json"
        budget = f"max_memory {args.max_memory / MIB:,.0f} MiB" if args.max_memory else "no memory budget"
        print(f"  {label}: fill ({args.conversations:,} conversations, {args.producers} producers, {budget})",
              flush=True)
        meter = common.CpuMeter([node.proc.pid])
        fill = common.run_worker(
            [sys.executable, str(BENCH_BACKLOG_PY), "load", "--mode", "fill", "--port", str(node.port),
             "--node-pid", str(node.proc.pid), "--size", str(size), "--messages", str(n),
             "--conversations", str(args.conversations), "--producers", str(args.producers),
             "--batch", str(args.batch), "--window", str(args.window), "--acked-out", str(acked_path),
             "--max-seconds", str(args.max_seconds)],
            timeout=args.max_seconds + 120, what="the fill")
        fill["cpu"] = meter.stop()
        node.check_alive("the fill")
        case["fill"] = fill
        stored = case["stored"] = fill["stored"]
        case["refused"] = fill["refused"]
        growth = fill["rss_after"] - fill["rss_before"]
        # nothing left out: what the node keeps in memory of a backlog (each queue's window, bodies and all) is in
        # the figure; status' memory says how much of it that is (held_bytes) and how many are in the store only
        case["rss_per_message"] = growth / stored if stored else None
        case["peak_growth"] = fill["peak_rss"] - fill["rss_before"]
        case["disk_bytes"] = disk_usage(node.data_dir) if args.store == "sqlite" else None  # PostgreSQL's: its own
        page_cache = sqlite_page_cache() if args.store == "sqlite" else None
        # the page cache holds pages of the database file: never more than the file has
        case["page_cache_bytes"] = min(page_cache, case["disk_bytes"]) if page_cache and case["disk_bytes"] else None
        print(f"  {label}: {describe_fill(fill, case)}", flush=True)
        if fill["timed_out"]:
            raise BenchError(f"the fill did not finish within --max-seconds {args.max_seconds:.0f}"
                             f" ({stored:,} of {n:,} stored)")

        print(f"  {label}: kill -9 the node (pid {node.proc.pid}), start it again on the same data", flush=True)
        node.kill()
        t0 = node.start()
        meter = common.CpuMeter([node.proc.pid])
        drain = common.run_worker(
            [sys.executable, str(BENCH_BACKLOG_PY), "load", "--mode", "drain", "--port", str(node.port),
             "--node-pid", str(node.proc.pid), "--size", str(size), "--acked", str(acked_path),
             "--consumers", str(args.consumers), "--receive-batch", str(args.receive_batch),
             "--t0-ns", str(t0), "--start-timeout", str(args.start_timeout), "--max-seconds", str(args.max_seconds)],
            timeout=args.start_timeout + args.max_seconds + 120, what="the restart and drain")
        drain["cpu"] = meter.stop()
        node.check_alive("the drain")
        drain["node_says"] = node.restore_line()
        case["drain"] = drain
        case["restart_s"] = drain["restart_s"]
        case["rss_restart_per_message"] = ((drain["rss_serving"] - fill["rss_before"]) / stored
                                           if stored and drain["rss_serving"] else None)
        case["peak_growth"] = max(case["peak_growth"], (drain["peak_rss"] or 0) - fill["rss_before"])
        case["drain_rate"] = drain["rate"]
        print(f"  {label}: {describe_restart(drain, case)}", flush=True)
        print(f"  {label}: {describe_drain(drain, case)}", flush=True)
        if drain["timed_out"]:
            raise BenchError(f"the drain did not finish within --max-seconds {args.max_seconds:.0f}")
    finally:
        node.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def sqlite_page_cache() -> int | None:
    """The SQLite store's page cache bound in bytes (its ``cache_size``), or None if the store no longer says."""
    try:
        from aiobroker.store import sqlite
    except ImportError:
        return None
    kib = getattr(sqlite, "_CACHE_KIB", None)
    return int(kib) * 1024 if isinstance(kib, int) else None


def describe_fill(fill: dict[str, Any], case: dict[str, Any]) -> str:
    stored = fill["stored"]
    text = (f"stored {stored:,} in {fill['elapsed_s']:.1f} s ({fill['rate']:,.0f} msg/s); resident "
            f"{fill['rss_before'] / MIB:,.0f} -> {fill['rss_after'] / MIB:,.0f} MiB (peak {fill['peak_rss'] / MIB:,.0f})")
    if case["rss_per_message"] is not None:
        text += f" = {case['rss_per_message']:,.0f} B a stored message"
    if case["disk_bytes"] is not None:
        text += f"; on disk {case['disk_bytes'] / MIB:,.0f} MiB"
    if stored and case.get("page_cache_bytes"):
        memory = fill.get("memory") or {}
        text += (f" (SQLite's page cache, at most {case['page_cache_bytes'] / MIB:,.0f} MiB, is at most "
                 f"{case['page_cache_bytes'] / stored:,.1f} B of it")
        if "in_store_only" in memory:
            text += (f"; the node holds {memory.get('held_bytes', 0) / MIB:,.1f} MiB for messages in memory, its"
                     f" queues' windows, and {memory['in_store_only']:,} in the store only")
        text += ")"
    if stored and fill.get("cpu"):
        text += (f"; node cpu {fill['cpu']['server_cpu_s'] / stored * 1e6:.1f} us a message, others' cores "
                 f"{common.CpuMeter.contention(fill['cpu']):.2f}")
    if fill["refused"]:
        text += f"\n    *** REFUSED after {stored:,} of {fill['messages']:,} stored: {fill['refused']} ***"
    return text


def describe_restart(drain: dict[str, Any], case: dict[str, Any]) -> str:
    text = f"restart to serving {drain['restart_s']:.2f} s"
    if drain["first_message_s"] is not None:
        text += f", to the first message {drain['first_message_s']:.2f} s"
    if drain["rss_serving"]:
        text += f"; resident {drain['rss_serving'] / MIB:,.0f} MiB"
        if case["rss_restart_per_message"] is not None:
            text += f" = {case['rss_restart_per_message']:,.0f} B a stored message"
        text += f" (the most while loading and draining: {drain['peak_rss'] / MIB:,.0f} MiB)"
    if drain.get("node_says"):
        text += f"\n    the node: {drain['node_says']}"
    return text


def describe_drain(drain: dict[str, Any], case: dict[str, Any]) -> str:
    check = drain["check"]
    ratio = drain["rate"] / case["baseline_rate"] if case.get("baseline_rate") else float("nan")
    text = (f"drained {drain['received']:,} in {drain['elapsed_s']:.1f} s ({drain['rate']:,.0f} msg/s, {ratio:.0%} of"
            f" the baseline; {drain['consumers']} consumers; others' cores "
            f"{common.CpuMeter.contention(drain.get('cpu', {})):.2f}); exactly once and in order: "
            f"{'ok' if check['exactly_once'] else 'FAILED'}")
    if not check["exactly_once"]:
        text += f"\n    *** {'; '.join(check['first_problems'][:3]) or 'messages missing'} ***"
    return text


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_backlog.py",
        description="A backlog bigger than memory (issue 17): fill one node's queue with no receiver, kill -9 it, "
        "restart it on the same data, drain it; resident memory per stored message, restart time, drain throughput "
        "against bench_node.py's one-node throughput in the same run, and the node's memory budget.",
        epilog="Floors: 128 B: <= 120 B resident a stored message; restart to serving < 20 s; drain >= 50% of the "
        "one-node throughput; all N stored; with a budget, resident growth within it. Exit status 0 = all met, "
        "1 = a floor failed, 2 = exactly-once failed or could not run. Results: benchmarks/results/backlog-<time>.json",
    )
    p.add_argument("--quick", action="store_true", help="500,000 x 128 B and 50,000 x 4 KiB (under a minute)")
    p.add_argument("--messages", type=int, help="messages to store in each case (default: 10,000,000 for 128 B and "
                   "1,000,000 for 4 KiB; --quick 500,000 and 50,000)")
    p.add_argument("--size", help="only this body size, in bytes (128, 4096 or 4k; at least 16; its count is the "
                   "128 B case's up to 128 B, the 4 KiB case's above); default both")
    p.add_argument("--conversations", type=int, default=1000, help="conversations the messages are spread over "
                   "(default 1,000)")
    p.add_argument("--max-memory", default="512MiB", help="the node's [limits] max_memory, bytes or N MiB/GiB; "
                   "0 or 'unbounded': no budget (default 512MiB)")
    p.add_argument("--store", default="sqlite", choices=("sqlite", "postgresql"),
                   help="sqlite (default), or postgresql: a PostgreSQL server of its own, started for the run")
    p.add_argument("--producers", type=int, default=2, help="producer connections (default 2)")
    p.add_argument("--consumers", type=int, default=2, help="consumer connections (default 2)")
    p.add_argument("--batch", type=int, default=1000, help="messages per send batch (default 1000)")
    p.add_argument("--window", type=int, default=4, help="send batches in flight per producer (default 4)")
    p.add_argument("--receive-batch", type=int, default=1000, help="max_messages per receive (default 1000)")
    p.add_argument("--baseline-messages", type=int, help="messages of the baseline run (default 200,000 at 128 B, "
                   "50,000 at 4 KiB; --quick 50,000 and 10,000)")
    p.add_argument("--data-root", help="where the node's data directory is made (default: the system's temp dir)")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds for a node to serve (default 120)")
    p.add_argument("--max-seconds", type=float, default=1800.0, help="bound on each phase: fill, drain (default "
                   "1800)")
    args = p.parse_args(argv)
    try:
        args.max_memory = parse_memory(args.max_memory)
        sizes = common.parse_sizes(args.size) if args.size else None
    except ValueError as exc:
        p.error(str(exc))
    if sizes is not None and len(sizes) != 1:
        p.error("--size takes one size (run again for another)")
    for name in ("messages", "conversations", "producers", "consumers", "batch", "window", "receive_batch",
                 "baseline_messages"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_seconds <= 0 or args.start_timeout <= 0:
        p.error("--max-seconds and --start-timeout must be positive")
    if args.data_root and not Path(args.data_root).is_dir():
        p.error(f"--data-root {args.data_root}: no such directory")
    args.cases = plan(args.quick, args.messages, sizes[0] if sizes else None)
    fewest = min(n for n, _ in args.cases)
    if args.conversations > fewest:
        p.error(f"--conversations {args.conversations:,} is more than the {fewest:,} messages of a case")
    return args


def parse_memory(text: str) -> int | None:
    """``--max-memory``: bytes, or N KiB/MiB/GiB; 0 or 'unbounded' for none (None)."""
    t = text.strip().lower().replace(" ", "")
    if t in ("0", "unbounded", "none"):
        return None
    units = {"kib": 1024, "mib": MIB, "gib": 1024 * MIB, "k": 1024, "m": MIB, "g": 1024 * MIB, "b": 1}
    for suffix, mult in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if t.endswith(suffix):
            number, scale = t[: -len(suffix)], mult
            break
    else:
        number, scale = t, 1
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise ValueError(f"--max-memory {text!r}: give bytes or N MiB/GiB (512MiB), or 0 for no budget") from None
    if value < MIB:
        raise ValueError(f"--max-memory {text!r} is under the node's minimum of 1 MiB (0: no budget)")
    return value


def plan(quick: bool, messages: int | None, size: int | None) -> list[tuple[int, int]]:
    """The cases (messages, size) of a run."""
    cases = QUICK if quick else FULL
    if size is not None:
        default = next((m for m, s in cases if s == size), cases[-1][0] if size > 128 else cases[0][0])
        cases = ((default, size),)
    return [(messages or m, s) for m, s in cases]


def main_bench(argv: list[str]) -> int:
    args = parse_args(argv)
    import bench_node

    why = bench_node.check_node_available()
    if why:
        print(f"error: the backlog benchmark cannot run: {why}", file=sys.stderr)
        return 2
    pg = None
    if args.store == "postgresql":
        pg = bench_node.POSTGRES = bench_node.start_postgres()
    budget = f"max_memory {args.max_memory / MIB:,.0f} MiB" if args.max_memory else "no memory budget (unbounded)"
    print(f"bench_backlog: {', '.join(f'{n:,} x {fmt_size(s)}' for n, s in args.cases)}; store {args.store}; "
          f"{budget}; {args.conversations:,} conversations; machine busy before: "
          f"{common.machine_busy_now() or 0.0:.2f} cores", flush=True)
    cases: list[dict[str, Any]] = []
    errors: list[str] = []
    started = time.monotonic()
    try:
        for n, size in args.cases:
            defaults = BASELINE_QUICK if args.quick else BASELINE
            baseline_n = args.baseline_messages or defaults.get(size, 50_000)
            store = bench_node.store_argument(args.store)
            case: dict[str, Any] = {"messages": n, "size": size, "store": args.store}
            try:
                run_case(args, case, store, baseline_n)
            except BenchError as exc:
                print(f"  {fmt_size(size)} x {n:,}: ERROR: {exc}", flush=True)
                errors.append(f"{fmt_size(size)}: {exc}")
                case["error"] = str(exc)
            cases.append(case)
    finally:
        if pg is not None:
            pg.stop()
    print(f"\n(the run took {time.monotonic() - started:.0f} s)")
    return finish(args, cases, errors)


def finish(args: argparse.Namespace, cases: list[dict[str, Any]], errors: list[str]) -> int:
    rows = []
    all_floors: list[parts.Floor] = []
    once_failed = busy = False
    for case in cases:
        drain = case.get("drain") or {}
        fill = case.get("fill") or {}
        once = drain.get("check", {}).get("exactly_once")
        once_failed |= once is False
        all_floors += parts.floors(case, max_memory=args.max_memory)
        others = max(common.CpuMeter.contention(phase.get("cpu", {})) for phase in (case.get("baseline") or {}, fill,
                                                                                     drain))
        rows.append([
            fmt_size(case["size"]), f"{case['messages']:,}", f"{case.get('stored', 0):,}",
            f"{fill['rate']:,.0f}" if fill else "-",
            f"{case['rss_per_message']:,.0f}" if case.get("rss_per_message") is not None else "-",
            f"{case['restart_s']:.2f}" if case.get("restart_s") is not None else "-",
            f"{case['rss_restart_per_message']:,.0f}" if case.get("rss_restart_per_message") is not None else "-",
            f"{case['drain_rate']:,.0f}" if case.get("drain_rate") else "-",
            f"{case['baseline_rate']:,.0f}" if case.get("baseline_rate") else "-",
            {True: "ok", False: "FAILED", None: "-"}[once],
            f"{others:.2f}" + (" BUSY" if others > common.BUSY_THRESHOLD else ""),
        ])
        busy |= others > common.BUSY_THRESHOLD
    print()
    common.print_table(["body", "messages", "stored", "fill msg/s", "B/msg resident", "restart s",
                        "B/msg restarted", "drain msg/s", "baseline msg/s", "exactly-once", "others' cores"], rows)
    if busy:
        print("note: other processes took CPU during the cases marked BUSY: their rates are not reliable (the "
              "memory figures are)")
    print("\nfloors" + (" (a --quick run: indicative only)" if args.quick else "") + ":")
    for f in all_floors:
        print(f"  {'PASS' if f.passed else 'FAIL'}  {f.what}: {f.measured}")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    settings = {k: v for k, v in vars(args).items() if k != "cases"}
    path = common.write_results("backlog", {
        "settings": settings,
        "floors": [{"floor": f.what, "measured": f.measured, "passed": f.passed} for f in all_floors],
        "errors": errors,
        "cases": cases,
    })
    print(f"\nresults: {common._rel(path)}")
    if once_failed:
        print("\n*** EXACTLY-ONCE CHECK FAILED: a message was lost, duplicated or reordered (see above) ***",
              file=sys.stderr)
        return 2
    if errors:
        return 2
    return 1 if any(not f.passed for f in all_floors) else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "load":
        return load_cli(argv[1:])
    return common.run_guarded(lambda: main_bench(argv), "the node and load processes")


if __name__ == "__main__":
    sys.exit(main())
