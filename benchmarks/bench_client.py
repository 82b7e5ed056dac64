"""The client's consumer side alone: what receiving a batch costs the process that receives it, per message.

Two measurements, each run for the tree it lives in ("current") and, with ``--baseline REF``, for the client as it
was at git commit REF ("baseline": its ``aiobroker`` package exported to a temporary directory), interleaved in
one run, each in a fresh process:

* micro: a receive reply of ``--batch`` messages (``--size`` byte bodies), encoded once as the node sends it
  (stored rows as they are, plus the conversation facts); then, timed, for each of ``--batches`` batches: the
  client's frame decoder turns the wire bytes into a reply, ``Client._receive`` turns the reply into a
  ``ReceivedBatch`` (its request answered at once, no socket), and every message's ``body`` and
  ``sequence_number`` are read. Printed: microseconds per message, split into decode, batch and read; and "all":
  batch + reading every public attribute of every message (a second receive of the same reply), for consumers
  that read more than two.
* e2e (``--e2e``): through a real node (memory store, its own process): a producer process fills the queue with
  ``--messages`` messages, then a consumer process receives them in batches of ``--batch`` and commits each
  (``start_commit``, overlapping the next receive), checking every sequence number once and in order. Printed:
  the consumer process's CPU per message (``time.process_time`` around the receive loop) and its msg/s.

Exit status: 0 all ran; 2 something did not run or a sequence check failed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # run as `python -m benchmarks.<name>`
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import LOOPBACK, REPO, BenchError, Deadline, Progress, SequenceChecker, body_seq, make_body, median  # noqa: E402

BENCH_CLIENT_PY = Path(__file__).resolve()
QUEUE, SERVICE, INIT_QUEUE, INIT_SERVICE = "bench_in", "bench_target", "bench_init_q", "bench_init"
#: every public attribute of a received message (the "all" column reads each of them)
ATTRIBUTES = ("queue", "message_id", "conversation_handle", "sequence_number", "message_type", "body", "enqueued_at",
              "service_name", "far_service_name", "contract", "conversation_group_id", "is_initiator",
              "conversation_id", "traceparent", "tracestate", "is_end_dialog", "is_error", "is_timer", "error")


def use_tree(tree: str) -> None:
    """Import ``aiobroker`` from ``tree`` (the current worktree or an exported baseline), ahead of anything else."""
    sys.path.insert(0, tree)
    import aiobroker

    if not str(Path(aiobroker.__file__).resolve()).startswith(str(Path(tree).resolve())):
        raise BenchError(f"aiobroker came from {aiobroker.__file__}, not from {tree}")


# --- micro: decode + batch + read, in one process, no socket -------------------------------------------------------


def micro(args: argparse.Namespace) -> dict[str, Any]:
    use_tree(args.tree)
    import uuid

    from aiobroker.client.client import Client
    from aiobroker.wire.codec import FrameDecoder, encode_frame
    from aiobroker.wire.frames import parse_frame, reply_wire

    n = args.batch
    handle = str(uuid.uuid4()).upper()
    facts = [SERVICE, INIT_SERVICE, "DEFAULT", str(uuid.uuid4()).upper(), False, str(uuid.uuid4()).upper()]
    now = time.time()
    # the node's stored rows: (id, location, handle, seq, type, body, enqueued_at, state)
    rows = [(1000 + i, f"q:{QUEUE}", handle, i, "DEFAULT", make_body(args.size, i), now, 0) for i in range(n)]
    reply = {"lease": 7, "queue": QUEUE, "lease_expires_at": now + 30, "messages": rows, "conversations": {handle: facts}}
    wire = encode_frame(reply_wire(1, reply))

    client = Client(f"tcp://{LOOPBACK}:1")  # never connected: its one request is answered below
    answer: dict[str, Any] = {}

    async def request(op: str, request_args: dict[str, Any]) -> Any:
        return answer["result"]

    client.request = request  # type: ignore[method-assign]
    decoder = FrameDecoder()
    clock = time.perf_counter_ns
    t_decode = t_batch = t_read = t_all = 0
    read_all = eval("lambda m: (" + ", ".join(f"m.{a}" for a in ATTRIBUTES) + ")")  # noqa: S307 - names above
    seqs = 0
    deadline = Deadline(args.max_seconds)
    done = 0
    for _ in range(args.batches):
        if deadline.passed:
            break
        t0 = clock()
        (frame,) = [parse_frame(obj) for obj in decoder.feed(wire)]
        t1 = clock()
        answer["result"] = frame.result  # type: ignore[union-attr]
        batch = receive_now(client)
        t2 = clock()
        for m in batch:
            m.body  # noqa: B018 - read, as a consumer does
            seqs += m.sequence_number
        t3 = clock()
        del batch
        t4 = clock()
        for m in receive_now(client):
            read_all(m)
        t5 = clock()
        del frame
        t_decode += t1 - t0
        t_batch += t2 - t1
        t_read += t3 - t2
        t_all += t5 - t4
        done += 1
    if seqs != done * n * (n - 1) // 2:
        raise BenchError("sequence numbers read back wrong")
    per = 1e-3 / max(1, done * n)  # ns total -> us per message
    return {"batches": done, "decode_us": t_decode * per, "batch_us": t_batch * per, "read_us": t_read * per,
            "total_us": (t_decode + t_batch + t_read) * per, "all_us": t_all * per}


def receive_now(client: Any) -> Any:
    """``Client._receive``, whose one request is answered without waiting: the batch it makes."""
    coro = client._receive(QUEUE, 1, 0.0, None)
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise BenchError("Client._receive waited for something")


# --- e2e: a real node, a producer, then the consumer alone -------------------------------------------------------------


async def produce(args: argparse.Namespace) -> dict[str, Any]:
    use_tree(args.tree)
    import aiobroker

    async with aiobroker.connect(f"tcp://{LOOPBACK}:{args.port}") as client:
        if args.setup:
            await client.create_queue(QUEUE)
            await client.create_queue(INIT_QUEUE)
            await client.create_service(SERVICE, queue=QUEUE, contracts=["DEFAULT"])
            await client.create_service(INIT_SERVICE, queue=INIT_QUEUE, contracts=["DEFAULT"])
        dialog = await client.begin_dialog(INIT_SERVICE, SERVICE, "DEFAULT")
        window: deque[Any] = deque()
        for first in range(0, args.messages, 1000):
            k = min(1000, args.messages - first)
            window.append(dialog.start_send_many([("DEFAULT", make_body(args.size, first + i)) for i in range(k)]))
            if len(window) >= 4:
                await window.popleft().wait()
        for pending in window:
            await pending.wait()
        await dialog.end(cleanup=True)  # this side only: nothing arrives on the consumer's queue for it
    return {"sent": args.messages}


async def consume(args: argparse.Namespace) -> dict[str, Any]:
    use_tree(args.tree)
    import aiobroker

    checker = SequenceChecker(args.messages)
    progress = Progress(f"{args.label} received", args.messages)
    deadline = Deadline(args.max_seconds)
    async with aiobroker.connect(f"tcp://{LOOPBACK}:{args.port}") as client:
        commits: deque[Any] = deque()
        c0, t0 = time.process_time(), time.monotonic()
        for _ in range(args.messages + 100):
            if checker.complete or deadline.passed:
                break
            batch = await client.receive(QUEUE, max_messages=args.batch, timeout=1.0)
            for m in batch:
                checker.see(body_seq(m.body))
            commits.append(batch.start_commit())
            while commits and commits[0].done:
                await commits.popleft().wait()
            progress.tick(checker.expected)
        for pending in commits:
            await pending.wait()
        cpu, wall = time.process_time() - c0, time.monotonic() - t0
    return {"received": checker.expected, "cpu_s": cpu, "wall_s": wall, "check": checker.summary()}


# --- orchestration -------------------------------------------------------------------------------------------------


def export_baseline(ref: str, into: Path) -> str:
    """The ``aiobroker`` package as it was at ``ref``, in ``into`` (a tree to put on sys.path)."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "aiobroker"], check=True,
                                 capture_output=True, timeout=60).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, capture_output=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"cannot export aiobroker at {ref!r}: {exc.stderr.decode(errors='replace').strip()}") from exc
    return str(into)


