"""The baseline: a bare relay process that parses frames and forwards them.

What a Python process on uvloop + anyio streams can do when all it does per message is find the frame in a
received chunk, decode it (aiobroker's :class:`FrameDecoder`: length prefix + msgpack) and pass it on, with one
joined write per received chunk. A broker node does that and much more (routing, storing, acknowledging), so its
throughput is reported as a fraction of this.

Three ways to run this file::

    python benchmarks/relay.py [--hops 1,2] [--sizes 128,4096] ...   # the baseline benchmark (see --help)
    python benchmarks/relay.py serve --port P [--forward-to HOST:P2]  # one relay process (see serve --help)
    python benchmarks/relay.py load ...                                # the load generator (internal)

Protocol. Every frame is aiobroker's wire frame (4-byte big-endian length + msgpack body). A connection's first
frame says its role: ``["hello", "producer"]`` or ``["hello", "consumer"]``. The relay pairs a producer with a
consumer, answers the producer ``["ready"]``, then forwards every frame the producer sends to the consumer, and
the producer's end of stream to the consumer. A relay started with ``--forward-to`` does not take consumers: for
each producer it connects to the next relay as that relay's producer (``--hops 2``: producer -> relay -> relay ->
consumer, the baseline for federation). A message is one frame whose msgpack body is a bin: the message body
(send time, sequence number, padding; see common.py).

Forwarding (``--forward``):

* ``slice`` (default): each received chunk is fed to a FrameDecoder, which decodes and validates every whole
  frame in it; the bytes of exactly those whole frames (the original bytes, including any partial frame carried
  over from the previous chunk) are sent on in one write, and the tail of an incomplete frame is kept for the
  next chunk. Nothing is forwarded that was not decoded as a whole frame.
* ``reencode``: the decoded frames are encoded again (``encode_frames``) into the one write.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, cast

if str(Path(__file__).resolve().parent) not in sys.path:  # run as `python -m benchmarks.<name>`
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import pauses  # noqa: E402
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

import anyio  # noqa: E402  (after common, which puts the repository on sys.path)
from anyio.abc import SocketListener, SocketStream  # noqa: E402


def _load_codec() -> Any:
    """aiobroker's wire codec. If the package does not import (it is being edited), load codec.py and errors.py
    directly, so the baseline still runs; if even that fails, stop with one line."""
    try:
        from aiobroker.wire import codec

        return codec
    except Exception as exc:  # noqa: BLE001
        first = f"{type(exc).__name__}: {exc}"
    import importlib.util
    import types

    root = common.REPO / "aiobroker"
    try:
        for name, path in (("_bench_aiobroker", root), ("_bench_aiobroker.wire", root / "wire")):
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(path)]
            sys.modules[name] = pkg
        mods = []
        for name, path in (("_bench_aiobroker.errors", root / "errors.py"),
                           ("_bench_aiobroker.wire.codec", root / "wire" / "codec.py")):
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
            mods.append(mod)
    except Exception as exc:  # noqa: BLE001
        sys.exit(f"error: the relay needs aiobroker/wire/codec.py and cannot load it ({first}; then "
                 f"{type(exc).__name__}: {exc})")
    if not os.environ.get("AIOBROKER_BENCH_CHILD"):
        print(f"note: aiobroker does not import ({first[:160]}); the relay loaded aiobroker/wire/codec.py directly",
              file=sys.stderr)
    return mods[-1]


_codec = _load_codec()
FrameDecoder, encode_frame, encode_frames = _codec.FrameDecoder, _codec.encode_frame, _codec.encode_frames

RELAY_PY = Path(__file__).resolve()

HELLO_PRODUCER = encode_frame(["hello", "producer"])
HELLO_CONSUMER = encode_frame(["hello", "consumer"])
READY = encode_frame(["ready"])

#: The most one ``receive()`` returns. uvloop hands over at most ~256 KB per read; anything smaller than that
#: would make anyio split chunks (more iterations, more writes) for no reason.
RECV_MAX = 1 << 20
HANDSHAKE_TIMEOUT = 15.0
PAIR_TIMEOUT = 30.0
#: Count bound for one forwarding session (the time bound is the relay's lifetime).
MAX_CHUNKS_PER_SESSION = 1 << 40

#: Count bound for the accept loop (the time bound is the relay's lifetime, --max-seconds).
MAX_CONNECTIONS = 100_000

STREAM_ERRORS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


async def read_one_frame(stream: SocketStream, timeout: float) -> Any:
    """Read exactly one frame (the hello or the ready); nothing may follow it until it is answered."""
    decoder = FrameDecoder()
    with anyio.fail_after(timeout):
        for _ in range(10_000):
            frames = decoder.feed(await stream.receive())
            if frames:
                if len(frames) > 1 or decoder.buffered:
                    raise BenchError("peer sent data before its handshake was answered")
                return frames[0]
    raise BenchError("no handshake frame after 10,000 reads")


# --- the relay process ----------------------------------------------------------------------------------------


async def forward(src: SocketStream, dst: SocketStream, mode: str) -> tuple[int, int]:
    """Forward whole frames from ``src`` to ``dst`` until ``src`` ends; one write per received chunk."""
    decoder = FrameDecoder()
    feed = decoder.feed
    receive = src.receive
    send = dst.send
    carry = b""  # slice mode: the bytes of the incomplete frame the decoder holds (same bytes, same length)
    frames_total = 0
    chunks = 0
    if mode == "slice":
        for chunks in range(1, MAX_CHUNKS_PER_SESSION):  # noqa: B007
            try:
                chunk = await receive(RECV_MAX)
            except STREAM_ERRORS:
                break
            frames = feed(chunk)
            if not frames:
                carry += chunk
                continue
            frames_total += len(frames)
            # The carried-over start of a frame + the whole frames of this chunk, joined with one copy; the
            # tail of an incomplete frame (always inside this chunk: the carry held no whole frame) is kept.
            rest = decoder.buffered
            if rest:
                cut = len(chunk) - rest
                data = b"".join((carry, memoryview(chunk)[:cut])) if carry else chunk[:cut]
                carry = chunk[cut:]
            else:
                data = carry + chunk if carry else chunk
                carry = b""
            await send(data)
    else:
        for chunks in range(1, MAX_CHUNKS_PER_SESSION):  # noqa: B007
            try:
                chunk = await receive(RECV_MAX)
            except STREAM_ERRORS:
                break
            frames = feed(chunk)
            if frames:
                frames_total += len(frames)
                await send(encode_frames(frames))
    if decoder.buffered:
        print(f"relay: producer ended inside a frame ({decoder.buffered} bytes dropped)", file=sys.stderr)
    return frames_total, chunks


class Relay:
    def __init__(self, forward_to: tuple[str, int] | None, mode: str, max_seconds: float) -> None:
        self.forward_to = forward_to
        self.mode = mode
        self.max_seconds = max_seconds
        self.consumers_tx, self.consumers_rx = anyio.create_memory_object_stream[
            tuple[SocketStream, anyio.Event]
        ](16)

    async def handle(self, stream: SocketStream) -> None:
        try:
            async with stream:
                await self._handle(stream)
        except anyio.EndOfStream:
            pass  # a readiness probe (connect, close) or a peer that left before saying hello
        except Exception as exc:  # noqa: BLE001 - one connection's failure must not stop the relay
            print(f"relay: connection failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    async def _handle(self, stream: SocketStream) -> None:
        hello = await read_one_frame(stream, HANDSHAKE_TIMEOUT)
        role = hello[1] if isinstance(hello, list) and len(hello) == 2 and hello[0] == "hello" else None
        if role == "consumer":
            if self.forward_to is not None:
                raise BenchError("this relay forwards to another relay; connect the consumer there")
            done = anyio.Event()
            await self.consumers_tx.send((stream, done))
            with anyio.move_on_after(self.max_seconds):
                await done.wait()
        elif role == "producer":
            await self._produce(stream)
        else:
            raise BenchError(f"first frame is not a hello: {hello!r:.80}")

    async def _produce(self, producer: SocketStream) -> None:
        done: anyio.Event | None = None
        if self.forward_to is not None:
            host, port = self.forward_to
            downstream = await anyio.connect_tcp(host, port)
            await downstream.send(HELLO_PRODUCER)
            if await read_one_frame(downstream, PAIR_TIMEOUT) != ["ready"]:
                raise BenchError("next relay did not answer ready")
        else:
            with anyio.fail_after(PAIR_TIMEOUT):
                downstream, done = await self.consumers_rx.receive()
        try:
            await producer.send(READY)
            t0, c0 = time.monotonic(), time.process_time()
            frames, chunks = await forward(producer, downstream, self.mode)
            dt, cpu = time.monotonic() - t0, time.process_time() - c0
            try:
                await downstream.send_eof()
            except STREAM_ERRORS:
                pass
            print(f"relay: session done: {frames:,} frames in {chunks:,} chunks, {dt:.2f} s, cpu {cpu:.2f} s", flush=True)
        finally:
            if done is not None:
                done.set()
            else:
                await downstream.aclose()


async def serve_main(args: argparse.Namespace) -> None:
    forward_to = None
    if args.forward_to:
        host, _, port = args.forward_to.rpartition(":")
        forward_to = (host or LOOPBACK, int(port))
    relay = Relay(forward_to, args.forward, args.max_seconds)
    listener = await anyio.create_tcp_listener(local_host=args.host, local_port=args.port)
    async with anyio.create_task_group() as tg:

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(on_signal)
        tg.cancel_scope.deadline = anyio.current_time() + args.max_seconds
        to = f" -> {forward_to[0]}:{forward_to[1]}" if forward_to else ""
        print(f"relay listening on {args.host}:{args.port}{to} (forward={args.forward})", flush=True)
        async with listener:
            accept = cast(SocketListener, listener.listeners[0]).accept  # one loopback address, one listener
            for _ in range(MAX_CONNECTIONS):
                tg.start_soon(relay.handle, await accept())
            print(f"relay: stopping after {MAX_CONNECTIONS:,} connections", flush=True)
            tg.cancel_scope.cancel()


def serve_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="relay.py serve",
        description="Run one relay process: pair a producer with a consumer and forward frames between them "
        "(or, with --forward-to, forward each producer's frames to the next relay). Stops on SIGTERM/SIGINT or "
        "after --max-seconds.",
    )
    p.add_argument("--host", default=LOOPBACK)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--forward-to", metavar="HOST:PORT", help="chain: forward to the relay at HOST:PORT")
    p.add_argument("--forward", choices=("slice", "reencode"), default="slice",
                   help="send on the original bytes of the decoded frames (slice) or re-encode them")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="lifetime bound (default: 3600)")
    args = p.parse_args(argv)
    common.run_async(serve_main, args)
    return 0


# --- the load generator (one process: producer and consumer) --------------------------------------------------


def frame_template(size: int, count: int) -> tuple[bytearray, list[int], int]:
    """``count`` message frames of ``size``-byte bodies, and the offset of each body (to patch in place)."""
    one = encode_frame(make_body(size, 0, 0))
    frame_size = len(one)
    body_at = frame_size - size
    buf = bytearray(encode_frames([make_body(size, 0, 0)] * count))
    return buf, [i * frame_size + body_at for i in range(count)], frame_size


async def connect_pair(entry_port: int, exit_port: int) -> tuple[SocketStream, SocketStream]:
    consumer = await anyio.connect_tcp(LOOPBACK, exit_port)
    await consumer.send(HELLO_CONSUMER)
    producer = await anyio.connect_tcp(LOOPBACK, entry_port)
    await producer.send(HELLO_PRODUCER)
    if await read_one_frame(producer, PAIR_TIMEOUT) != ["ready"]:
        raise BenchError("relay did not answer ready")
    return producer, consumer


def describe_mismatch(chunk: bytes, pos: int, stream_offset: int, frame_size: int, size: int) -> str:
    """Name the message whose bytes differ from what was sent (and its sequence number, if readable)."""
    index = stream_offset // frame_size  # the message the first differing byte belongs to
    seq_at = pos - stream_offset % frame_size + (frame_size - size) + 8  # where that frame's seq is, in chunk
    got = ""
    if 0 <= seq_at and seq_at + 8 <= len(chunk):
        got = f", found seq {int.from_bytes(chunk[seq_at:seq_at + 8], 'big')} there"
    return f"received bytes differ from the sent ones in message {index:,} (expected seq {index}{got})"


async def load_throughput(args: argparse.Namespace) -> dict[str, Any]:
    n, size, batch = args.messages, args.size, args.batch
    deadline = Deadline(args.max_seconds)
    producer, consumer = await connect_pair(args.entry_port, args.exit_port)
    buf, offsets, frame_size = frame_template(size, batch)
    pack_into = common.BODY_HEADER.pack_into
    pending: collections.deque[bytes] = collections.deque()  # bytes mode: what was sent and not yet checked
    state: dict[str, Any] = {"t_first": None, "t_last": None, "sent": 0}
    checker = SequenceChecker(n)
    progress = Progress(f"relay {fmt_size(size)} x{args.hops} hop(s) received", n)
    errors: list[str] = []

    async def produce() -> None:
        sent = 0
        for _ in range(n // batch + 2):
            if sent >= n or deadline.passed:
                break
            k = min(batch, n - sent)
            now = time.monotonic_ns()
            for i in range(k):
                pack_into(buf, offsets[i], now, sent + i)
            data = bytes(memoryview(buf)[: k * frame_size])
            if args.verify == "bytes":
                pending.append(data)
            if state["t_first"] is None:
                state["t_first"] = time.monotonic_ns()
            await producer.send(data)
            sent += k
            state["sent"] = sent
        await producer.send_eof()

    async def consume_bytes() -> None:
        # Compare the received stream with the sent one, byte for byte, without copying: every frame, so every
        # sequence number 0..n-1, must arrive exactly once, in order, intact. (A mismatch is then decoded to name
        # the sequence number.) Cheaper than decoding, so in the baseline the relay, not the load, is the limit.
        received_bytes = 0
        head = b""
        head_off = 0
        for _ in range(1 << 40):
            try:
                chunk = await consumer.receive(RECV_MAX)
            except STREAM_ERRORS:
                break
            view = memoryview(chunk)
            pos, end = 0, len(chunk)
            while pos < end:
                if head_off == len(head):
                    if not pending:
                        errors.append(f"{end - pos:,} bytes arrived beyond what was sent (duplicates or garbage)"
                                      f" after message {received_bytes // frame_size:,}")
                        return
                    head, head_off = pending.popleft(), 0
                k = min(len(head) - head_off, end - pos)
                if not head.startswith(view[pos : pos + k], head_off):
                    d = next(i for i in range(k) if head[head_off + i] != chunk[pos + i])
                    errors.append(describe_mismatch(chunk, pos + d, received_bytes + d, frame_size, size))
                    return
                pos += k
                head_off += k
                received_bytes += k
            checker.expected = received_bytes // frame_size
            if checker.expected >= n and state["t_last"] is None:
                state["t_last"] = time.monotonic_ns()
            progress.tick(checker.expected)
        if received_bytes % frame_size:
            errors.append(f"the stream ended inside message {received_bytes // frame_size:,}")

    async def consume_decode() -> None:
        decoder = FrameDecoder()
        see = checker.see
        for _ in range(1 << 40):
            try:
                chunk = await consumer.receive(RECV_MAX)
            except STREAM_ERRORS:
                break
            for body in decoder.feed(chunk):
                see(body_seq(body))
            if checker.complete and state["t_last"] is None:
                state["t_last"] = time.monotonic_ns()
            progress.tick(checker.expected)

    with anyio.move_on_after(deadline.left()) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume_bytes if args.verify == "bytes" else consume_decode)
            await produce()
    await producer.aclose()
    await consumer.aclose()
    summary = checker.summary()
    if errors:
        summary["exactly_once"] = False
        summary["first_problems"] = errors + summary["first_problems"]
    timed_out = scope.cancelled_caught
    received = checker.expected
    # All n arrived: n / (first send -> last receive). Otherwise a partial figure over the time it ran.
    elapsed = (state["t_last"] or time.monotonic_ns()) - (state["t_first"] or time.monotonic_ns())
    return {
        "mode": "throughput",
        "size": size,
        "hops": args.hops,
        "messages": n,
        "sent": state["sent"],
        "batch": batch,
        "elapsed_s": elapsed / 1e9,
        "received": received,
        "throughput": throughput(n if state["t_last"] else received, elapsed),
        "timed_out": timed_out,
        "verify": args.verify,
        "check": summary,
    }


async def load_latency(args: argparse.Namespace) -> dict[str, Any]:
    size, rate = args.size, args.rate
    total = int(rate * (args.warmup + args.duration))
    deadline = Deadline(args.max_seconds)
    producer, consumer = await connect_pair(args.entry_port, args.exit_port)
    checker = SequenceChecker(total)
    samples: list[tuple[int, int, int]] = []  # (seq, send ns, receive ns)
    progress = Progress(f"relay {fmt_size(size)} latency at {rate:,.0f} msg/s", total)

    async def send_batch(first: int, count: int) -> None:
        await producer.send(encode_frames([make_body(size, first + i) for i in range(count)]))

    async def consume() -> None:
        decoder = FrameDecoder()
        for _ in range(1 << 40):
            try:
                chunk = await consumer.receive(RECV_MAX)
            except STREAM_ERRORS:
                break
            now = time.monotonic_ns()
            for body in decoder.feed(chunk):
                seq = body_seq(body)
                samples.append((seq, body_send_ns(body), now))
                checker.see(seq)
            if checker.complete:
                break

    pace: dict[str, Any] = {}
    with anyio.move_on_after(deadline.left()) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            pace = await common.paced_send(send_batch, rate=rate, total=total, tick=args.tick,
                                           max_seconds=args.warmup + args.duration + 5.0, progress=progress)
            await producer.send_eof()
    await producer.aclose()
    await consumer.aclose()
    return {
        "mode": "latency",
        "size": size,
        "hops": args.hops,
        "rate": rate,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "pacing": pace,
        **common.latency_report(samples, start_ns=pace.get("start_ns", 0), warmup=args.warmup, rate=rate,
                                samples_out=args.samples_out),
        "timed_out": scope.cancelled_caught,
        "check": checker.summary(),
    }


def load_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="relay.py load", description="Load generator for the relay (internal).")
    p.add_argument("--entry-port", type=int, required=True)
    p.add_argument("--exit-port", type=int, required=True)
    p.add_argument("--hops", type=int, default=1)
    p.add_argument("--mode", choices=("throughput", "latency"), required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--messages", type=int, default=500_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--verify", choices=("bytes", "decode"), default="bytes")
    p.add_argument("--rate", type=float, default=5000.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--tick", type=float, default=0.001)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--samples-out", help="latency mode: write the measured [send ns, receive ns] pairs here (JSON)")
    args = p.parse_args(argv)
    fn = load_throughput if args.mode == "throughput" else load_latency
    return common.worker_main("relay-load", lambda: common.run_async(fn, args))


# --- the benchmark (orchestration) ----------------------------------------------------------------------------


def run_relay_case(
    *,
    mode: str,
    size: int,
    hops: int = 1,
    messages: int = 500_000,
    batch: int = 1000,
    forward: str = "slice",
    verify: str = "bytes",
    rate: float = 5000.0,
    duration: float = 5.0,
    warmup: float = 1.0,
    max_seconds: float = 120.0,
    pin: bool = False,
    wait_idle: float = 0.0,
) -> dict[str, Any]:
    """Start ``hops`` relay processes, run the load process against them, stop them; return the load's result."""
    ports = [common.free_port() for _ in range(hops)]
    server_cpus, load_cpus = common.cpu_plan(pin, hops)
    procs: list[tuple[Any, Path]] = []
    try:
        for i in reversed(range(hops)):  # the exit relay first, so each relay's next hop is already up
            argv = [sys.executable, str(RELAY_PY), "serve", "--port", str(ports[i]), "--forward", forward,
                    "--max-seconds", str(max_seconds + 60)]
            if i < hops - 1:
                argv += ["--forward-to", f"{LOOPBACK}:{ports[i + 1]}"]
            log = LOGS_DIR / f"relay-hop{i + 1}.log"
            procs.append((start_process(argv, log_path=log, cpus=server_cpus[i]), log))
            wait_for_port(ports[i], proc=procs[-1][0], what=f"relay (hop {i + 1})", log_path=log)
        argv = [sys.executable, str(RELAY_PY), "load", "--entry-port", str(ports[0]), "--exit-port",
                str(ports[-1]), "--hops", str(hops), "--mode", mode, "--size", str(size), "--messages",
                str(messages), "--batch", str(batch), "--verify", verify, "--rate", str(rate), "--duration",
                str(duration), "--warmup", str(warmup), "--max-seconds", str(max_seconds)]
        if wait_idle:
            common.wait_until_quiet(wait_idle, say=lambda m: print(m, flush=True))
        meter = common.CpuMeter([proc.pid for proc, _ in procs])
        what = f"relay load ({mode}, {fmt_size(size)})"
        if mode == "latency":
            result = common.run_latency_worker(argv, timeout=max_seconds + 30, what=what, cpus=load_cpus)
        else:
            result = run_worker(argv, timeout=max_seconds + 30, what=what, cpus=load_cpus)
        result["cpu"] = meter.stop()
        return result
    finally:
        for proc, _ in procs:
            stop_process(proc)


