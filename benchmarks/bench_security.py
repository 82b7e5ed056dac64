"""Dialog security throughput: encrypted versus plain, a producer on node A and a consumer on node B, on loopback.

Each run starts two fresh nodes, each in its own process on its own port (A with a route for the target service to
B), and sets up, untimed, through the generic ``client.create``: on B an identity ``b-owner`` (an EC P-256 key
pair from ``aiobroker.security.certs.create_self_signed``) owning the target service ``svcB``; on A an identity
``a-signer`` and, for the encrypted runs only, a binding to ``svcB`` with ``b-owner``'s certificate. The producer
streams numbered messages over one conversation (``begin_dialog(encryption=...)``, batches of 1,000 with a window
of 4 in flight); the consumer on B receives, checks that every number arrives exactly once and in order, and
commits. An encrypted run also checks, through A's status, that its conversation really was secured (and a plain
one that it was not). Throughput = N / (first send -> last receive).

For each body size (128 B and 4 KiB) and store (memory, and SQLite durability ``normal``) the repeats alternate
plain, encrypted, plain, ... so a change in the machine's load over time hits both alike; the medians are
compared. Floor: encrypted throughput >= 50% of plain, per store and size.

    .venv/bin/python benchmarks/bench_security.py                          # the full run (a few minutes)
    .venv/bin/python benchmarks/bench_security.py --quick                  # a smoke run (about a minute)
    .venv/bin/python benchmarks/bench_security.py --wait-idle 60 --retry-busy 2   # on a shared machine

``--profile`` adds one encrypted run per case under py-spy (the venv's, or on PATH), not counted in the figures
(sampling slows the nodes down): ``results/logs/security-py-spy-<store>-<size>-<node>.txt`` (collapsed stacks of
each node) and the top frames printed, by share of samples (inclusive and self).

Exit status: 0 = everything ran and passed; 1 = a floor failed; 2 = an exactly-once or secured check failed, or a
case could not run.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import two_nodes  # noqa: E402
from common import LOGS_DIR, LOOPBACK, BenchError, fmt_rate, fmt_size  # noqa: E402

FLOOR_RATIO = 0.50  # encrypted throughput at least half of plain, per store and body size
MODES = ("plain", "encrypted")
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
[[route]]
name = "to-peer"
service_name = "{far_service}"
address = "tcp://127.0.0.1:{far_port}"
"""


def start_node(name: str, store: str, port: int, far_port: int, far_service: str, workdir: Path) -> Any:
    data_dir = workdir / f"data-{name}"
    config = workdir / f"{name}.toml"
    config.write_text(CONFIG.format(store=store, data_dir=data_dir, queue=f"q{name}", far_service=far_service,
                                    far_port=far_port))  # fmt: skip
    log = LOGS_DIR / f"security-node-{name}.log"
    proc = common.start_process([sys.executable, "-m", "aiobroker", "serve", "--config", str(config), "--listen",
                                 f"{LOOPBACK}:{port}", "--http", "off"], log_path=log)  # fmt: skip
    common.wait_for_port(port, proc=proc, what=f"node {name} ({store})", log_path=log, timeout=30)
    return proc


# --- the load process (setup, producer and consumer, through the aiobroker client) ----------------------------


async def setup(ca: Any, cb: Any, encrypted: bool) -> None:
    """Untimed: b-owner owns svcB on B; A has svcA, a-signer and (encrypted runs) a binding to svcB."""
    from aiobroker.security.certs import create_self_signed

    b_cert, b_key = create_self_signed("b-owner", key_type="ec")
    a_cert, a_key = create_self_signed("a-signer", key_type="ec")
    await cb.create("identity", {"name": "b-owner", "certificate": b_cert, "private_key": b_key})
    await cb.create("service", {"name": "svcB", "queue": "qb", "contracts": ["DEFAULT"], "owner": "b-owner"})
    await ca.create("identity", {"name": "a-signer", "certificate": a_cert, "private_key": a_key})
    await ca.create("service", {"name": "svcA", "queue": "qa", "contracts": []})
    if encrypted:
        await ca.create("binding", {"name": "to-svcB", "to_service": "svcB", "certificate": b_cert,
                                    "identity": "a-signer"})  # fmt: skip