def worker(mode: str, tree: str, extra: list[str], args: argparse.Namespace, what: str) -> dict[str, Any]:
    argv = [sys.executable, str(BENCH_CLIENT_PY), "worker", mode, "--tree", tree, "--size", str(args.size),
            "--batch", str(args.batch), "--max-seconds", str(args.max_seconds), *extra]
    return common.run_worker(argv, timeout=args.max_seconds + 60, what=what)


def run_micro(trees: dict[str, str], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in trees.items():
            res = worker("micro", tree, ["--batches", str(args.batches)], args, f"micro {name}")
            runs[name].append(res)
            print(f"  micro round {r + 1}/{args.rounds} {name:8}: {res['total_us']:.3f} us/msg (decode"
                  f" {res['decode_us']:.3f}, batch {res['batch_us']:.3f}, read {res['read_us']:.3f}); batch + all"
                  f" attributes {res['all_us']:.3f}", flush=True)
    return runs


def run_e2e(trees: dict[str, str], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    port = common.free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="aiobroker-bench-client-"))
    log = common.LOGS_DIR / "node-bench-client.log"
    argv = [sys.executable, "-m", "aiobroker", "serve", "--listen", f"{LOOPBACK}:{port}", "--store", "memory",
            "--data-dir", str(data_dir), "--http", "off"]
    proc = common.start_process(argv, log_path=log)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    try:
        common.wait_for_port(port, proc=proc, what="aiobroker node (memory store)", log_path=log, timeout=30)
        first = True
        for r in range(args.rounds):
            for name, tree in trees.items():
                base = ["--port", str(port), "--messages", str(args.messages)]
                worker("produce", str(REPO), [*base, *(["--setup"] if first else [])], args, "producer")
                first = False
                res = worker("consume", tree, [*base, "--label", f"e2e {name}"], args, f"consumer {name}")
                if not res["check"].get("exactly_once", False) or res["received"] != args.messages:
                    raise BenchError(f"consumer {name}: sequence check failed: {res['check']}")
                res["us_per_msg"] = res["cpu_s"] / res["received"] * 1e6
                res["rate"] = res["received"] / res["wall_s"]
                runs[name].append(res)
                print(f"  e2e round {r + 1}/{args.rounds} {name:8}: consumer cpu {res['us_per_msg']:.3f} us/msg,"
                      f" {res['rate']:,.0f} msg/s", flush=True)
            if proc.poll() is not None:
                raise BenchError(f"the node exited with code {proc.returncode}{common._log_hint(log)}")
    finally:
        common.stop_process(proc)
        shutil.rmtree(data_dir, ignore_errors=True)
    return runs


