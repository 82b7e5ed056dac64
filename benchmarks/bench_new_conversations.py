"""CPU per message on a node that receives every message on a NEW conversation from a peer node, and on the client
that receives and commits them: the receiving node's side of a resolution storm (bench_resolution_storm.py), alone.

Three processes on loopback: node B (``aiobroker serve``, memory store, ``--services`` services on one queue); a
peer (this script's ``peer`` mode) that says HELLO as a peer node and sends ENVELOPES frames as node/links.py
sends them (``--frame`` message envelopes a frame, each the first and only message of a new conversation, at most
``--window`` unacknowledged), built before the clock starts, so the peer costs B nothing but the bytes; and the
consumer, here: ``--receivers`` receives in flight (``max_messages`` and ``max_groups`` ``--receive-batch``),
each batch committed with ``start_commit`` while the next receive goes out, as the storm's consumer does. It
checks that every message arrives exactly once.

From the peer's first frame to the consumer's last commit it measures the CPU of node B (every thread, from
/proc/PID/task/*/schedstat, in ns) and of the consumer (``time.process_time``), and reports each per message;
the median of ``--rounds`` runs, a fresh node each. ``--instructions`` also counts node B's instructions per
message under valgrind's callgrind (a run with the messages less a run without, start-up and the interpreter's
exit left out): a measure that does not move with the machine's load (one frame in flight at a time, see
:func:`instructions`).

It measures the aiobroker it imports, and starts the node and the peer with the same one, so two trees compare
in one sitting:

    .venv/bin/python benchmarks/bench_new_conversations.py                          # this tree
    PYTHONPATH=/path/to/other/tree .venv/bin/python benchmarks/bench_new_conversations.py   # another tree
    .venv/bin/python benchmarks/bench_new_conversations.py --instructions --messages 5000

Runs on 2 cores shared with anything else move by tens of percent: compare trees run alternately, and read the
instructions for small differences.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiobroker  # first: the tree PYTHONPATH names, ahead of the one common.py puts on the path

TREE = Path(aiobroker.__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import LOOPBACK, BenchError, body_seq, make_body  # noqa: E402

QUEUE = "newconv_in"
SERVICE_FMT = "//newconv/svc-{:04d}"
FAR_SERVICE = "//newconv/initiator"
#: the longest a round may take (a healthy one takes a few seconds; under callgrind, minutes)
ROUND_TIMEOUT = 600
#: callgrind runs a node ~50x slower: its start-up takes this long at most
VALGRIND_START = 300

NODE_CONF = """
[node]
store = "memory"
data_dir = "{data_dir}"
log_level = "warning"
[[queue]]
name = "{queue}"
"""


def check_children_import_the_tree() -> None:
    """A child started as the node is (same environment and directory) imports the aiobroker measured."""
    done = subprocess.run([sys.executable, "-c", "import aiobroker; print(aiobroker.__file__)"], capture_output=True,
                          text=True, env={**os.environ, **tree_env()}, cwd=TREE, timeout=60, check=False)
    found = Path(done.stdout.strip()).resolve().parent.parent if done.returncode == 0 else None
    if found != TREE:
        raise BenchError(f"a child process imports aiobroker from {found}, not {TREE}: {done.stderr.strip()[-300:]}")


def node_config(path: Path, data_dir: Path, services: int) -> None:
    parts = [NODE_CONF.format(data_dir=data_dir, queue=QUEUE)]
    for i in range(services):
        parts.append(f'[[service]]\nname = "{SERVICE_FMT.format(i)}"\nqueue = "{QUEUE}"\ncontracts = ["DEFAULT"]\n')
    path.write_text("".join(parts))


def tree_env() -> dict[str, str]:
    """The children import the aiobroker this process imported."""
    return {"PYTHONPATH": str(TREE)}


def user_system_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds used so far by a live process, every thread (in clock ticks: 10 ms)."""
    cpu = common.stat_cpu(f"/proc/{pid}/stat")
    if cpu is None:
        raise BenchError(f"process {pid} is gone: no CPU figures for it")
    return cpu