def describe_run(res: dict[str, Any]) -> str:
    """One progress line for a finished throughput run."""
    cpu = res.get("cpu", {})
    ok = "exactly-once ok" if res["check"]["exactly_once"] and not res["timed_out"] else "EXACTLY-ONCE FAILED"
    others = common.CpuMeter.contention(cpu)
    busy = f", OTHER PROCESSES (OR STEAL) TOOK {others:.2f} CORES" if others > common.BUSY_THRESHOLD else ""
    return (f"{fmt_rate(res['throughput'])} msg/s in {res['elapsed_s']:.2f} s; server cpu "
            f"{cpu.get('server_cpu_s', 0):.2f} s, load cpu {cpu.get('load_cpu_s', 0):.2f} s; {ok}{busy}")


def describe_latency(res: dict[str, Any]) -> str:
    """One progress line for a finished latency run."""
    lat, pace, sched = res["latency"], res["pacing"], res.get("from_schedule", {})
    others = common.CpuMeter.contention(res.get("cpu", {}))
    busy = f", OTHER PROCESSES (OR STEAL) TOOK {others:.2f} CORES" if others > common.BUSY_THRESHOLD else ""
    ok = "" if res["check"]["exactly_once"] else "; *** EXACTLY-ONCE FAILED ***"
    platform = ""
    if "pauses" in res:
        outside = res["outside_pauses"]
        platform = (f"; {pauses.describe(res['pauses'])}" + (" (DISTURBED)" if res.get("disturbed") else "")
                    + f"; outside the pauses p99 {fmt_ms(outside['p99_ms'])} ms of {outside['samples']:,}")
    return (f"p50 {fmt_ms(lat['p50_ms'])} ms, p99 {fmt_ms(lat['p99_ms'])} ms, max {fmt_ms(lat['max_ms'])} ms "
            f"({lat['samples']:,} samples; sent at {pace.get('achieved_rate', 0):,.0f} msg/s; counted from when "
            f"each was due: p99 {fmt_ms(sched.get('p99_ms'))} ms, max {fmt_ms(sched.get('max_ms'))} ms)"
            f"{platform}{ok}{busy}")