def worker_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench_client.py worker", description="One measuring process (internal).")
    p.add_argument("mode", choices=("micro", "produce", "consume"))
    p.add_argument("--tree", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--batches", type=int, default=1000)
    p.add_argument("--max-seconds", type=float, required=True)
    p.add_argument("--port", type=int)
    p.add_argument("--messages", type=int, default=0)
    p.add_argument("--setup", action="store_true")
    p.add_argument("--label", default="consumer")
    args = p.parse_args(argv)
    if args.mode == "micro":
        return common.worker_main("bench-client-micro", lambda: micro(args))
    fn = produce if args.mode == "produce" else consume
    return common.worker_main(f"bench-client-{args.mode}", lambda: common.run_async(fn, args))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker_cli(argv[1:])
    p = argparse.ArgumentParser(prog="bench_client.py", description=__doc__.split("\n\n")[0],
                                epilog="Example: python benchmarks/bench_client.py --baseline 04490de --e2e")
    p.add_argument("--baseline", metavar="REF", help="also measure the client as it was at this git commit")
    p.add_argument("--size", type=int, default=128, help="body size in bytes (default 128)")
    p.add_argument("--batch", type=int, default=1000, help="messages per receive (default 1000)")
    p.add_argument("--batches", type=int, default=1000, help="micro: batches decoded per process (default 1000)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved runs of each tree; the median is shown")
    p.add_argument("--e2e", action="store_true", help="also measure through a real node (memory store)")
    p.add_argument("--messages", type=int, default=200_000, help="e2e: messages per consumer run (default 200,000)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="bound on each measuring process (default 120)")
    args = p.parse_args(argv)
    if args.size < common.BODY_HEADER_SIZE or args.batch < 1 or args.batches < 1 or args.rounds < 1:
        p.error(f"--size is at least {common.BODY_HEADER_SIZE}; --batch, --batches and --rounds at least 1")
    tmp = Path(tempfile.mkdtemp(prefix="aiobroker-bench-client-baseline-"))
    try:
        trees = {"current": str(REPO)}
        if args.baseline:
            trees = {"baseline": export_baseline(args.baseline, tmp), **trees}
        print(f"bench_client: {args.batch:,} messages of {args.size} B a batch; trees: "
              + ", ".join(f"{k} ({args.baseline if k == 'baseline' else 'this worktree'})" for k in trees), flush=True)
        micro_runs = run_micro(trees, args)
        e2e_runs = run_e2e(trees, args) if args.e2e else {}
    except BenchError as exc:
        print(f"bench_client: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    headers = ["tree", "micro us/msg", "decode", "batch", "read", "all"] + (["e2e consumer cpu us/msg", "e2e msg/s"]
                                                                        if e2e_runs else [])
    rows = []
    for name in trees:
        m = micro_runs[name]
        row = [name, *(f"{median([r[k] for r in m]):.3f}" for k in ("total_us", "decode_us", "batch_us", "read_us", "all_us"))]
        if e2e_runs:
            e = e2e_runs[name]
            row += [f"{median([r['us_per_msg'] for r in e]):.3f}", f"{median([r['rate'] for r in e]):,.0f}"]
        rows.append(row)
    common.print_table(headers, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
