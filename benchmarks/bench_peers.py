"""aiobroker against its peers: the same workload through aiobroker, NATS core, NATS JetStream and mosquitto.

One producer process and one consumer process (Python on uvloop, each system's usual client: aiobroker's own,
nats-py, and a minimal MQTT 3.1.1 client for mosquitto) and one server process, all on 127.0.0.1, fresh for every
run. For each body size (128 B and 4 KiB):

* throughput: the producer sends for ``--seconds`` (or ``--messages``) as fast as its system lets it, in batches
  of 1,000, then an end marker carrying the count; msg/s = messages / (first send -> last message received).
* latency at a fixed offered rate (5,000 msg/s: each 1 ms tick sends what is due): p50/p99 of receive time - send
  time, and p99 counted from when each message was due (a producer held back is latency too).

Every run checks that sequence numbers 0..N-1 arrive exactly once and in order. Systems run in interleaved rounds
(relay, memory, sqlite, nats, jetstream, mosquitto, then again), and the median of the rounds is reported, with
ratios to NATS core and to the bare relay (benchmarks/relay.py, the Python limit). What each system promises is
printed beside its figures: :data:`SYSTEMS`.

The script installs what it needs: Debian's ``nats-server`` and ``mosquitto`` (apt-get, as root; their services
are not started) and ``nats-py`` (pip, into this interpreter's environment: the project's ``bench`` extra).
Every server it starts it stops by pid.

Exit status: 0 all ran; 2 an exactly-once check failed or a run could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # run as `python -m benchmarks.<name>`
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import (  # noqa: E402
    LOGS_DIR,
    LOOPBACK,
    BenchError,
    SequenceChecker,
    body_send_ns,
    body_seq,
    fmt_ms,
    fmt_rate,
    fmt_size,
    make_body,
    median,
)

BENCH_PEERS_PY = Path(__file__).resolve()
RELAY_PY = BENCH_PEERS_PY.parent / "relay.py"

#: the end marker: a last message whose sequence number is END_FLAG + the number of messages sent before it
END_FLAG = 1 << 62
BATCH = 1000
#: a consumer that sees nothing new for this long (after its first message) gives up
STALL_SECONDS = 20.0
APT_PACKAGES = ("nats-server", "mosquitto")
PIP_PACKAGES = ("nats-py>=2.6",)


@dataclasses.dataclass(frozen=True)
class System:
    key: str
    label: str
    stored: str  # where a message is when the producer is told (or, when it is told nothing, once sent)
    confirmed: str  # what the producer is told
    acked: str  # what the consumer tells the system
    tag: str  # the three in a few words, under the system's name in the chart


SYSTEMS: tuple[System, ...] = (
    System("relay", "bare relay (Python limit)", "not stored", "not confirmed", "not acknowledged",
           "nothing stored or confirmed"),
    System("memory", "aiobroker, memory store", "in the node's memory", "confirmed when queued",
           "commits per batch (answered)", "memory, confirmed, committed"),
    System("sqlite", "aiobroker, SQLite (normal)", "on disk, survives a process crash", "confirmed when stored",
           "commits per batch (answered)", "disk, confirmed, committed"),
    System("nats", "NATS core (nats-py)", "not stored (at most once)", "not confirmed", "not acknowledged",
           "nothing stored or confirmed"),
    System("jetstream", "NATS JetStream, file", "on disk, survives a process crash (fsync every 2 min)",
           "confirmed when stored (PubAck)", "acks per batch (not answered)", "disk, confirmed, acked"),
    System("mosquitto", "mosquitto QoS 1", "in the broker's memory", "confirmed (PUBACK)",
           "acks each message (PUBACK)", "memory, confirmed, acked"),
)
BY_KEY = {s.key: s for s in SYSTEMS}


# --- the worker processes: one producer, one consumer ---------------------------------------------------------------


def end_body(size: int, count: int) -> bytes:
    return make_body(size, END_FLAG + count)


async def produce(args: argparse.Namespace) -> dict[str, Any]:
    import peers_clients

    producer = peers_clients.CLIENTS[args.system][0](args.port, args.size)
    await producer.open()
    size = args.size
    out: dict[str, Any] = {}
    try:
        if args.mode == "throughput":
            end = time.monotonic() + args.seconds
            sent, t_first = 0, None
            for _ in range(args.messages // BATCH + 2):
                if sent >= args.messages or time.monotonic() >= end:
                    break
                k = min(BATCH, args.messages - sent)
                now = time.monotonic_ns()
                t_first = t_first or now
                await producer.send([make_body(size, sent + i, now) for i in range(k)])
                sent += k
            out.update(t_first=t_first, sent=sent)
        else:
            async def send_batch(first: int, count: int) -> None:
                await producer.send([make_body(size, first + i) for i in range(count)])

            total = int(args.rate * (args.warmup + args.duration))
            pace = await common.paced_send(send_batch, rate=args.rate, total=total,
                                           max_seconds=args.warmup + args.duration + 5.0)
            sent = pace["sent"]
            out.update(pacing=pace, sent=sent)
        await producer.send([end_body(size, sent)])
        await producer.finish()
        out["t_confirmed"] = time.monotonic_ns()
    finally:
        await producer.close()
    return out


async def consume(args: argparse.Namespace) -> dict[str, Any]:
    import anyio

    import peers_clients

    consumer = peers_clients.CLIENTS[args.system][1](args.port, args.size)
    await consumer.open()
    cpu_at_ready = time.process_time()
    print("READY", flush=True)  # the orchestrator starts the producer now
    checker = SequenceChecker(END_FLAG)
    latency = args.mode == "latency"
    samples: list[tuple[int, int, int]] = []
    state: dict[str, Any] = {"t_last": None, "end": False, "progress_at": time.monotonic()}
    progress = common.Progress(f"{args.system} {fmt_size(args.size)} {args.mode}: received")

    def on_bodies(bodies: list[bytes]) -> bool:
        now = time.monotonic_ns()
        for body in bodies:
            seq = body_seq(body)
            if seq >= END_FLAG:
                checker.n = seq - END_FLAG
                state["end"] = True
                continue
            checker.see(seq)
            if latency:
                samples.append((seq, body_send_ns(body), now))
        if len(bodies) > 1 or not state["end"]:
            state["t_last"] = now
        state["progress_at"] = time.monotonic()
        progress.tick(checker.expected)
        return bool(state["end"])

    async def watchdog(scope: anyio.CancelScope) -> None:
        for _ in range(int(args.max_seconds) + 10):
            await anyio.sleep(1.0)
            if checker.expected and time.monotonic() - state["progress_at"] > STALL_SECONDS:
                state["stalled"] = True
                scope.cancel()
                return

    try:
        with anyio.move_on_after(args.max_seconds) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watchdog, tg.cancel_scope)
                await consumer.run(on_bodies)
                tg.cancel_scope.cancel()
    finally:
        await consumer.close()
    if args.samples_out:
        Path(args.samples_out).write_text(json.dumps(samples))
    summary = checker.summary()
    if not state["end"]:
        summary["exactly_once"] = False
        why = "stalled" if state.get("stalled") else "timed out"
        summary["first_problems"].insert(0, f"{why} before the end marker ({checker.expected:,} received)")
    return {"t_last": state["t_last"], "received": checker.expected, "timed_out": scope.cancelled_caught,
            "check": summary, "cpu_at_ready": cpu_at_ready}


def worker_cli(role: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"bench_peers.py {role}", description=f"The {role} of one run (internal).")
    p.add_argument("--system", choices=sorted(BY_KEY), required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=("throughput", "latency"), required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--messages", type=int, default=2_000_000)
    p.add_argument("--rate", type=float, default=5000.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--retry-busy", type=int, default=0, metavar="K", help=common.RETRY_BUSY_HELP)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--samples-out")
    args = p.parse_args(argv)
    fn = produce if role == "produce" else consume
    return common.worker_main(f"peers-{role}-{args.system}", lambda: common.run_async(fn, args))


# --- installing what the peers need ---------------------------------------------------------------------------------


def find_binary(name: str) -> str | None:
    """A server binary on PATH or in Debian's sbin directories (not on a normal user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def _pids_named(name: str) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