async def load(args: argparse.Namespace) -> dict[str, Any]:
    import aiobroker

    n, size = args.messages, args.size
    encrypted = args.mode == "encrypted"
    progress = common.Progress(f"security {args.mode} {args.store} {fmt_size(size)} received", n)
    async with aiobroker.connect(f"tcp://{LOOPBACK}:{args.port_a}") as ca, \
            aiobroker.connect(f"tcp://{LOOPBACK}:{args.port_b}") as cb:  # fmt: skip
        await setup(ca, cb, encrypted)
        dialog = await ca.begin_dialog("svcA", "svcB", encryption=encrypted)
        checker, elapsed = await two_nodes.stream(dialog, cb, "qb", n=n, size=size, batch=args.batch,
                                                  window=args.window, deadline=common.Deadline(args.max_seconds),
                                                  progress=progress)
        secured = (await ca.status())["security"]["secured_conversations"]
    return {"mode": args.mode, "store": args.store, "size": size, "messages": n, "received": checker.expected,
            "elapsed_s": elapsed / 1e9, "throughput": common.throughput(checker.expected, elapsed),
            "secured_conversations_at_a": secured, "secured_ok": secured == (1 if encrypted else 0),
            "check": checker.summary()}  # fmt: skip


# --- one run: two fresh nodes, the load, CPU accounting -------------------------------------------------------


def py_spy() -> str | None:
    venv = Path(sys.executable).with_name("py-spy")
    return str(venv) if venv.exists() else shutil.which("py-spy")


def run_case(mode: str, store: str, size: int, messages: int, max_seconds: float, wait_idle: float,
             profile: bool) -> dict[str, Any]:  # fmt: skip
    port_a, port_b = common.free_port(), common.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="aiobroker-bench-security-"))
    procs: list[Any] = []
    spies: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        procs.append(start_node("b", store, port_b, port_a, "svcA", workdir))
        procs.append(start_node("a", store, port_a, port_b, "svcB", workdir))
        if wait_idle:
            common.wait_until_quiet(wait_idle, say=lambda m: print(m, flush=True))
        if profile:
            spy = py_spy()
            if spy is None:
                raise BenchError("--profile needs py-spy (.venv/bin/pip install py-spy)")
            for name, proc in zip("ba", procs, strict=True):
                out = LOGS_DIR / f"security-py-spy-{store}-{size}-{name}.txt"
                spies.append((name, common.start_process(
                    [spy, "record", "-f", "raw", "-r", "200", "-o", str(out), "--pid", str(proc.pid)],
                    log_path=LOGS_DIR / f"security-py-spy-{name}.log"), out))  # fmt: skip
        cpu0 = {name: common.proc_cpu_seconds(p.pid) for name, p in zip("ba", procs, strict=True)}
        meter = common.CpuMeter([p.pid for p in procs])
        result = common.run_worker(
            [sys.executable, __file__, "load", "--mode", mode, "--port-a", str(port_a), "--port-b", str(port_b),
             "--store", store, "--size", str(size), "--messages", str(messages), "--max-seconds", str(max_seconds)],
            timeout=max_seconds + 60, what=f"security load ({mode}, {store}, {fmt_size(size)})")  # fmt: skip
        result["cpu"] = meter.stop()
        for name, p in zip("ba", procs, strict=True):
            c1, c0 = common.proc_cpu_seconds(p.pid), cpu0[name]
            result["cpu"][f"node_{name}_cpu_s"] = (c1 - c0) if c0 is not None and c1 is not None else None
        if profile:
            for _name, spy_proc, _out in spies:
                os.kill(spy_proc.pid, signal.SIGINT)  # py-spy writes its file on SIGINT
            for _name, spy_proc, _out in spies:
                try:
                    spy_proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    common.stop_process(spy_proc)
            result["profile"] = {name: summarize_profile(out) for name, _p, out in spies}
        return result
    finally:
        for _name, spy_proc, _out in spies:
            common.stop_process(spy_proc)
        for proc in procs:
            common.stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


_OUTER = ("serve.py)", "app.py)", "__main__.py)")  # the frames every sample of a node has: not worth listing