def relay_throughput(size: int, hops: int, repeat: int, **kw: Any) -> dict[str, Any]:
    """Median of ``repeat`` throughput runs, with every run kept."""
    runs = []
    retries = kw.pop("retry_busy", 0)
    for r in range(repeat):
        res = common.run_unless_busy(functools.partial(run_relay_case, mode="throughput", size=size, hops=hops, **kw),
                                     retries, f"relay {fmt_size(size)} {hops} hop(s)")
        runs.append(res)
        print(f"    relay {fmt_size(size)} {hops} hop(s) run {r + 1}/{repeat}: {describe_run(res)}", flush=True)
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


def bench_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="relay.py",
        description="Relay baseline: throughput and latency of a bare frame-forwarding relay (1 or 2 hops). "
        "Also: 'relay.py serve --help' (one relay process).",
    )
    p.add_argument("--hops", default="1,2", help="comma list of hop counts, 1 and/or 2 (default: 1,2)")
    p.add_argument("--sizes", default="128,4096", help="body sizes in bytes (default: 128,4096)")
    p.add_argument("--messages", type=int, help="messages per throughput run (default 1,000,000; --quick 50,000)")
    p.add_argument("--batch", type=int, default=1000, help="messages per producer write (default: 1000)")
    p.add_argument("--repeat", type=int, help="throughput runs per case; the median is reported (default 3; "
                   "--quick 1)")
    p.add_argument("--rate", type=float, default=5000.0, help="latency run: messages per second (default: 5000)")
    p.add_argument("--duration", type=float, help="latency run: measured seconds (default 5; --quick 1.5)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency runs")
    p.add_argument("--forward", choices=("slice", "reencode"), default="slice",
                   help="relay forwarding: original bytes of decoded frames (default) or re-encoded frames")
    p.add_argument("--verify", choices=("bytes", "decode"), default="bytes",
                   help="consumer check: compare the received stream with the sent one byte for byte "
                   "(default; cheap, so the relay is the bottleneck) or decode every frame and check its seq")
    p.add_argument("--pin", action="store_true", help="pin the relay(s) to the first CPUs and the load to the last")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each run, wait up to S seconds for other processes to leave the CPUs idle")
    p.add_argument("--retry-busy", type=int, default=0, metavar="K",
                   help=common.RETRY_BUSY_HELP)
    p.add_argument("--quick", action="store_true", help="small run for a smoke test (~15 s)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="bound on each run (default: 120)")
    args = p.parse_args(argv)
    hops_list = [int(h) for h in args.hops.split(",") if h.strip()]
    if any(h not in (1, 2) for h in hops_list):
        p.error("--hops takes 1 and/or 2")
    sizes = common.parse_sizes(args.sizes)
    messages = args.messages or (50_000 if args.quick else 1_000_000)
    repeat = args.repeat or (1 if args.quick else 3)
    duration = args.duration or (1.5 if args.quick else 5.0)
    warmup = 0.3 if args.quick else 1.0
    kw = dict(messages=messages, batch=args.batch, forward=args.forward, verify=args.verify,
              max_seconds=args.max_seconds, pin=args.pin, wait_idle=args.wait_idle, retry_busy=args.retry_busy)
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    failed = False
    try:
        for hops in hops_list:
            for size in sizes:
                print(f"relay baseline: {fmt_size(size)} bodies, {hops} hop(s), {messages:,} messages x {repeat}",
                      flush=True)
                thr = relay_throughput(size, hops, repeat, **kw)
                lat = None
                if not args.no_latency:
                    print(f"    latency at {args.rate:,.0f} msg/s for {duration} s ...", flush=True)
                    lat = common.run_unless_busy(
                        functools.partial(run_relay_case, mode="latency", size=size, hops=hops, rate=args.rate,
                                          duration=duration, warmup=warmup, max_seconds=args.max_seconds,
                                          forward=args.forward, pin=args.pin, wait_idle=args.wait_idle),
                        args.retry_busy, f"relay {fmt_size(size)} latency")
                    print(f"    {describe_latency(lat)}", flush=True)
                once = thr["exactly_once"] and (lat is None or lat["check"]["exactly_once"])
                failed |= not once
                results.append({"hops": hops, "size": size, "throughput": thr, "latency": lat})
                others = max(thr["others_cores"], common.CpuMeter.contention((lat or {}).get("cpu", {})))
                rows.append([
                    hops, fmt_size(size), fmt_rate(thr["throughput"]),
                    f"{thr['throughput'] * size / 1e6:,.0f}",
                    f"{fmt_rate(thr['throughput_min'])}-{fmt_rate(thr['throughput_max'])}",
                    f"{thr['server_us_per_msg']:.2f}",
                    fmt_ms(lat["latency"]["p50_ms"]) if lat else "-",
                    fmt_ms(lat["latency"]["p99_ms"]) if lat else "-",
                    "ok" if once else "FAILED",
                    f"{others:.2f}" + (" BUSY" if others > common.BUSY_THRESHOLD else ""),
                ])
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print_table(["hops", "body", "msg/s (median)", "body MB/s", "min-max msg/s", "relay cpu us/msg", "p50 ms",
                 "p99 ms", "exactly-once", "others' cores"], rows)
    if any(r[-1].endswith("BUSY") for r in rows):
        print("note: other processes used CPU during a run marked BUSY; its figures understate the relay "
              "(use --wait-idle, or rerun on a quiet machine)")
    path = common.write_results("relay", {"settings": {**kw, "repeat": repeat, "rate": args.rate,
                                                       "duration": duration, "warmup": warmup},
                                          "cases": results})
    print(f"\nresults: {path}")
    if failed:
        print("\n*** EXACTLY-ONCE CHECK FAILED: see the table and the JSON results ***", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        return serve_cli(argv[1:])
    if argv and argv[0] == "load":
        return load_cli(argv[1:])
    common.sigterm_as_interrupt()
    try:
        return bench_cli(argv)
    except KeyboardInterrupt:
        print("interrupted (the relay and load processes were stopped)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