def ensure_installed(systems: list[str], say: Any) -> None:
    """Install the Debian packages and the Python client the chosen systems need; one-line error if it cannot."""
    need_apt = [pkg for pkg, key in (("nats-server", "nats"), ("nats-server", "jetstream"), ("mosquitto", "mosquitto"))
                if any(s == key for s in systems) and find_binary(pkg) is None]
    need_apt = sorted(set(need_apt))
    if need_apt:
        if os.geteuid() != 0:
            raise BenchError(f"{' and '.join(need_apt)} not installed and this is not root: run "
                             f"`sudo apt-get install {' '.join(need_apt)}`, or leave them out with --systems")
        say(f"installing {', '.join(need_apt)} (apt-get; their system services are not started)")
        apt_install(need_apt)
    if any(s in ("nats", "jetstream") for s in systems):
        try:
            import nats  # noqa: F401
        except ImportError:
            say(f"installing {', '.join(PIP_PACKAGES)} into {sys.prefix} (pip)")
            cmd = [sys.executable, "-m", "pip", "install", "--quiet", *PIP_PACKAGES]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
            if done.returncode != 0:
                raise BenchError(f"pip could not install {' '.join(PIP_PACKAGES)}: "
                                 f"{(done.stderr.strip().splitlines() or ['?'])[-1]}") from None