def node_cpu_ns(pid: int) -> int:
    """CPU time used so far by every thread of a live process, in ns (Linux /proc/PID/task/*/schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


# --- the peer: envelopes out, acknowledgements in -------------------------------------------------------------


def envelope_frames(messages: int, services: int, size: int, per_frame: int) -> list[bytes]:
    """ENVELOPES frames, encoded: message ``i`` is message 0 of a new conversation to service ``i % services``, its
    body numbered ``i`` (benchmarks/common.py's bodies)."""
    from aiobroker.wire.codec import encode_frame
    from aiobroker.wire.frames import envelopes_wire

    instance = str(uuid.uuid4())
    expires = float(int(time.time()) + 2**31 - 1)  # begun without a lifetime, as the storm's conversations are
    frames = []
    for start in range(0, messages, per_frame):
        batch = [
            [0, str(uuid.uuid4()), True, 0, FAR_SERVICE, SERVICE_FMT.format(i % services), "DEFAULT", instance, None,
             "DEFAULT", make_body(size, i, 0), expires, 0, False]
            for i in range(start, min(messages, start + per_frame))
        ]
        frames.append(encode_frame(envelopes_wire(batch, [])))
    return frames


def peer_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench_new_conversations.py peer",
                                description="the peer node: prints 'ready', waits for 'go' on stdin, sends")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--messages", type=int, required=True)
    p.add_argument("--services", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--frame", type=int, required=True)
    p.add_argument("--window", type=int, required=True)
    p.add_argument("--max-seconds", type=float, default=ROUND_TIMEOUT)
    args = p.parse_args(argv)
    from aiobroker.wire.codec import FrameDecoder, encode_frame

    frames = envelope_frames(args.messages, args.services, args.size, args.frame)
    decoder = FrameDecoder()
    with socket.create_connection((LOOPBACK, args.port), timeout=30) as sock:
        sock.sendall(encode_frame([1, "aiobroker", 1, "peer", {"broker_instance": str(uuid.uuid4())}]))
        welcome: list[Any] = []
        while not welcome:
            data = sock.recv(65536)
            if not data:
                raise SystemExit("the node closed the connection at the handshake")
            welcome.extend(decoder.feed(data))
        if welcome[0][0] != 2:
            raise SystemExit(f"the node refused the handshake: {welcome[0]}")
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
        c0 = time.process_time()
        deadline = time.monotonic() + args.max_seconds
        sent = acked = 0
        next_frame = 0
        sock.setblocking(False)
        while acked < args.messages:
            if time.monotonic() > deadline:
                raise SystemExit(f"{acked} of {args.messages} acknowledged within {args.max_seconds:.0f} s")
            if next_frame < len(frames) and sent - acked + args.frame <= args.window:
                sock.setblocking(True)
                sock.sendall(frames[next_frame])
                sock.setblocking(False)
                sent = min(args.messages, sent + args.frame)
                next_frame += 1
                continue
            readable, _, _ = select.select([sock], [], [], 1.0)
            if not readable:
                continue
            data = sock.recv(1 << 20)
            if not data:
                raise SystemExit(f"the node closed the connection after {acked} acknowledgements")
            for frame in decoder.feed(data):
                if frame[0] != 20:
                    raise SystemExit(f"the node sent {frame!r:.200}")
                acked += len(frame[2])  # one acknowledgement per conversation, each of one message
        print(json.dumps({"peer_cpu_s": time.process_time() - c0}), flush=True)
    return 0


# --- one round: node, peer, consumer --------------------------------------------------------------------------


async def consume(port: int, total: int, receivers: int, batch_size: int, peer: subprocess.Popen[str],
                  node_pid: int, max_seconds: float) -> dict[str, Any]:
    import anyio

    seen = bytearray(total)
    state = {"received": 0, "duplicates": 0}
    done = anyio.Event()
    async with aiobroker.connect(f"tcp://{LOOPBACK}:{port}") as client:
        await client.receive(QUEUE, timeout=0)  # connected and answered: the node serves

        async def receiver() -> None:
            pending: list[Any] = []
            for _ in range(total + 10):
                batch = await client.receive(QUEUE, max_messages=batch_size, timeout=None, max_groups=batch_size)
                for msg in batch.messages:
                    seq = body_seq(msg.body)
                    if seen[seq]:
                        state["duplicates"] += 1
                    seen[seq] = 1
                state["received"] += len(batch.messages)
                pending.append(batch.start_commit())
                while pending and pending[0].done:
                    await pending.pop(0).wait()
                if state["received"] >= total:
                    for p in pending:
                        await p.wait()
                    done.set()
                    return

        async with anyio.create_task_group() as tg:
            for _ in range(receivers):
                tg.start_soon(receiver)
            await anyio.sleep(0.2)  # the receives are parked at the node (nothing measured yet)
            node0, client0, t0 = node_cpu_ns(node_pid), time.process_time(), time.monotonic()
            split0 = user_system_s(node_pid)
            assert peer.stdin is not None
            peer.stdin.write("go\n")
            peer.stdin.flush()
            with anyio.fail_after(max_seconds):
                await done.wait()
            node1, client1, t1 = node_cpu_ns(node_pid), time.process_time(), time.monotonic()
            split1 = user_system_s(node_pid)
            # what the node holds once every message is committed: the conversations alone (commits of other
            # receivers may still be on their way; a lease rolled back would count its messages too)
            settled = False
            for _ in range(int(max_seconds * 20)):
                status = await client.status()
                queue = next(q for q in status["queues"] if q["name"] == QUEUE)
                if queue["waiting"] == 0 and queue["locked"] == 0:
                    settled = True
                    break
                await anyio.sleep(0.05)
            rss = common.rss_bytes(node_pid) if settled else None
            tg.cancel_scope.cancel()  # the other receives wait without limit
    if state["duplicates"] or state["received"] != total or not all(seen):
        raise BenchError(f"not exactly once: {state['received']} received of {total},"
                         f" {state['duplicates']} duplicates, {total - sum(seen)} missing")
    return {"node_rss_settled": rss, "node_cpu_s": (node1 - node0) / 1e9, "node_user_s": split1[0] - split0[0],
            "node_system_s": split1[1] - split0[1], "client_cpu_s": client1 - client0, "seconds": t1 - t0}


def one_round(args: argparse.Namespace, workdir: Path, messages: int, valgrind_out: Path | None = None,
              log: Path | None = None) -> dict[str, Any]:
    """One round with a fresh node B (under callgrind, writing ``valgrind_out``, if given; its output to ``log``)."""
    port = common.free_port()
    conf = workdir / f"b-{port}.toml"
    node_config(conf, workdir / f"data-{port}", args.services)
    argv = [sys.executable, "-m", "aiobroker", "serve", "--config", str(conf), "--listen", f"{LOOPBACK}:{port}",
            "--http", "off"]
    if args.profile is not None and valgrind_out is None:
        argv[1:1] = ["-m", "cProfile", "-o", str(args.profile)]
    if valgrind_out is not None:
        # the counts up to the interpreter's exit are dumped apart (VALGRIND_OUT.1; see before_exit)
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={valgrind_out}", "--dump-before=Py_FinalizeEx",
                *argv]
    log = log or common.LOGS_DIR / f"newconv-node-{port}.log"
    # started in the tree measured: ``python -m`` puts its working directory first on the path, ahead of PYTHONPATH
    node = common.start_process(argv, log_path=log, env=tree_env(), cwd=TREE)
    peer: subprocess.Popen[str] | None = None
    try:
        common.wait_for_port(port, proc=node, what="node B", log_path=log,
                             timeout=VALGRIND_START if valgrind_out else 60)
        peer = subprocess.Popen(
            [sys.executable, __file__, "peer", "--port", str(port), "--messages", str(messages), "--services",
             str(args.services), "--size", str(args.size), "--frame", str(args.frame), "--window", str(args.window)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **tree_env()}, cwd=TREE)
        assert peer.stdout is not None
        if peer.stdout.readline().strip() != "ready":
            raise BenchError(f"the peer did not start (exit {peer.wait(timeout=10)})")
        if messages:
            rss_before = common.rss_bytes(node.pid)
            out = common.run_async(consume, port, messages, args.receivers, args.receive_batch, peer, node.pid,
                                   float(ROUND_TIMEOUT))
            rss_after = out.pop("node_rss_settled")  # every message committed, every conversation still open at B
            out["node_rss_growth"] = rss_after - rss_before if rss_before and rss_after else None
            line = peer.stdout.readline()
            out.update(json.loads(line) if line.startswith("{") else {"peer_cpu_s": None})
        else:
            out = {}
        return out
    finally:
        if peer is not None:
            common.stop_process(peer)
        code = common.stop_process(node, grace=120 if valgrind_out else 5)
        if valgrind_out is not None and code != 0:
            raise BenchError(f"node B under callgrind exited with {code} (log: {log})")