def summarize_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """From py-spy's collapsed stacks: the share of samples in which each aiobroker function appears (inclusive,
    without the outermost frames every sample has), and the share in which a function (any) is the innermost frame
    (self: py-spy without --native charges time in C, e.g. AES-GCM in cryptography, to its Python caller), top
    ``top`` of each."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"file": str(path), "error": "no profile written"}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = stack.split(";")
        for f in {_frame(f) for f in frames if " (aiobroker/" in f}:
            if not f.endswith(_OUTER):
                inclusive[f] += k
        own[_frame(frames[-1])] += k
    share = (lambda c: [[f, round(v / total, 4)] for f, v in c.most_common(top)]) if total else (lambda c: [])
    return {"file": common._rel(path), "samples": total, "inclusive": share(inclusive), "self": share(own)}


def _frame(f: str) -> str:
    # "function (path/to/file.py:123)" -> "function (file.py)": lines differ within one function
    name, _, where = f.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1] if where else ""
    return f"{name} ({file})" if file else name


# --- the orchestrator -----------------------------------------------------------------------------------------


def describe(res: dict[str, Any]) -> str:
    cpu = res["cpu"]
    once = "exactly once" if res["check"]["exactly_once"] and res["received"] == res["messages"] else "EXACTLY-ONCE FAILED"
    secured = "" if res["secured_ok"] else f"; *** SECURED CHECK FAILED (A has {res['secured_conversations_at_a']}) ***"
    others = common.CpuMeter.contention(cpu)
    busy = f", OTHER PROCESSES (OR STEAL) TOOK {others:.2f} CORES" if others > common.BUSY_THRESHOLD else ""
    return (f"{fmt_rate(res['throughput'])} msg/s in {res['elapsed_s']:.2f} s; cpu A {cpu.get('node_a_cpu_s') or 0:.2f} s,"
            f" B {cpu.get('node_b_cpu_s') or 0:.2f} s, load {cpu.get('load_cpu_s', 0):.2f} s; {once}{secured}{busy}")


def us_per_msg(runs: list[dict[str, Any]], node: str) -> float:
    return common.median([(r["cpu"].get(f"node_{node}_cpu_s") or 0.0) / max(1, r["received"]) * 1e6 for r in runs])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["load"]:
        p = argparse.ArgumentParser(prog="bench_security.py load", description="the load process (internal)")
        p.add_argument("--mode", choices=MODES, required=True)
        p.add_argument("--port-a", type=int, required=True)
        p.add_argument("--port-b", type=int, required=True)
        p.add_argument("--store", required=True)
        p.add_argument("--size", type=int, default=128)
        p.add_argument("--messages", type=int, default=100_000)
        p.add_argument("--batch", type=int, default=1000)
        p.add_argument("--window", type=int, default=4)
        p.add_argument("--max-seconds", type=float, default=120)
        args = p.parse_args(argv[1:])
        return common.worker_main("security load", lambda: common.run_async(load, args))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer messages, one repeat")
    p.add_argument("--messages", type=int, default=None, help="messages per run (default 100,000; --quick 20,000)")
    p.add_argument("--sizes", default="128,4096", help="body sizes, comma list (default 128,4096)")
    p.add_argument("--stores", default="memory,sqlite", help="comma list (default memory,sqlite)")
    p.add_argument("--repeat", type=int, default=None, help="runs per case and mode; the median counts (default 3)")
    p.add_argument("--max-seconds", type=float, default=180.0, help="bound on each run")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each run, wait up to S s for other processes to leave the CPUs idle")  # fmt: skip
    p.add_argument("--retry-busy", type=int, default=0, metavar="K",
                   help=common.RETRY_BUSY_HELP)
    p.add_argument("--profile", action="store_true", help="py-spy both nodes during the encrypted runs")
    args = p.parse_args(argv)
    try:
        sizes = common.parse_sizes(args.sizes)
    except ValueError as exc:
        p.error(str(exc))
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    messages = args.messages or (20_000 if args.quick else 100_000)
    repeat = args.repeat or (1 if args.quick else 3)
    common.sigterm_as_interrupt()
    out: dict[str, Any] = {"settings": {**vars(args), "messages": messages, "repeat": repeat}, "cases": []}
    rows: list[list[str]] = []
    failed = bad_check = False
    busy_any = False
    profiles: dict[tuple[str, int], dict[str, Any]] = {}
    started = time.monotonic()
    print(f"bench_security: sizes {', '.join(fmt_size(s) for s in sizes)}; stores {', '.join(stores)}; "
          f"N={messages:,} x{repeat} per mode, plain and encrypted alternating", flush=True)  # fmt: skip
    for size in sizes:
        for store in stores:
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
            error = None
            for r in range(repeat):
                for mode in MODES:
                    label = f"{store} {fmt_size(size)} {mode} run {r + 1}/{repeat}"
                    try:
                        res = common.run_unless_busy(functools.partial(
                            run_case, mode, store, size, messages, args.max_seconds, args.wait_idle, False),
                            args.retry_busy, label)  # fmt: skip
                    except BenchError as exc:
                        print(f"  {label}: ERROR: {exc}", flush=True)
                        error = str(exc)
                        break
                    runs[mode].append(res)
                    print(f"  {label}: {describe(res)}", flush=True)
                if error:
                    break
            if args.profile and not error:
                # one more encrypted run under py-spy, not counted: sampling slows the nodes down
                try:
                    res = run_case("encrypted", store, size, messages, args.max_seconds, args.wait_idle, True)
                    print(f"  {store} {fmt_size(size)} encrypted, profiled (not counted): {describe(res)}", flush=True)
                    profiles[(store, size)] = res["profile"]
                except BenchError as exc:
                    print(f"  {store} {fmt_size(size)} profiled run: ERROR: {exc}", flush=True)
            if error or not all(runs.values()):
                failed = True
                rows.append([store, fmt_size(size), "-", "-", "-", "not run", "-", "-", "-", "-"])
                out["cases"].append({"size": size, "store": store, "error": error, "runs": runs})
                continue
            plain = common.median([r["throughput"] for r in runs["plain"]])
            enc = common.median([r["throughput"] for r in runs["encrypted"]])
            ratio = enc / plain if plain else 0.0
            once = all(r["check"]["exactly_once"] and r["received"] == messages and r["secured_ok"]
                       for m in MODES for r in runs[m])  # fmt: skip
            others = max(common.CpuMeter.contention(r["cpu"]) for m in MODES for r in runs[m])
            busy = others > common.BUSY_THRESHOLD
            busy_any |= busy
            floor_ok = ratio >= FLOOR_RATIO
            failed |= not floor_ok
            bad_check |= not once
            cpu = {m: {n: us_per_msg(runs[m], n) for n in "ab"} for m in MODES}
            both = {m: cpu[m]["a"] + cpu[m]["b"] for m in MODES}
            # what the ratio would be if the two nodes' CPU were all that mattered: less sensitive to a busy machine
            cpu_ratio = both["plain"] / both["encrypted"] if both["encrypted"] else 0.0
            rows.append([
                store, fmt_size(size), fmt_rate(plain), fmt_rate(enc), f"{ratio:.3f}",
                f"{'PASS' if floor_ok else 'FAIL'} (>= {FLOOR_RATIO:.0%})",
                f"{cpu['plain']['a']:.2f} / {cpu['encrypted']['a']:.2f}",
                f"{cpu['plain']['b']:.2f} / {cpu['encrypted']['b']:.2f}",
                f"{cpu_ratio:.3f}",
                ("yes" if once else "NO") + (f", {others:.2f} BUSY" if busy else ""),
            ])  # fmt: skip
            out["cases"].append({
                "size": size, "store": store, "plain": plain, "encrypted": enc, "ratio": ratio, "floor": FLOOR_RATIO,
                "floor_passed": floor_ok, "exactly_once_and_secured": once, "others_cores_max": others,
                "cpu_us_per_msg": cpu, "cpu_ratio": cpu_ratio, "runs": runs,
                "plain_min_max": [min(r["throughput"] for r in runs["plain"]),
                                  max(r["throughput"] for r in runs["plain"])],
                "encrypted_min_max": [min(r["throughput"] for r in runs["encrypted"]),
                                      max(r["throughput"] for r in runs["encrypted"])],
            })  # fmt: skip
    print(f"\n(all runs took {time.monotonic() - started:.0f} s)\n")
    common.print_table(["store", "body", f"plain msg/s (median of {repeat})", "encrypted msg/s", "enc/plain",
                        "floor", "A cpu us/msg plain / enc", "B cpu us/msg plain / enc",
                        "cpu plain/enc", "exactly once, secured"], rows)  # fmt: skip
    if busy_any:
        print("note: other processes used CPU during cases marked BUSY: their figures are not reliable "
              "(use --wait-idle S --retry-busy K, or rerun on a quiet machine)")
    for (store, size), per_node in profiles.items():
        for node, prof in sorted(per_node.items()):
            print(f"\nprofile of node {node.upper()}, encrypted, {store} {fmt_size(size)} ({prof.get('samples', 0)}"
                  f" samples, {prof.get('file')}):")
            for what in ("inclusive", "self"):
                print(f"  {what}: " + ", ".join(f"{f} {share:.1%}" for f, share in prof.get(what, [])[:10]))
    out["profiles"] = [{"store": st, "size": sz, "nodes": p} for (st, sz), p in profiles.items()]
    path = common.write_results("security", out)
    print(f"\nresults: {common._rel(path)}")
    if bad_check:
        print("\n*** A RUN FAILED ITS EXACTLY-ONCE OR SECURED CHECK (see above) ***", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted (the nodes and load processes were stopped)", file=sys.stderr)
        raise SystemExit(130) from None