def apt_install(packages: list[str]) -> None:
    """apt-get install with the packages' services kept from starting (a policy-rc.d that forbids it, unless one is
    there already); any server process that still appeared during the install is stopped by its pid."""
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    before = {name: _pids_named(name) for name in ("mosquitto", "nats-server")}
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    try:
        if own_policy:
            policy.write_text("#!/bin/sh\n# bench_peers.py: no service starts during its install\nexit 101\n")
            policy.chmod(0o755)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)
        if done.returncode != 0:  # the package lists may be missing or stale
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=900, env=env, check=False)
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    for name, pids in before.items():
        for pid in _pids_named(name) - pids:
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
    if done.returncode != 0:
        raise BenchError(f"apt-get install {' '.join(packages)} failed: "
                         f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")


# --- servers --------------------------------------------------------------------------------------------------------

MOSQUITTO_CONF = """\
# bench_peers.py: one listener on loopback, nothing written to disk
listener {port} 127.0.0.1
allow_anonymous true
persistence false
# QoS 1 messages on their way to a subscriber: 1,000 unacknowledged at once (default 20), and no cap on the
# queue behind them (default 1,000: above it, mosquitto drops QoS 1 messages)
max_inflight_messages 1000
max_queued_messages 0
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
"""


def server_argv(system: str, port: int, workdir: Path) -> list[str]:
    if system == "relay":
        return [sys.executable, str(RELAY_PY), "serve", "--port", str(port), "--max-seconds", "900"]
    if system in ("memory", "sqlite"):
        return [sys.executable, "-m", "aiobroker", "serve", "--listen", f"{LOOPBACK}:{port}", "--store", system,
                "--data-dir", str(workdir), "--durability", "normal", "--http", "off"]
    if system in ("nats", "jetstream"):
        argv = [find_binary("nats-server") or "nats-server", "-a", LOOPBACK, "-p", str(port)]
        return argv + (["-js", "-sd", str(workdir)] if system == "jetstream" else [])
    if system == "mosquitto":
        conf = workdir / "mosquitto.conf"
        conf.write_text(MOSQUITTO_CONF.format(port=port))
        return [find_binary("mosquitto") or "mosquitto", "-c", str(conf)]
    raise BenchError(f"unknown system {system!r}")


class Reader(threading.Thread):
    """Reads a worker's stdout lines into a queue, so the orchestrator can wait for READY with a deadline."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: queue.Queue[str | None] = queue.Queue()

    def run(self) -> None:
        for raw in self.stream:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, want: str, timeout: float) -> bool:
        deadline = common.Deadline(timeout)
        for _ in range(100_000):
            try:
                line = self.lines.get(timeout=max(0.01, deadline.left()))
            except queue.Empty:
                return False
            if line is None:
                return False
            if line == want:
                return True
        return False

    def result(self, proc: subprocess.Popen[bytes], timeout: float, what: str) -> dict[str, Any]:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            common.stop_process(proc)
            raise BenchError(f"{what} did not finish within {timeout:.0f} s (stopped it)") from None
        self.join(timeout=10)
        found: dict[str, Any] | None = None
        for _ in range(1_000_000):
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line and line.startswith(common.RESULT_PREFIX):
                found = json.loads(line[len(common.RESULT_PREFIX):])
        if found is None:
            raise BenchError(f"{what} exited with code {proc.returncode} without a result")
        if "error" in found:
            raise BenchError(f"{what}: {found['error']}")
        return found


def run_case(system: str, mode: str, size: int, opts: argparse.Namespace) -> dict[str, Any]:
    """A fresh server; the consumer, subscribed; the producer; both to the end; everything stopped by pid."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-peers-{system}-"))
    samples_path = workdir / "samples.json"
    try:
        made, got, cpu_used, pauses_seen = _run_processes(system, mode, size, opts, workdir, samples_path)
        raw = json.loads(samples_path.read_text()) if mode == "latency" and samples_path.exists() else []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result: dict[str, Any] = {"system": system, "mode": mode, "size": size, "sent": made["sent"],
                              "received": got["received"], "check": got["check"], "cpu": cpu_used,
                              "server_us_per_msg": cpu_used["server_cpu_s"] / max(1, got["received"]) * 1e6}
    result["check"]["exactly_once"] = bool(got["check"]["exactly_once"] and got["received"] == made["sent"])
    if mode == "throughput":
        elapsed = (got["t_last"] or 0) - (made["t_first"] or 0)
        result["elapsed_s"] = elapsed / 1e9
        result["throughput"] = common.throughput(got["received"], elapsed)
        return result
    import pauses

    samples = [(int(a), int(b), int(c)) for a, b, c in raw]
    result["pacing"] = made["pacing"]
    result.update(common.latency_report(samples, start_ns=made["pacing"]["start_ns"], warmup=opts.warmup,
                                        rate=opts.rate))
    if samples:
        seen = pauses.summarize(pauses_seen, samples[0][1], samples[-1][2], floor_ms=1.0)
        result["pauses"] = seen
        result["disturbed"] = seen["total_ms"] / 1e3 > common.DISTURBED_SHARE * seen["window_s"]
    return result