def before_exit(valgrind_out: Path, log: Path) -> int:
    """The instructions node B ran before its interpreter's exit: the part callgrind dumped on entering
    ``Py_FinalizeEx`` (``VALGRIND_OUT.1``). The exit is left out because its collections walk every object still
    alive, the endpoints of all the messages among them (~4,000 instructions a message at 30,000): work a node does
    once, when it stops, which counted as if done per message."""
    part = Path(f"{valgrind_out}.1")
    found = re.findall(r"^summary: (\d+)$", part.read_text(errors="replace"), re.MULTILINE) if part.exists() else []
    if not found:
        raise BenchError(f"callgrind dumped no count before node B's exit ({part}; log: {log})")
    return int(found[-1])


def instructions(args: argparse.Namespace, workdir: Path) -> float:
    """Node B's instructions per message: a callgrind run with ``--messages`` less one with none. The peer sends a
    frame only once the last one is acknowledged (``--window`` is ``--frame``), so that the node takes each frame
    by itself and hands it to one receive, whatever the machine's load: with frames queued up, how many a read
    takes, and how they are split into receive batches, depend on timing, and moved the count by 20%."""
    args = argparse.Namespace(**{**vars(args), "window": args.frame})
    counts = []
    for messages in (0, args.messages):
        print(f"  callgrind: node B with {messages:,} messages ...", flush=True)
        where = args.keep_callgrind or workdir
        where.mkdir(parents=True, exist_ok=True)
        log = where / f"callgrind-{messages}.log"
        one_round(args, workdir, messages, where / f"callgrind-{messages}.out", log)
        counts.append(before_exit(where / f"callgrind-{messages}.out", log))
    return (counts[1] - counts[0]) / args.messages


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="See the top of benchmarks/bench_new_conversations.py for how to compare trees.")
    p.add_argument("--messages", type=int, default=30_000, help="messages a round, each a new conversation (30,000)")
    p.add_argument("--services", type=int, default=1000, help="services on node B they go to, in turn (1,000)")
    p.add_argument("--size", type=int, default=128, help="body bytes (128; at least 16)")
    p.add_argument("--frame", type=int, default=1000, help="envelopes per ENVELOPES frame (1,000, as a link sends)")
    p.add_argument("--window", type=int, default=10_000, help="unacknowledged messages the peer allows (10,000)")
    p.add_argument("--receivers", type=int, default=64, help="receives in flight (64, as the storm's consumer)")
    p.add_argument("--receive-batch", type=int, default=1000, help="max_messages and max_groups a receive (1,000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, a fresh node each; the median is reported (3)")
    p.add_argument("--instructions", action="store_true", help="also count node B's instructions under callgrind")
    p.add_argument("--keep-callgrind", type=Path, metavar="DIR",
                   help="with --instructions: keep callgrind's files here (read them with callgrind_annotate)")
    p.add_argument("--profile", type=Path, help="run node B under cProfile, its statistics to this file (read"
                   " them with python -m pstats); it costs the node about twice its CPU")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    for name in ("messages", "services", "frame", "window", "receivers", "receive_batch", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.size < 16:
        p.error("--size must be at least 16 (a body carries its number)")
    if args.window < args.frame:
        p.error("--window must be at least --frame (a frame goes whole)")
    return args


def rss_text(growth: float | None, conversations: int) -> str:
    """Node B's RSS growth over a round, in words: every conversation is still open at the end, so it is what each
    one holds (its endpoint, group and index entries; the messages were received and committed)."""
    if growth is None:
        return "not read"
    return f"+{growth / 2**20:.1f} MiB, {growth / conversations:,.0f} B a conversation"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    print(f"aiobroker from {TREE}: {args.messages:,} messages a round, each on a new conversation from a peer,"
          f" {args.receivers} receives in flight of up to {args.receive_batch:,}", flush=True)
    check_children_import_the_tree()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="newconv-") as tmp:
        workdir = Path(tmp)
        for r in range(args.rounds):
            out = one_round(args, workdir, args.messages)
            rounds.append(out)
            n = args.messages
            print(f"  round {r + 1}: node B {out['node_cpu_s'] / n * 1e6:.2f} us/message (user"
                  f" {out['node_user_s'] / n * 1e6:.1f}, system {out['node_system_s'] / n * 1e6:.1f}), client"
                  f" {out['client_cpu_s'] / n * 1e6:.2f} us/message, {n / out['seconds']:,.0f} msg/s; node B's RSS"
                  f" {rss_text(out.get('node_rss_growth'), n)}", flush=True)
        per = {key: statistics.median(x[key] for x in rounds) / args.messages * 1e6
               for key in ("node_cpu_s", "client_cpu_s")}
        result: dict[str, Any] = {"tree": str(TREE), "messages": args.messages, "rounds": rounds,
                                  "node_us_per_message": per["node_cpu_s"],
                                  "client_us_per_message": per["client_cpu_s"]}
        growth = [x["node_rss_growth"] for x in rounds if x.get("node_rss_growth") is not None]
        result["node_rss_growth_per_conversation"] = statistics.median(growth) / args.messages if growth else None
        print(f"median: node B {per['node_cpu_s']:.2f} us CPU per message, client {per['client_cpu_s']:.2f} us;"
              f" node B's RSS {rss_text(statistics.median(growth) if growth else None, args.messages)}")
        if args.instructions:
            result["node_instructions_per_message"] = instructions(args, workdir)
            print(f"node B: {result['node_instructions_per_message']:,.0f} instructions per message (callgrind)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "peer":
        raise SystemExit(peer_main(sys.argv[2:]))
    try:
        raise SystemExit(main(sys.argv[1:]))
    except BenchError as exc:
        print(f"bench_new_conversations: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