def _run_processes(system: str, mode: str, size: int, opts: argparse.Namespace, workdir: Path,
                   samples_path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    import pauses

    port = common.free_port()
    log = LOGS_DIR / f"peers-{system}.log"
    server = common.start_process(server_argv(system, port, workdir), log_path=log)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        common.wait_for_port(port, proc=server, what=f"{system} server", log_path=log)
        worker = [sys.executable, str(BENCH_PEERS_PY)]
        shared = ["--system", system, "--port", str(port), "--mode", mode, "--size", str(size), "--seconds",
                  str(opts.seconds), "--messages", str(opts.messages), "--rate", str(opts.rate), "--duration",
                  str(opts.duration), "--warmup", str(opts.warmup), "--max-seconds", str(opts.max_seconds)]
        if opts.wait_idle:
            common.wait_until_quiet(opts.wait_idle, say=lambda m: print(m, file=sys.stderr, flush=True))
        consumer = common.start_process([*worker, "consume", *shared, "--samples-out", str(samples_path)],
                                        stdout=subprocess.PIPE)
        procs.append(consumer)
        creader = Reader(consumer.stdout)
        creader.start()
        if not creader.wait_for("READY", 30.0):
            if consumer.poll() is not None:  # it failed: its one-line error, or its exit code
                creader.result(consumer, 5.0, f"{system} consumer")
            raise BenchError(f"the {system} consumer did not get ready within 30 s")
        # the platform's own pauses, measured beside a latency run (benchmarks/pauses.py)
        meter = pauses.PauseMeter(max_seconds=opts.max_seconds + 60) if mode == "latency" else None
        with meter if meter is not None else contextlib.nullcontext():
            cpu = common.CpuMeter([server.pid])
            producer = common.start_process([*worker, "produce", *shared], stdout=subprocess.PIPE)
            procs.append(producer)
            preader = Reader(producer.stdout)
            preader.start()
            made = preader.result(producer, opts.max_seconds + 60, f"{system} producer")
            got = creader.result(consumer, opts.max_seconds + 60, f"{system} consumer")
            cpu_used = cpu.stop()
        # the consumer's start-up (imports, subscribing) was before the meter started: not the run's load
        before = float(got.get("cpu_at_ready", 0.0))
        cpu_used["load_cpu_s"] -= before
        if "others_cpu_s" in cpu_used:
            cpu_used["others_cpu_s"] += before
            cpu_used["others_cores"] = cpu_used["others_cpu_s"] / cpu_used["wall_s"]
        if server.poll() is not None:
            raise BenchError(f"the {system} server exited with code {server.returncode} during the run"
                             f"{common._log_hint(log)}")
        return made, got, cpu_used, (meter.result if meter is not None else {})
    finally:
        for proc in procs:
            common.stop_process(proc)
        common.stop_process(server)


# --- figures: medians, ratios, the table, the chart -----------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """Per system and size: median msg/s and p99s over the rounds, and whether every run was exactly once."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        case = out.setdefault(run["system"], {}).setdefault(run["size"], {"thr": [], "p50": [], "p99": [],
                                                                          "p99_due": [], "cpu": [],
                                                                          "exactly_once": True, "busy": 0.0})
        case["exactly_once"] &= bool(run["check"]["exactly_once"])
        case["busy"] = max(case["busy"], common.CpuMeter.contention(run.get("cpu", {})))
        if run["mode"] == "throughput":
            case["thr"].append(run["throughput"])
            case["cpu"].append(run["server_us_per_msg"])
        else:
            case["p50"].append(run["latency"]["p50_ms"])
            case["p99"].append(run["latency"]["p99_ms"])
            case["p99_due"].append(run["from_schedule"]["p99_ms"])
    for per_size in out.values():
        for case in per_size.values():
            for key in ("thr", "p50", "p99", "p99_due", "cpu"):
                case[key] = median(case[key]) if case[key] else None
    return out


def ratio(value: float | None, base: float | None) -> str:
    if not value or not base or value != value or base != base:
        return "-"
    return f"{value / base:.2f}x"


def short_rate(x: float | None) -> str:
    """128,400 -> 128k; 9,870 -> 9.87k: the table's compact msg/s."""
    if x is None or x != x:
        return "-"
    if x >= 100_000:
        return f"{x / 1000:.0f}k"
    if x >= 1000:
        return f"{x / 1000:.1f}k"
    return f"{x:.0f}"


HEADERS = ["system", "body", "msg/s", "vs NATS core", "vs relay", "server cpu us/msg", "p50 ms", "p99 ms",
           "p99 from due ms", "exactly-once", "stored", "producer told", "consumer"]


def table_rows(summary: dict[str, dict[int, dict[str, Any]]], systems: list[str], sizes: list[int]) -> list[list[str]]:
    rows = []
    for key in systems:
        system = BY_KEY[key]
        for size in sizes:
            case = summary.get(key, {}).get(size)
            if case is None:
                rows.append([system.label, fmt_size(size), "not run"] + [""] * (len(HEADERS) - 3))
                continue
            nats = summary.get("nats", {}).get(size, {}).get("thr")
            base = summary.get("relay", {}).get(size, {}).get("thr")
            busy = " BUSY" if case["busy"] > common.BUSY_THRESHOLD else ""
            rows.append([
                system.label, fmt_size(size), fmt_rate(case["thr"]) + busy, ratio(case["thr"], nats),
                ratio(case["thr"], base), "-" if case["cpu"] is None else f"{case['cpu']:.2f}",
                fmt_ms(case["p50"]), fmt_ms(case["p99"]), fmt_ms(case["p99_due"]),
                "ok" if case["exactly_once"] else "FAILED", system.stored, system.confirmed, system.acked,
            ])
    return rows


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot(summary: dict[str, dict[int, dict[str, Any]]], systems: list[str], sizes: list[int], path: Path,
         title: str) -> None:
    """Grouped bars: msg/s per system, one bar per body size; beside them p99 at the fixed rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{BY_KEY[k].label}\n{BY_KEY[k].tag}" for k in systems]
    width = 0.8 / max(1, len(sizes))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    colors = ["#3b6ea5", "#e08a2c", "#5a9e4b", "#9b59b6"]
    for i, size in enumerate(sizes):
        xs = [j + (i - (len(sizes) - 1) / 2) * width for j in range(len(systems))]
        thr = [summary.get(k, {}).get(size, {}).get("thr") or 0 for k in systems]
        bars = left.bar(xs, [t / 1000 for t in thr], width, label=fmt_size(size), color=colors[i % len(colors)])
        left.bar_label(bars, labels=[short_rate(t) if t else "" for t in thr], fontsize=7, padding=1)
        p99 = [summary.get(k, {}).get(size, {}).get("p99") or 0 for k in systems]
        bars = right.bar(xs, p99, width, label=fmt_size(size), color=colors[i % len(colors)])
        right.bar_label(bars, labels=[f"{p:.2f}" if p else "" for p in p99], fontsize=7, padding=1)
    for ax in (left, right):
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    left.margins(y=0.08)
    right.set_yscale("log")  # one slow tail must not flatten every other bar
    left.set_ylabel("thousand msg/s (median)")
    left.set_title("throughput, one producer and one consumer", fontsize=10)
    right.set_ylabel("ms (log scale)")
    right.set_title("p99 latency at 5,000 msg/s", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --- the benchmark ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_peers.py",
        description="aiobroker (memory and SQLite stores) against NATS core, NATS JetStream (file storage, pull "
        "consumer with acks) and mosquitto (QoS 1), with the bare relay as the Python limit: one producer and one "
        "consumer process each, throughput and latency at a fixed rate, interleaved rounds, medians. Installs "
        "nats-server and mosquitto (apt-get, as root) and nats-py (pip) when missing.",
        epilog="Exit status 0 = all ran; 2 = an exactly-once check failed or a run could not run. "
        "Results: benchmarks/results/peers-<time>.json",
    )
    p.add_argument("--quick", action="store_true", help="a short run (1 round, 1 s throughput, 1.5 s latency)")
    p.add_argument("--rounds", type=int, help="interleaved rounds, medians reported (default 3; --quick 1)")
    p.add_argument("--systems", default=",".join(s.key for s in SYSTEMS),
                   help=f"comma list, in the order run (default: {','.join(s.key for s in SYSTEMS)})")
    p.add_argument("--sizes", default="128,4096", help="body sizes in bytes (default: 128,4096)")
    p.add_argument("--seconds", type=float, help="throughput runs: seconds of sending (default 4; --quick 1)")
    p.add_argument("--messages", type=int, default=2_000_000, help="throughput runs: at most this many messages "
                   "(default 2,000,000)")
    p.add_argument("--rate", type=float, default=5000.0, help="latency runs: offered msg/s (default 5000)")
    p.add_argument("--duration", type=float, help="latency runs: measured seconds after a warm-up (default 5; "
                   "--quick 1.5)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    p.add_argument("--no-install", action="store_true", help="do not install anything; fail if something is missing")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each run, wait up to S s for other processes to leave the CPUs idle")
    p.add_argument("--retry-busy", type=int, default=0, metavar="K", help=common.RETRY_BUSY_HELP)
    p.add_argument("--max-seconds", type=float, default=120.0, help="bound on each run (default 120)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the table as a chart (needs matplotlib: the plot extra)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout (progress on stderr)")
    p.add_argument("--from-json", metavar="RESULTS.json", help="run nothing: print the table (and draw --plot) of "
                   "an earlier run from its results file")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.system_list if s not in BY_KEY]
    if unknown or not args.system_list:
        p.error(f"unknown system(s) {', '.join(unknown) or '(none given)'}; choose from "
                f"{', '.join(BY_KEY)}")
    try:
        args.size_list = common.parse_sizes(args.sizes)
    except ValueError as exc:
        p.error(str(exc))
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (1.0 if args.quick else 4.0)
    args.duration = args.duration or (1.5 if args.quick else 5.0)
    args.warmup = 0.3 if args.quick else 1.0
    for name in ("rounds", "seconds", "duration", "messages", "rate"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    if args.plot and not args.plot.lower().endswith(".png"):
        p.error("--plot takes a .png file name")
    return args


def plan(args: argparse.Namespace) -> list[tuple[int, str, str, int]]:
    """Every run in order: (round, mode, system, size); each round goes through all systems, then again."""
    out = []
    for r in range(args.rounds):
        for size in args.size_list:
            for system in args.system_list:
                out.append((r, "throughput", system, size))
        if not args.no_latency:
            for size in args.size_list:
                for system in args.system_list:
                    out.append((r, "latency", system, size))
    return out


def describe(res: dict[str, Any]) -> str:
    once = "exactly-once ok" if res["check"]["exactly_once"] else "EXACTLY-ONCE FAILED: " + "; ".join(
        res["check"]["first_problems"][:2])
    busy = common.CpuMeter.contention(res["cpu"])
    note = f", others took {busy:.2f} cores" if busy > common.BUSY_THRESHOLD else ""
    if res.get("disturbed"):
        note += f", the platform paused {res['pauses']['total_ms']:.0f} ms"
    if res["mode"] == "throughput":
        return (f"{fmt_rate(res['throughput'])} msg/s ({res['received']:,} in {res['elapsed_s']:.2f} s, server "
                f"{res['server_us_per_msg']:.2f} us/msg); {once}{note}")
    lat, due = res["latency"], res["from_schedule"]
    return (f"p50 {fmt_ms(lat['p50_ms'])} ms, p99 {fmt_ms(lat['p99_ms'])} ms, from due p99 "
            f"{fmt_ms(due['p99_ms'])} ms ({lat['samples']:,} samples); {once}{note}")


def report(args: argparse.Namespace, runs: list[dict[str, Any]], when: str,
           note: str) -> dict[str, dict[int, dict[str, Any]]]:
    """The table (and the chart, with --plot) of ``runs``; returns their summary."""
    summary = summarize(runs)
    rows = table_rows(summary, args.system_list, args.size_list)
    print()
    if args.markdown:
        print(markdown(HEADERS, rows))
    else:
        common.print_table(HEADERS, rows)
    print(f"(medians of {args.rounds} round(s); vs = msg/s ratio in the same run; p99 at {args.rate:,.0f} msg/s"
          f"{note})")
    if args.plot:
        plot(summary, args.system_list, args.size_list, Path(args.plot),
             f"one producer and one consumer process on 127.0.0.1, {os.cpu_count()} cores, {when}; medians of "
             f"{args.rounds} round(s)")
        print(f"chart: {args.plot}")
    return summary


def from_json(args: argparse.Namespace) -> int:
    try:
        data = json.loads(Path(args.from_json).read_text())
        runs, settings = data["runs"], data["settings"]
    except (OSError, ValueError, KeyError) as exc:
        raise BenchError(f"{args.from_json} is not a bench_peers.py results file ({type(exc).__name__}: {exc})"
                         ) from None
    for name in ("system_list", "size_list", "rounds", "rate"):
        setattr(args, name, settings[name])
    report(args, runs, str(data.get("when", "?"))[:10], f"; from {args.from_json}")
    return 0


def bench(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    def say(text: str) -> None:
        print(text, flush=True)

    if not args.no_install:
        ensure_installed(args.system_list, say)
    missing = [s for s in args.system_list if s in ("nats", "jetstream", "mosquitto")
               and find_binary("mosquitto" if s == "mosquitto" else "nats-server") is None]
    if missing:
        raise BenchError(f"not installed for {', '.join(missing)} (run without --no-install, as root)")
    runs: list[dict[str, Any]] = []
    errors: list[str] = []
    todo = plan(args)
    started = time.monotonic()
    say(f"bench_peers: {', '.join(args.system_list)}; bodies {', '.join(fmt_size(s) for s in args.size_list)}; "
        f"{args.rounds} round(s); throughput {args.seconds:g} s a run; latency at {args.rate:,.0f} msg/s for "
        f"{args.duration:g} s" + (" (skipped)" if args.no_latency else "") + f"; {len(todo)} runs")
    for i, (r, mode, system, size) in enumerate(todo):
        label = f"[{i + 1}/{len(todo)} round {r + 1}, {time.monotonic() - started:.0f} s] {system} " \
                f"{fmt_size(size)} {mode}"
        try:
            res = common.run_unless_busy(functools.partial(run_case, system, mode, size, args), args.retry_busy, label)
        except BenchError as exc:
            say(f"{label}: ERROR: {exc}")
            errors.append(f"{system} {fmt_size(size)} {mode}: {exc}")
            continue
        res["round"] = r + 1
        runs.append(res)
        say(f"{label}: {describe(res)}")
    summary = report(args, runs, time.strftime("%Y-%m-%d"),
                     f"; all runs took {time.monotonic() - started:.0f} s")
    data = {"settings": {k: v for k, v in vars(args).items()}, "errors": errors,
            "systems": {s.key: dataclasses.asdict(s) for s in SYSTEMS if s.key in args.system_list},
            "summary": {k: {str(s): v for s, v in per.items()} for k, per in summary.items()}, "runs": runs}
    path = common.write_results("peers", data)
    print(f"results: {common._rel(path)}")
    data["results_file"] = str(path)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return (2 if errors or not all(r["check"]["exactly_once"] for r in runs) else 0), data


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("produce", "consume"):
        return worker_cli(argv[0], argv[1:])
    args = parse_args(argv)
    return common.run_guarded(lambda: run(args), "the servers and workers")


def run(args: argparse.Namespace) -> int:
    if args.from_json:
        return from_json(args)
    if not args.json:
        return bench(args)[0]
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON alone
        status, data = bench(args)
    json.dump(data, sys.stdout, default=str)
    sys.stdout.write("\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
