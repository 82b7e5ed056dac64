"""Resolution storm: many conversations DELAYED on services nobody has routed yet, then one answer per service.

Node A (memory store by default, ``--store sqlite`` too) has the ``http`` resolver pointed at a registry process and
NO route to the target services; node B (memory store) has them all, on one queue. The registry
(``tests/http_registry.py``'s server, with a gate added here: see ``registry --help``) knows every service but holds
each answer until the run releases it, so every conversation is DELAYED first:

1. begin S services x C conversations (pipelined ``begin_dialog``), send M messages of ``--size`` bytes on each
   (pipelined ``start_send_many``); read A's RSS (``/proc/PID/status``) before and after, and check that
   ``status()["dynamic_routing"]`` shows all S*C*M messages delayed and S requests made;
2. release the registry's answers; a consumer on B (``--receivers`` receives in flight, ``start_commit``) checks
   that every message arrives exactly once and in order per conversation, and notes when the last one came;
3. report the resolver requests (the registry's own log and A's ``requests_made``), the release time (last answer
   served by the registry -> last message received at B) and A's memory per delayed message.

A baseline run first (unless ``--no-baseline``) does the same with fresh processes, but A has a wildcard route to B
and no resolver, so the same conversations are begun and the same messages sent and delivered, never delayed:
the storm's RSS growth minus the baseline's is what holding the messages DELAYED costs.

Floors: resolver requests == services (both counts); the release of all delayed messages within 2 s of the last
answer; under 2,048 bytes of node memory per delayed 128-byte message (net of the baseline when it ran).

    .venv/bin/python benchmarks/bench_resolution_storm.py --quick    # 100 services x 20 conversations
    .venv/bin/python benchmarks/bench_resolution_storm.py            # 1,000 x 100 = 100,000 messages
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import storm_sources  # noqa: E402
from phase_cpu import PhaseCpu  # noqa: E402
from common import LOGS_DIR, LOOPBACK, REPO, BenchError, body_seq, fmt_size, make_body, rss_bytes  # noqa: E402

#: how often the CPU of every process is sampled, seconds (a phase shorter than this holds no sample of its own)
PHASE_SAMPLE_S = 0.02

#: what a user waits, gate opened -> last message received at B, by A's store
FLOOR_WAIT_S = {"memory": 2.0, "sqlite": 3.0}
#: last answer served -> last message received at B
FLOOR_RELEASE_S = 1.0
#: A's raw RSS growth per delayed 128 B message
FLOOR_BYTES_PER_DELAYED = 1024
#: the resolver's answers per second, as a share of what the registry gives a plain concurrent client
FLOOR_RATE_SHARE = 0.8
SERVICE_FMT = "//storm/svc-{:05d}"
INITIATOR = "//storm/initiator"
POKE_SERVICE = "//storm/poke"  # a local service on A, only for --poke-ms
TARGET_QUEUE = "storm_in"
# the registry holds answers this long at most; the resolver's timeouts must outlast it (and the httpx pool wait:
# the resolver's client keeps at most 100 connections, so the other questions wait for one, bounded by
# connect_timeout)
ANSWER_LIFETIME = 3600  # seconds an answer holds: no refresh during the run, so requests == services exactly

NODE_A = """
[node]
store = "{store}"
durability = "normal"
data_dir = "{data_dir}"
log_level = "warning"
[dynamic_routing]
max_delayed_per_service = {max_per_service}
max_delayed_messages = {max_total}
{routing}
[[queue]]
name = "storm_init_q"
[[service]]
name = "{initiator}"
queue = "storm_init_q"
contracts = []
[[service]]
name = "{poke}"
queue = "storm_init_q"
contracts = ["DEFAULT"]
"""
RESOLVER = """
[resolver]
kind = "http"
url = "http://127.0.0.1:{port}/v1/services/{{service}}"
connect_timeout = {hold}
read_timeout = {hold}
default_lifetime = {lifetime}
"""
DNS_RESOLVER = """
[resolver]
kind = "dns_srv"
domain = "{zone}"
nameservers = ["127.0.0.1:{port}"]
timeout = {hold}
"""
BCN_SERVICE = """
[[queue]]
name = "bcn-requests"
[[service]]
name = "SQL/ServiceBroker/BrokerConfiguration"
queue = "bcn-requests"
contracts = ["http://schemas.microsoft.com/SQL/ServiceBroker/BrokerConfigurationNotice",
             "https://schemas.microsoft.com/SQL/ServiceBroker/BrokerConfigurationNotice"]
"""
WILDCARD = """
[[route]]
name = "everything-to-b"
address = "tcp://127.0.0.1:{port_b}"
"""
NODE_B_HEAD = """
[node]
store = "memory"
durability = "normal"
data_dir = "{data_dir}"
log_level = "warning"
[[queue]]
name = "{queue}"
"""


# --- the registry: tests/http_registry.py's server, gated, with a timed log ------------------------------------


def registry_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bench_resolution_storm.py registry",
        description="A fast HTTP registry for the storm: an ASGI app on Hypercorn (uvloop), answering in the http"
        " resolver's aiobroker format from the same routes file as tests/http_registry.py (parsed once), at the same"
        " paths (/v1/services/<quoted name>, and .../binding). A route question with 'Aiobroker-Ask: route, binding'"
        " gets the binding as the answer's 'binding' member (the routes file's 'bindings' entry, else null), unless"
        " --route-only (an older registry). Every answer waits until the --gate file exists (a watcher task polls it"
        " every millisecond; at most --max-hold seconds, then a 503). --log gets timed JSON lines: request"
        " (arrived, with the questions it asked), served (answer written), released (the gate opened), each with"
        " t_ns (CLOCK_MONOTONIC, shared by all processes) and wall (time.time()); a request with 'Bench-Plain: 1'"
        " (the plain client's) is logged as plain_request / plain_served.",
    )
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--routes", type=Path, required=True, help="JSON routes file (tests/http_registry.py format)")
    p.add_argument("--log", type=Path, required=True, help="timed JSON-lines log")
    p.add_argument("--gate", type=Path, required=True, help="answers wait until this file exists")
    p.add_argument("--max-hold", type=float, default=900.0, help="longest an answer waits for the gate (s)")
    p.add_argument("--route-only", action="store_true", help="ignore Aiobroker-Ask: answer the route alone")
    args = p.parse_args(argv)

    import asyncio
    import signal
    from urllib.parse import unquote

    import uvloop
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    data = json.loads(args.routes.read_text())
    services, bindings = data["services"], data.get("bindings", {})
    log_file = args.log.open("a", buffering=1)

    def log_event(event: str, **fields: Any) -> None:
        log_file.write(json.dumps({"event": event, "t_ns": time.monotonic_ns(), "wall": time.time(), **fields})
                       + "\n")

    async def main() -> None:
        gate = asyncio.Event()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)

        async def watch_gate() -> None:
            for _ in range(int(args.max_hold * 1000) + 10):
                if args.gate.exists():
                    gate.set()
                    log_event("released")
                    return
                await asyncio.sleep(0.001)

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
                return
            raw = scope.get("raw_path") or scope["path"].encode()
            path = raw.decode("ascii").split("?", 1)[0]
            headers = dict(scope["headers"])
            plain = headers.get(b"bench-plain") == b"1"
            asked = headers.get(b"aiobroker-ask", b"").decode()
            prefix = "plain_" if plain else ""
            log_event(prefix + "request", path=path, ask=asked)
            status, body = 404, {"error": "no such service"}
            if not gate.is_set():
                try:
                    await asyncio.wait_for(gate.wait(), args.max_hold)
                except TimeoutError:
                    status, body = 503, {"error": "the gate never opened"}
            if status == 404 and path.startswith(SERVICES_PATH):
                quoted = path[len(SERVICES_PATH):]
                if quoted.endswith(BINDING_SUFFIX):  # the quoted name has no "/": this is the binding URL
                    spec = bindings.get(unquote(quoted[: -len(BINDING_SUFFIX)]))
                    if spec is not None:
                        status, body = 200, spec["body"]
                    else:
                        body = {"error": "no such binding"}
                elif (name := unquote(quoted)) in services:
                    status, body = 200, services[name]["body"]
                    if "binding" in asked and not args.route_only:
                        binding = bindings.get(name)
                        body = {**body, "binding": binding["body"] if binding else None}
            payload = json.dumps(body).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            log_event(prefix + "served", path=path, status=status)

        config = Config()
        config.bind = [f"{LOOPBACK}:{args.port}"]
        config.backlog = 1024
        config.keep_alive_timeout = 3600
        config.accesslog = None
        config.errorlog = "-"
        watcher = asyncio.create_task(watch_gate())
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
        watcher.cancel()

    try:
        uvloop.run(main())
    finally:
        log_file.close()
    return 0


SERVICES_PATH = "/v1/services/"
BINDING_SUFFIX = "/binding"


def read_registry_log(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


# --- the load process: begin, send, check, release, receive --------------------------------------------------


class ConversationChecker:
    """Per conversation: messages 0..M-1 exactly once, in order, on the right service. Body seq = c * M + k."""

    def __init__(self, conversations: int, per_conversation: int, services: list[str], convs_per_service: int):
        self.m = per_conversation
        self.next = [0] * conversations
        self.services = services
        self.cps = convs_per_service
        self.total = conversations * per_conversation
        self.received = 0
        self.problems = 0
        self.kept: list[str] = []

    def see(self, seq: int, service: str) -> None:
        self.received += 1
        c, k = divmod(seq, self.m)
        if c >= len(self.next):
            self._problem(f"seq {seq} is out of range")
            return
        want = self.next[c]
        if k == want:
            self.next[c] = want + 1
        elif k < want:
            self._problem(f"conversation {c}: message {k} arrived again (duplicate)")
        else:
            self._problem(f"conversation {c}: message {k} arrived while {want} was due (gap or reordering)")
            self.next[c] = k + 1
        if service != self.services[c // self.cps]:
            self._problem(f"conversation {c}: arrived on {service!r}, sent to {self.services[c // self.cps]!r}")

    def _problem(self, what: str) -> None:
        self.problems += 1
        if len(self.kept) < 5:
            self.kept.append(what)

    @property
    def in_order_complete(self) -> int:
        return sum(1 for n in self.next if n == self.m)

    def summary(self) -> dict[str, Any]:
        complete = self.in_order_complete
        return {
            "exactly_once_in_order": self.problems == 0 and complete == len(self.next) and self.received == self.total,
            "received": self.received,
            "expected": self.total,
            "conversations_complete": complete,
            "conversations": len(self.next),
            "problems": self.problems,
            "first_problems": list(self.kept),
        }


async def load(args: argparse.Namespace) -> dict[str, Any]:
    services = [SERVICE_FMT.format(i) for i in range(args.services)]
    n_conv = args.services * args.conversations
    m = args.per_conversation
    total = n_conv * m
    checker = ConversationChecker(n_conv, m, services, args.conversations)
    deadline = common.Deadline(args.max_seconds)
    out: dict[str, Any] = {"mode": args.mode, "services": args.services, "conversations": n_conv,
                           "messages": total, "size": args.size}
    say = lambda text: print(f"    .. {args.mode}: {text}", file=sys.stderr, flush=True)  # noqa: E731

    profiler: dict[str, Any] = {}

    def profile_start(phase: str) -> None:
        if args.profile:
            pid = args.pid_profile or args.pid_a
            path = LOGS_DIR / f"storm-py-spy-{args.profile}-{phase}.txt"
            profiler["proc"] = common.start_process(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-f", "raw", "-o",
                 str(path), "-r", "200"], log_path=LOGS_DIR / f"storm-py-spy-{phase}.log")
            out.setdefault("profiles", []).append(str(path))

    def profile_stop() -> None:
        proc = profiler.pop("proc", None)
        if proc is None:
            return
        import signal

        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            common.stop_process(proc)

    try:
        return await _load(args, out, checker, deadline, say, profile_start, profile_stop)
    finally:
        profile_stop()


async def _load(args: argparse.Namespace, out: dict[str, Any], checker: ConversationChecker, deadline: Any, say: Any,
                profile_start: Any, profile_stop: Any) -> dict[str, Any]:
    import aiobroker
    import anyio
    from aiobroker.client import Dialog

    storm = args.mode == "storm"
    services = checker.services
    n_conv = len(checker.next)
    m = checker.m
    total = checker.total
    rx: dict[str, Any] = {"t_first": None, "t_last": None, "last_enqueued_at": 0.0, "marks": {}}
    all_in = anyio.Event()
    async with aiobroker.connect(f"tcp://{LOOPBACK}:{args.port_a}") as ca, \
            aiobroker.connect(f"tcp://{LOOPBACK}:{args.port_b}") as cb:
        pid = args.pid_a
        out["rss_start"] = rss_bytes(pid)

        async def receiver(progress: common.Progress) -> None:
            commits: deque[Any] = deque()
            marks = (0.5, 0.9, 0.99)
            for _ in range(10 * total + 100_000):
                if checker.received >= total or deadline.passed:
                    break
                batch = await cb.receive(TARGET_QUEUE, max_messages=args.receive_batch, timeout=0.5,
                                         max_groups=args.receive_groups)
                if not batch.messages:
                    continue
                now = time.monotonic_ns()
                if rx["t_first"] is None:
                    rx["t_first"] = now
                for msg in batch.messages:
                    checker.see(body_seq(msg.body), msg.service_name)
                    if msg.enqueued_at > rx["last_enqueued_at"]:
                        rx["last_enqueued_at"] = msg.enqueued_at
                for share in marks:
                    if share not in rx["marks"] and checker.received >= share * total:
                        rx["marks"][share] = now
                if checker.received >= total and rx["t_last"] is None:
                    rx["t_last"] = now
                    all_in.set()
                commits.append(batch.start_commit())
                while commits and commits[0].done:
                    await commits.popleft().wait()
                progress.tick(checker.received, "received at B")
            for pending in commits:
                await pending.wait()

        async def consume() -> None:
            progress = common.Progress(f"{args.mode}: B", total)
            async with anyio.create_task_group() as tg:
                for _ in range(args.receivers):
                    tg.start_soon(receiver, progress)

        async def poker() -> None:
            """--poke-ms: a durable request to A every N ms (begin_timer on a local dialog, nothing else). Each
            makes A's store writer run a commit, after which the node wakes the links that have messages ready."""
            dialog = await ca.begin_dialog(INITIATOR, POKE_SERVICE)
            out["pokes"] = 0
            for _ in range(int(args.max_seconds * 1000 / args.poke_ms) + 10):
                await dialog.begin_timer(3600)
                out["pokes"] += 1
                await anyio.sleep(args.poke_ms / 1000)

        async def profile_tail() -> None:
            """--profile: a third profile ("tail") from the moment the registry has served every answer."""
            for _ in range(int(args.max_seconds * 20) + 10):
                try:
                    served = args.registry_log.read_text().count('"event": "served"')
                except OSError:
                    served = 0
                if served >= args.services:
                    profile_stop()
                    profile_start("tail")
                    say("every answer served: profiling the tail")
                    return
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)

            # 1. begin every conversation (pipelined: --window requests in flight)
            profile_start("send")
            t0 = time.monotonic()
            handles: list[str] = [""] * n_conv
            progress = common.Progress(f"{args.mode}: begin_dialog on A", n_conv)
            window: deque[tuple[int, Any]] = deque()
            for c in range(n_conv):
                if deadline.passed:
                    raise BenchError(f"begin_dialog: only {c:,} of {n_conv:,} within --max-seconds")
                window.append((c, ca.start_request("begin_dialog", {
                    "from_service": INITIATOR, "to_service": services[c // args.conversations], "contract": "DEFAULT",
                    "broker_instance": None, "lifetime": None, "encryption": False, "related_group": None})))
                if len(window) >= args.window:
                    i, pending = window.popleft()
                    handles[i] = (await pending.wait())["handle"]
                    progress.tick(i + 1)
            for i, pending in window:
                handles[i] = (await pending.wait())["handle"]
            out["begin_s"] = time.monotonic() - t0
            out["rss_begun"] = rss_bytes(pid)

            # 2. send M messages on each (one send_many per conversation, pipelined)
            t0 = time.monotonic()
            progress = common.Progress(f"{args.mode}: sent to A", total)
            sends: deque[Any] = deque()
            for c in range(n_conv):
                if deadline.passed:
                    raise BenchError(f"send: only {c:,} of {n_conv:,} conversations within --max-seconds")
                batch = [("DEFAULT", make_body(args.size, c * m + k)) for k in range(m)]
                sends.append(Dialog(ca, handles[c]).start_send_many(batch))
                if len(sends) >= args.window:
                    await sends.popleft().wait()
                    progress.tick((c + 1) * m)
            for pending in sends:
                await pending.wait()
            out["send_s"] = time.monotonic() - t0
            del handles

            if storm:
                # every message must be DELAYED now, and one request per service made
                status = await ca.status()
                dyn = status["dynamic_routing"]
                out["rss_loaded"] = rss_bytes(pid)
                out["before_release"] = {
                    "delayed_messages": dyn["delayed_messages"], "requests_made": dyn["requests_made"],
                    "requests_by_kind": dyn.get("requests_by_kind"), "in_flight": dyn["in_flight"], "delayed_services": len(status["delayed"]),
                    "received_at_b": checker.received, "conversations": status["conversations"],
                }
                say(f"before release: {dyn['delayed_messages']:,} delayed messages on {len(status['delayed']):,}"
                    f" services, {dyn['requests_made']:,} resolver requests made, {dyn['in_flight']:,} in flight,"
                    f" {checker.received:,} received at B; A's RSS {out['rss_loaded'] / 2**20:,.1f} MiB"
                    f" (started at {out['rss_start'] / 2**20:,.1f})")
                if args.settle > 0:  # let the resolver's questions reach the registry (they are all out already)
                    await anyio.sleep(args.settle)

                # 3. release the answers
                profile_stop()
                profile_start("release")
                tmp = args.gate.with_suffix(".tmp")
                tmp.write_text("go\n")
                out["t_release_ns"] = time.monotonic_ns()
                os.replace(tmp, args.gate)
                say("released the registry's answers")

            # 4. wait for everything at B; a release that stops moving for --stall-seconds is diagnosed, not waited on
            if storm and args.poke_ms > 0:
                tg.start_soon(poker)
            if storm and args.profile and args.registry_log is not None:
                tg.start_soon(profile_tail)
            last_count, last_change = checker.received, time.monotonic()
            previous: dict[str, Any] | None = None
            for _ in range(int(args.max_seconds * 10) + 10):
                if all_in.is_set() or deadline.passed:
                    break
                with anyio.move_on_after(0.1):
                    await all_in.wait()
                if checker.received != last_count:
                    last_count, last_change, previous = checker.received, time.monotonic(), None
                elif time.monotonic() - last_change >= args.stall_seconds:
                    # nothing new at B: stuck only if A's own figures did not move either since the last look
                    report = await stall_report(ca, checker.received, time.monotonic() - last_change)
                    if previous is not None and report["state"] == previous["state"]:
                        out["stall"] = report
                        say(f"STALLED: {report['text']}")
                        break
                    say(f"slow: {report['text']}; looking again in {args.stall_seconds:g} s")
                    out.setdefault("slow_looks", []).append(report)
                    previous, last_change = report, time.monotonic()
            profile_stop()
            if not all_in.is_set() and "stall" not in out:
                say(f"gave up waiting: {checker.received:,} of {total:,} received at B")
            tg.cancel_scope.cancel()

        out["t_first_recv_ns"] = rx["t_first"]
        out["t_last_recv_ns"] = rx["t_last"]
        out["recv_marks_ns"] = {str(k): v for k, v in rx["marks"].items()}
        out["last_enqueued_at_b_wall"] = rx["last_enqueued_at"] or None
        out["check"] = checker.summary()

        # A after: nothing delayed any more, nothing left to transmit, still one request per service
        after: dict[str, Any] = {}
        for _ in range(200):
            status = await ca.status()
            after = {"delayed_messages": status["dynamic_routing"]["delayed_messages"],
                     "requests_made": status["dynamic_routing"]["requests_made"],
                     "requests_by_kind": status["dynamic_routing"].get("requests_by_kind"),
                     "in_flight": status["dynamic_routing"]["in_flight"],
                     "transmission_messages": status["transmission"]["messages"]}
            if after["transmission_messages"] == 0 or deadline.passed:
                break
            await anyio.sleep(0.05)
        out["after"] = after
        out["rss_end"] = rss_bytes(pid)
        if storm and args.registry_port:
            say("the registry's plain-client rate: the same questions from a concurrent httpx client")
            from resolvers.http import MAX_OPEN_QUESTIONS

            out["plain_client"] = await plain_client_sweep(args.registry_port, services,
                                                           args.plain_concurrency or MAX_OPEN_QUESTIONS)
            say("the resolver alone: the same questions from the http resolver, with no node around it")
            out["resolver_alone"] = await resolver_alone_rate(args.registry_port, services,
                                                              args.plain_concurrency or MAX_OPEN_QUESTIONS)
        if not storm:
            out["rss_loaded"] = out["rss_end"]  # delivered and acknowledged: what the conversations alone hold
    return out


#: requests at once the plain client is also measured with, besides the resolver's own number: httpx's pool costs
#: more per request the more connections it holds, so its best rate comes with a few (measured against this
#: registry: ~2,300 GETs/s with 2 to 8 open, ~1,250 with 16, ~1,000 with 64)
PLAIN_SWEEP = (2, 4, 8)


async def plain_client_sweep(port: int, services: list[str], resolvers_own: int) -> dict[str, Any]:
    """The plain client's best rate over PLAIN_SWEEP and the resolver's own number of questions at once: what the
    registry gives a plain client at its best, not at whatever number the resolver happens to keep open."""
    found = [await plain_client_rate(port, services, n, rounds=2) for n in sorted({*PLAIN_SWEEP, resolvers_own})]
    best = max(found, key=lambda f: f["rate"])
    own = next(f for f in found if f["concurrency"] == resolvers_own)
    return {**best, "resolvers_own": {"concurrency": resolvers_own, "rate": own["rate"]},
            "sweep": {f["concurrency"]: f["rate"] for f in found}}


async def resolver_alone_rate(port: int, services: list[str], open_questions: int, rounds: int = 2) -> dict[str, Any]:
    """What the same registry gives the http resolver itself, in this process with nothing else to do: its best
    rate over ``rounds``. Beside the storm's rate, it says how much of the difference is the node's other work."""
    import anyio

    from resolvers.http import create

    rates = []
    for _ in range(rounds):
        resolver = create({"url": f"http://{LOOPBACK}:{port}/v1/services/{{service}}",
                           "max_open_questions": open_questions,
                           "headers": {"Bench-Plain": "1"}})  # logged apart from the node's questions
        try:
            todo = iter(services)
            t0 = time.monotonic()
            async with anyio.create_task_group() as tg:
                for _ in range(open_questions):
                    tg.start_soon(_ask_all, resolver, todo)
            rates.append(len(services) / (time.monotonic() - t0))
        finally:
            await resolver.aclose()
    return {"rate": max(rates), "rates": rates, "open_questions": open_questions}


async def plain_client_rate(port: int, services: list[str], concurrency: int, rounds: int = 3) -> dict[str, Any]:
    """What the registry gives a plain client: ``concurrency`` tasks on one keep-alive httpx client ask the storm's
    questions (route and binding, one GET each, as the resolver does), ``rounds`` times; the best round's rate.
    The requests say ``Bench-Plain: 1`` so the registry logs them apart from the resolver's."""
    import anyio
    import httpx
    from urllib.parse import quote

    urls = [f"http://{LOOPBACK}:{port}/v1/services/{quote(name, safe='')}" for name in services]
    headers = {"Accept": "application/json", "Aiobroker-Ask": "route, binding", "Bench-Plain": "1"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    rates, failures = [], 0
    async with httpx.AsyncClient(limits=limits, timeout=30.0, trust_env=False) as client:
        async def worker(todo: Any, bad: list[int]) -> None:
            for url in todo:
                response = await client.get(url, headers=headers)
                json.loads(response.content)
                if response.status_code != 200:
                    bad[0] += 1

        for _ in range(rounds):
            todo, bad = iter(urls), [0]
            t0 = time.monotonic()
            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(worker, todo, bad)
            rates.append(len(urls) / (time.monotonic() - t0))
            failures += bad[0]
    return {"rate": max(rates), "rates": rates, "concurrency": concurrency, "questions": len(urls),
            "failures": failures}


async def stall_report(client: Any, received: int, idle_s: float) -> dict[str, Any]:
    """What A says about the messages that did not arrive: delayed or not, on which link, in which state. A node
    too busy to answer within 120 s is reported as such (its state unknown, so never "the same as before")."""
    import anyio

    status: dict[str, Any] | None = None
    with anyio.move_on_after(120):
        status = await client.status()
    if status is None:
        return {"text": f"nothing new at B for {idle_s:.0f} s ({received:,} received); A did not answer status"
                        " within 120 s (busy)", "state": {"busy": time.monotonic()}, "received": received}
    tx = status["transmission"]
    dyn = status["dynamic_routing"]
    links = [{k: link.get(k) for k in ("address", "state", "conversations", "unacknowledged", "sent_this_connection",
                                       "last_error")} for link in tx["links"]]
    entry = tx["entries"][0]["state"] if tx["entries"] else None
    text = (f"nothing new at B for {idle_s:.0f} s ({received:,} received); A: {dyn['delayed_messages']:,} delayed,"
            f" {dyn['in_flight']} resolver requests in flight, {tx['messages']:,} messages in the transmission"
            f" queue, links: " + (", ".join(f"{x['address']} {x['state']!r} ({x['unacknowledged']:,} unacknowledged,"
                                            f" {x['sent_this_connection']:,} sent)" for x in links) or "none")
            + f", peer connections: {status['peers'].get('links')}; first entry: {entry!r}")
    state = {"received": received, "delayed": dyn["delayed_messages"], "in_flight": dyn["in_flight"],
             "transmission": tx["messages"], "links": links}
    return {"text": text, "state": state, "received": received, "delayed_messages": dyn["delayed_messages"],
            "in_flight": dyn["in_flight"], "transmission_messages": tx["messages"], "links": links,
            "peers": status["peers"], "first_entry_state": entry}


# --- the resolver's own cost per question ------------------------------------------------------------------------


def resolver_cost_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bench_resolution_storm.py resolver-cost",
        description="The http resolver's own CPU per question, in this process: the storm's registry (gate open)"
        " asked --services route-and-binding questions (resolve_together), --concurrency at once, by the resolver"
        " through its lean client (plain http) and through httpx (forced by a 'Connection: keep-alive' header, which"
        " the lean client leaves to httpx), alternating, --rounds each. CPU is this process's (time.process_time):"
        " the request, the answer's parsing and the resolver's reading of it; the registry runs apart.")
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="aiobroker-bench-cost-"))
    reg_port = common.free_port()
    gate, log = workdir / "gate", LOGS_DIR / "storm-registry-cost.log"
    gate.write_text("open\n")
    args.conversations = 1
    write_routes(workdir / "routes.json", args, 1)
    reg = common.start_process([sys.executable, __file__, "registry", "--port", str(reg_port), "--routes",
                                str(workdir / "routes.json"), "--log", str(workdir / "registry.jsonl"),
                                "--gate", str(gate)], log_path=log)
    try:
        common.wait_for_port(reg_port, proc=reg, what="registry", log_path=log, timeout=30)
        rows = common.run_async(_resolver_cost, args, reg_port)
    finally:
        common.stop_process(reg)
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'client':8} {'round':>5} {'questions/s':>12} {'CPU us/question':>16}")
    for row in rows:
        print(f"{row['client']:8} {row['round']:>5} {row['rate']:>12,.0f} {row['cpu_us']:>16,.0f}")
    for client in ("lean", "httpx"):
        cpu = sorted(r["cpu_us"] for r in rows if r["client"] == client)
        print(f"{client}: median CPU {cpu[len(cpu) // 2]:,.0f} us/question")
    return 0


async def _ask_all(resolver: Any, todo: Any) -> None:
    from aiobroker.resolver import RouteAnswer

    for name in todo:
        answers = await resolver.resolve_together(name)
        if not isinstance(answers.route, RouteAnswer):
            raise BenchError(f"{name}: {answers.route!r}")


async def _resolver_cost(args: argparse.Namespace, port: int) -> list[dict[str, Any]]:
    import anyio

    from resolvers.http import create

    names = [SERVICE_FMT.format(i) for i in range(args.services)]
    rows = []
    for n in range(args.rounds):
        for client, headers in (("lean", {}), ("httpx", {"Connection": "keep-alive"})):
            resolver = create({"url": f"http://{LOOPBACK}:{port}/v1/services/{{service}}", "headers": headers,
                               "max_open_questions": args.concurrency})
            try:
                await resolver.resolve_together(names[0])  # connections and caches made before the clock starts
                todo = iter(names)
                cpu0, t0 = time.process_time(), time.monotonic()
                async with anyio.create_task_group() as tg:
                    for _ in range(args.concurrency):
                        tg.start_soon(_ask_all, resolver, todo)
                cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
            finally:
                await resolver.aclose()
            rows.append({"client": client, "round": n + 1, "rate": len(names) / wall,
                         "cpu_us": cpu / len(names) * 1e6})
    return rows


# --- the orchestrator ----------------------------------------------------------------------------------------


def write_configs(workdir: Path, args: argparse.Namespace, mode: str, reg_port: int, port_b: int) -> tuple[Path, Path]:
    total = args.services * args.conversations * args.per_conversation
    hold = int(args.max_seconds) + 120
    if mode != "storm":
        routing = WILDCARD.format(port_b=port_b)
    elif args.resolver == "http":
        routing = RESOLVER.format(port=reg_port, hold=hold, lifetime=ANSWER_LIFETIME)
        if args.max_open_questions:
            routing += f"max_open_questions = {args.max_open_questions}\n"
    elif args.resolver == "dns_srv":
        routing = DNS_RESOLVER.format(zone=storm_sources.DNS_ZONE, port=reg_port, hold=hold)
    else:
        routing = BCN_SERVICE
    a = workdir / f"a-{mode}.toml"
    a.write_text(NODE_A.format(store=args.store, data_dir=workdir / f"data-a-{mode}", initiator=INITIATOR, poke=POKE_SERVICE,
                               max_per_service=max(100_000, 2 * args.conversations * args.per_conversation),
                               max_total=max(1_000_000, 2 * total), routing=routing))
    b = workdir / f"b-{mode}.toml"
    parts = [NODE_B_HEAD.format(data_dir=workdir / f"data-b-{mode}", queue=TARGET_QUEUE)]
    for i in range(args.services):
        parts.append(f'[[service]]\nname = "{SERVICE_FMT.format(i)}"\nqueue = "{TARGET_QUEUE}"\n'
                     f'contracts = ["DEFAULT"]\n')
    b.write_text("".join(parts))
    return a, b


def write_routes(path: Path, args: argparse.Namespace, port_b: int) -> None:
    services = {}
    for i in range(args.services):
        name = SERVICE_FMT.format(i)
        services[name] = {"body": {"service": name, "lifetime": ANSWER_LIFETIME,
                                   "targets": [{"address": f"tcp://127.0.0.1:{port_b}"}]}}
    path.write_text(json.dumps({"services": services}))


def run_mode(mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    reg_port, port_a, port_b = common.free_port(), common.free_port(), common.free_port()
    routes, reg_log, gate = workdir / "routes.json", workdir / f"registry-{mode}.jsonl", workdir / f"gate-{mode}"
    write_routes(routes, args, port_b)
    if mode != "storm":
        gate.write_text("open\n")  # the baseline's A has no resolver; if it asked anyway, the answer comes at once
    conf_a, conf_b = write_configs(workdir, args, mode, reg_port, port_b)
    procs: list[Any] = []
    kind = args.resolver if mode == "storm" else "http"
    hold = ["--log", str(reg_log), "--gate", str(gate), "--max-hold", str(args.max_seconds + 60)]
    try:
        log = LOGS_DIR / f"storm-registry-{mode}.log"
        if kind == "http":
            reg = common.start_process([sys.executable, __file__, "registry", "--port", str(reg_port), "--routes",
                                        str(routes), *hold] + (["--route-only"] if args.route_only else []),
                                       log_path=log)
            procs.append(reg)
            common.wait_for_port(reg_port, proc=reg, what="registry", log_path=log, timeout=30)
        elif kind == "dns_srv":
            binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
            conf, dns_port = workdir / "dnsmasq.conf", common.free_port()
            storm_sources.dnsmasq_conf(conf, [SERVICE_FMT.format(i) for i in range(args.services)], port_b,
                                       ANSWER_LIFETIME)
            procs.append(common.start_process(storm_sources.dnsmasq_argv(binary, dns_port, conf, ANSWER_LIFETIME),
                                              log_path=LOGS_DIR / "storm-dnsmasq.log"))
            procs.append(common.start_process([sys.executable, __file__, "dnsgate", "--port", str(reg_port),
                                               "--upstream", str(dns_port), *hold], log_path=log))
            time.sleep(1.0)  # UDP: nothing to connect to; the relay binds within this (its log says if not)
        nodes = {}
        for name, conf, port in (("b", conf_b, port_b), ("a", conf_a, port_a)):
            log = LOGS_DIR / f"storm-node-{name}-{mode}.log"
            proc = common.start_process([sys.executable, "-m", "aiobroker", "serve", "--config", str(conf),
                                         "--listen", f"{LOOPBACK}:{port}", "--http", "off"], log_path=log)
            procs.append(proc)
            nodes[name] = proc
            store = args.store if name == "a" else "memory"
            common.wait_for_port(port, proc=proc, what=f"node {name.upper()} ({store})", log_path=log, timeout=60)
        if kind == "bcn":  # answers once the gate opens, connecting to A then
            directory = workdir / "bcn-directory.json"
            directory.write_text(json.dumps({SERVICE_FMT.format(i): f"tcp://{LOOPBACK}:{port_b}"
                                             for i in range(args.services)}))
            procs.append(common.start_process([sys.executable, __file__, "bcngate", "--address",
                                               f"tcp://{LOOPBACK}:{port_a}", "--directory", str(directory), *hold],
                                              log_path=log))
        meter = common.CpuMeter([p.pid for p in procs])
        cores = PhaseCpu(lambda argv: "A" if str(conf_a) in argv else "B" if str(conf_b) in argv else
                         "load" if f"{Path(__file__).name} load " in argv else "source", period=PHASE_SAMPLE_S)
        cores.start()
        result = common.run_worker(
            [sys.executable, __file__, "load", "--mode", mode, "--port-a", str(port_a), "--port-b", str(port_b),
             "--pid-a", str(nodes["a"].pid), "--gate", str(gate), "--services", str(args.services),
             "--conversations", str(args.conversations), "--per-conversation", str(args.per_conversation),
             "--size", str(args.size), "--window", str(args.window), "--receivers", str(args.receivers),
             "--receive-batch", str(args.receive_batch), "--receive-groups", str(args.receive_groups),
             "--stall-seconds", str(args.stall_seconds),
             "--poke-ms", str(args.poke_ms), "--max-seconds", str(args.max_seconds),
             "--registry-port", str(reg_port if mode == "storm" and kind == "http" else 0),
             "--plain-concurrency", str(args.max_open_questions or 0)]
            + (["--profile", f"{args.store}{'-b' if args.profile == 'b' else ''}", "--registry-log", str(reg_log),
                "--pid-profile", str(nodes[args.profile].pid)] if args.profile and mode == "storm" else []),
            timeout=args.max_seconds + 120, what=f"storm load ({mode})")
        result["cpu"] = meter.stop()
        cores.stop()
        result["registry"] = registry_figures(read_registry_log(reg_log), result, args.services, kind,
                                              args.route_only)
        # where the two cores went: while the answers came, and after the last one (the release's tail)
        last_answer = result["registry"]["last_served_ns"]
        result["cpu_phases"] = {"answers": cores.between(result.get("t_release_ns"), last_answer),
                                "tail": cores.between(last_answer, result.get("t_last_recv_ns"))}
        for name, proc in nodes.items():
            result[f"node_{name}_exit"] = proc.poll()
        return result
    finally:
        for proc in reversed(procs):
            common.stop_process(proc)


def registry_figures(events: list[dict[str, Any]], result: dict[str, Any], n_services: int, kind: str,
                     route_only: bool = False) -> dict[str, Any]:
    """What the source saw of the node's questions (the plain client's requests are logged apart): round trips, and
    the questions they carried by kind. http: a route GET saying ``Aiobroker-Ask: route, binding`` carries both;
    dns_srv: one SRV query per route question (its address look-ups are logged apart); bcn: one request per
    MissingRoute or MissingRemoteServiceBinding."""
    requests = [e for e in events if e.get("event") == "request"]
    served = [e for e in events if e.get("event") in ("served", "address_served")]
    released = [e for e in events if e.get("event") == "released"]
    paths: dict[str, int] = {}
    kinds = {"route": 0, "binding": 0}
    for e in requests:
        key = e.get("path") or f"{e.get('kind', 'route')} {e.get('name')}"
        paths[key] = paths.get(key, 0) + 1
        if kind == "bcn":
            kinds[e["kind"]] += 1
        elif kind == "dns_srv":
            kinds["route"] += 1
        elif e["path"].endswith("/binding"):
            kinds["binding"] += 1
        else:
            kinds["route"] += 1
            kinds["binding"] += "binding" in e.get("ask", "") and not route_only  # an older registry ignores it
    t_release = result.get("t_release_ns")
    return {
        "requests": len(requests),
        "route_questions": kinds["route"],
        "binding_questions": kinds["binding"],
        "distinct_paths": len(paths),
        "asked_more_than_once": sum(1 for v in paths.values() if v > 1),
        "requests_before_release": sum(1 for e in requests if t_release is not None and e["t_ns"] < t_release),
        "served": len(served),
        "served_ok": sum(1 for e in served if e.get("status") == 200),
        "gate_opened_ns": released[0]["t_ns"] if released else None,
        "first_served_ns": min((e["t_ns"] for e in served), default=None),
        "last_served_ns": max((e["t_ns"] for e in served), default=None),
        "last_served_wall": max((e["wall"] for e in served), default=None),
        "services": n_services,
    }


def source_version() -> dict[str, Any]:
    """The commit measured, and whether aiobroker/ or resolvers/ differ from it (others edit the tree)."""
    import subprocess

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "aiobroker", "resolvers")
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "changed": [ln[3:] for ln in changed.splitlines()]}


def mib(x: float | None) -> str:
    return "-" if x is None else f"{x / 2**20:,.1f}"


def secs(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e9


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["registry"]:
        return registry_main(argv[1:])
    if argv[:1] == ["resolver-cost"]:
        return resolver_cost_main(argv[1:])
    if argv[:1] == ["dnsgate"]:
        return storm_sources.dnsgate_main(argv[1:])
    if argv[:1] == ["bcngate"]:
        return storm_sources.bcngate_main(argv[1:])
    if argv[:1] == ["load"]:
        p = argparse.ArgumentParser(prog="bench_resolution_storm.py load", description="the load process (internal)")
        p.add_argument("--mode", choices=("storm", "baseline"), required=True)
        p.add_argument("--port-a", type=int, required=True)
        p.add_argument("--port-b", type=int, required=True)
        p.add_argument("--pid-a", type=int, required=True, help="node A's pid, for its RSS")
        p.add_argument("--gate", type=Path, required=True, help="the registry's gate file (created to release)")
        p.add_argument("--services", type=int, default=1000)
        p.add_argument("--conversations", type=int, default=100)
        p.add_argument("--per-conversation", type=int, default=1)
        p.add_argument("--size", type=int, default=128)
        p.add_argument("--window", type=int, default=1000)
        p.add_argument("--receivers", type=int, default=64)
        p.add_argument("--receive-batch", type=int, default=1000)
        p.add_argument("--receive-groups", type=int, default=1000)
        p.add_argument("--settle", type=float, default=0.5)
        p.add_argument("--stall-seconds", type=float, default=20)
        p.add_argument("--poke-ms", type=float, default=0)
        p.add_argument("--profile", default=None, help="py-spy node A per phase; files named after this label")
        p.add_argument("--registry-log", type=Path, default=None, help="with --profile: starts the tail profile")
        p.add_argument("--pid-profile", type=int, default=0, help="with --profile: the node to profile (default A)")
        p.add_argument("--max-seconds", type=float, default=600)
        p.add_argument("--registry-port", type=int, default=0, help="storm: measure the plain-client rate after")
        p.add_argument("--plain-concurrency", type=int, default=0,
                       help="the plain client's requests at once (default: the http resolver's max_open_questions)")
        args = p.parse_args(argv[1:])
        return common.worker_main("storm load", lambda: common.run_async(load, args))

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="subcommands (internal, each with --help): registry, load")
    p.add_argument("--quick", action="store_true", help="a smoke run: 100 services x 20 conversations")
    p.add_argument("--services", type=int, default=None, help="target services (default 1,000; --quick 100)")
    p.add_argument("--conversations", type=int, default=None,
                   help="conversations per service (default 100; --quick 20)")
    p.add_argument("--per-conversation", type=int, default=1, help="messages per conversation (default 1)")
    p.add_argument("--size", type=int, default=128, help="body bytes (default 128)")
    p.add_argument("--store", choices=("memory", "sqlite"), default="memory", help="node A's store (B: memory)")
    p.add_argument("--no-baseline", action="store_true", help="skip the undelayed baseline run (memory net of it)")
    p.add_argument("--window", type=int, default=1000, help="begin_dialog / send requests in flight (default 1000)")
    p.add_argument("--receivers", type=int, default=64, help="receives in flight at B (default 64)")
    p.add_argument("--receive-batch", type=int, default=1000, help="max_messages per receive (default 1000)")
    p.add_argument("--receive-groups", type=int, default=1000,
                   help="max_groups per receive: conversation groups one receive may lock (default 1000; each"
                        " conversation is its own group at B, so 1 is a receive and a commit per message)")
    p.add_argument("--stall-seconds", type=float, default=20.0,
                   help="after the release, when nothing new arrives at B for this long, look at A's status; when"
                   " two such looks in a row find the same figures (delayed, in flight, transmission queue, links),"
                   " the release is STALLED: say what A holds and stop waiting (default 20)")
    p.add_argument("--poke-ms", type=float, default=0.0,
                   help="a workaround, off by default: after the release, send A a durable request (begin_timer on a"
                   " local dialog) every N ms, so its store writer runs and wakes the links (see the README)")
    p.add_argument("--profile", nargs="?", const="a", choices=("a", "b"), default=None,
                   help="py-spy record node A (or B: --profile b) in the storm run, one file per phase (send: begin to"
                   " release; release: release to the last answer served; tail: from there to the end), collapsed"
                   " stacks: results/logs/storm-py-spy-<store>[-b]-<phase>.txt")
    p.add_argument("--max-seconds", type=float, default=600.0, help="bound on each run's load process")
    p.add_argument("--resolver", choices=("http", "dns_srv", "bcn"), default="http",
                   help="what answers: the http resolver and a registry (default), the dns_srv resolver and dnsmasq,"
                   " or no resolver and the BCN service of examples/bcn_service.py on A")
    p.add_argument("--max-open-questions", type=int, default=0,
                   help="the http resolver's max_open_questions (default: the resolver's own default)")
    p.add_argument("--route-only", action="store_true",
                   help="the registry answers routes only, as an older one does (the resolver then asks both URLs)")
    args = p.parse_args(argv)
    args.services = args.services or (100 if args.quick else 1000)
    args.conversations = args.conversations or (20 if args.quick else 100)
    if args.size < common.BODY_HEADER_SIZE:
        p.error(f"--size must be at least {common.BODY_HEADER_SIZE}")
    common.sigterm_as_interrupt()
    total = args.services * args.conversations * args.per_conversation
    version = source_version()
    print(f"== resolution storm: {args.services:,} services x {args.conversations:,} conversations x "
          f"{args.per_conversation} message(s) of {fmt_size(args.size)} = {total:,} messages; A: {args.store} store,"
          f" resolver {args.resolver};"
          f" aiobroker at {version['commit']}" + (f" + changes in {', '.join(version['changed'])}"
                                                  if version["changed"] else ""), flush=True)
    runs: dict[str, dict[str, Any]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="aiobroker-bench-storm-"))
    try:
        for mode in ([] if args.no_baseline else ["baseline"]) + ["storm"]:
            print(f"-- {mode}: " + ("A has a wildcard route to B, no resolver (nothing is delayed)" if mode == "baseline"
                                    else "A asks the registry, which holds every answer until released"), flush=True)
            try:
                runs[mode] = run_mode(mode, args, workdir)
            except BenchError as exc:
                print(f"  {mode}: {exc}", flush=True)
                return 2
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    s, b = runs["storm"], runs.get("baseline")
    reg = s["registry"]
    before = s.get("before_release", {})
    after = s.get("after", {})
    growth = (s["rss_loaded"] or 0) - (s["rss_start"] or 0)
    per_raw = growth / total
    base_growth = ((b["rss_loaded"] or 0) - (b["rss_start"] or 0)) if b else None
    per_net = (growth - base_growth) / total if base_growth is not None else None
    t_last_recv = s.get("t_last_recv_ns")
    t_last_served = reg["last_served_ns"]
    t_release = s.get("t_release_ns")
    release_s = (t_last_recv - t_last_served) / 1e9 if t_last_recv and t_last_served else None
    from_release_s = (t_last_recv - t_release) / 1e9 if t_last_recv and t_release else None
    answers_s = (t_last_served - t_release) / 1e9 if t_last_served and t_release else None
    enqueue_s = (s["last_enqueued_at_b_wall"] - reg["last_served_wall"]) if s.get("last_enqueued_at_b_wall") and \
        reg["last_served_wall"] else None
    marks = {k: (v - t_last_served) / 1e9 for k, v in s.get("recv_marks_ns", {}).items()} if t_last_served else {}

    n = args.services
    # http: one round trip per service, route and binding in it (two GETs at once with an older registry); bcn:
    # one request per service and kind; dns_srv answers routes only: one SRV question per service
    binding_n = 0 if args.resolver == "dns_srv" else n
    both = {"route": n, "binding": binding_n}
    trips = {"http": 2 * n if args.route_only else n, "dns_srv": n, "bcn": 2 * n}[args.resolver]
    round_trips_ok = reg["requests"] == trips and reg["asked_more_than_once"] == 0
    req_ok = round_trips_ok and reg["route_questions"] == n and reg["binding_questions"] == binding_n and \
        after.get("requests_by_kind") == both and before.get("requests_by_kind") == both
    delayed_ok = before.get("delayed_messages") == total and before.get("received_at_b") == 0
    release_ok = release_s is not None and release_s <= FLOOR_RELEASE_S
    wait_floor = FLOOR_WAIT_S[args.store]
    wait_ok = from_release_s is not None and from_release_s <= wait_floor
    floored = args.resolver == "http"  # the floors on waiting and rate are the http resolver's; others: figures
    mem_ok = per_raw <= FLOOR_BYTES_PER_DELAYED
    plain = s.get("plain_client") or {}
    resolver_rate = n / answers_s if answers_s else None
    rate_share = resolver_rate / plain["rate"] if resolver_rate and plain.get("rate") else None
    rate_ok = rate_share is not None and rate_share >= FLOOR_RATE_SHARE
    what = {"http": "registry: round trips (GETs)", "dns_srv": "dnsmasq: SRV queries",
            "bcn": "BCN service: requests"}[args.resolver]
    once_ok = s["check"]["exactly_once_in_order"] and (b is None or b["check"]["exactly_once_in_order"])

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print()
    rows = [
        [what, f"{reg['requests']:,} ({reg['asked_more_than_once']} asked twice)",
         f"{verdict(round_trips_ok)} (== {trips:,})"],
        ["  route / binding questions", f"{reg['route_questions']:,} / {reg['binding_questions']:,}",
         f"{verdict(req_ok)} (== {n:,} / {binding_n:,})"],
        ["A: requests by kind, before / after release", f"{before.get('requests_by_kind')} / "
         f"{after.get('requests_by_kind')}", ""],
        ["delayed before release (A status)", f"{before.get('delayed_messages', 0):,} on "
         f"{before.get('delayed_services', 0):,} services", f"{verdict(delayed_ok)} (== {total:,})"],
        ["release: last answer -> last received at B", ("STALLED" if s.get("stall") else "-") if release_s is None
         else f"{release_s:.3f} s", f"{verdict(release_ok)} (<= {FLOOR_RELEASE_S:g} s)"],
        ["  last answer -> last enqueued at B", "-" if enqueue_s is None else f"{enqueue_s:.3f} s", ""],
        ["gate opened -> last received at B (what a user waits)", "-" if from_release_s is None else
         f"{from_release_s:.3f} s", f"{verdict(wait_ok)} (<= {wait_floor:g} s, {args.store})" if floored else
         "(floor: http only)"],
        ["  gate opened -> last answer served", "-" if answers_s is None else f"{answers_s:.3f} s", ""],
        ["answers/s (services / gate -> last answer)", "-" if resolver_rate is None else
         f"{resolver_rate:,.0f}", f"{verdict(rate_ok)} (>= {FLOOR_RATE_SHARE:.0%} of the plain client)" if floored
         else ""],
        ["  last answer -> 50/90/99% received", (" / ".join(f"{marks[k]:.3f}" for k in ("0.5", "0.9", "0.99")
                                                            if k in marks) + " s") if marks else "-", ""],
        ["A RSS: start -> loaded (storm)", f"{mib(s['rss_start'])} -> {mib(s['rss_loaded'])} MiB "
         f"(+{mib(growth)})", ""],
    ]
    if b is not None:
        rows.append(["A RSS: start -> delivered (baseline)", f"{mib(b['rss_start'])} -> {mib(b['rss_loaded'])} MiB "
                     f"(+{mib(base_growth)})", ""])
    if plain:
        rows.insert(next(i for i, r in enumerate(rows) if r[0].startswith("answers/s")) + 1,
                    ["  registry's plain-client rate (GETs/s, best)",
                     f"{plain['rate']:,.0f} ({plain['concurrency']} at once; share {rate_share or 0:.2f})", ""])
        alone = s.get("resolver_alone")
        if alone:
            rows.insert(next(i for i, r in enumerate(rows) if r[0].startswith("  registry's plain")) + 1,
                        ["  the resolver alone, no node around it", f"{alone['rate']:,.0f} ({alone['open_questions']}"
                         f" open; share {alone['rate'] / plain['rate']:.2f})", ""])
        own = plain.get("resolvers_own")
        if own:
            rows.insert(next(i for i, r in enumerate(rows) if r[0].startswith("  registry's plain")) + 1,
                        ["  the plain client at the resolver's number open",
                         f"{own['rate']:,.0f} ({own['concurrency']} at once; share"
                         f" {(resolver_rate or 0) / own['rate']:.2f})", ""])
    rows.append(["A memory per delayed message, raw", f"{per_raw:,.0f} B",
                 f"{verdict(mem_ok)} (<= {FLOOR_BYTES_PER_DELAYED:,} B)"])
    if per_net is not None:
        rows.append(["A memory per delayed message, net of baseline", f"{per_net:,.0f} B", ""])
    rows.append(["exactly once, in order per conversation", f"storm {s['check']['received']:,}/{total:,}" +
                 (f", baseline {b['check']['received']:,}/{total:,}" if b else ""), "yes" if once_ok else "NO"])
    rows.append(["load phases (storm)", f"begin {s['begin_s']:.1f} s, send {s['send_s']:.1f} s", ""])
    for phase, what in (("answers", "CPU s, gate -> last answer"), ("tail", "CPU s, last answer -> last received")):
        took = s.get("cpu_phases", {}).get(phase) or {}
        if took:
            rows.append([what, ", ".join(f"{k} {v:.2f}" for k, v in sorted(took.items(), key=lambda kv: -kv[1])),
                         f"{sum(took.values()):.2f} in all"])
        else:  # a phase shorter than the sampler's period (a --quick run's answers) holds no sample of its own
            lasted = answers_s if phase == "answers" else release_s
            rows.append([what, "none measured" + (f": the phase took {lasted * 1000:.0f} ms" if lasted else "") +
                         f", the sampler looks every {PHASE_SAMPLE_S * 1000:.0f} ms", ""])
    common.print_table(["figure", "value", "floor"], rows)
    if s.get("stall"):
        print(f"  storm: STALLED after the release: {s['stall']['text']}")
    if args.poke_ms > 0:
        print(f"  storm: --poke-ms {args.poke_ms:g}: {s.get('pokes', 0):,} begin_timer requests sent to A after the"
              " release (a workaround: see the README)")
    for run in runs.values():
        if run["check"]["first_problems"]:
            print(f"  {run['mode']}: {run['check']['problems']} problem(s), first: {run['check']['first_problems']}")
        busy = common.CpuMeter.contention(run["cpu"])
        if busy > common.BUSY_THRESHOLD:
            print(f"  {run['mode']}: BUSY: other processes took {busy:.2f} cores during the run")
    out = {
        "settings": {k: v for k, v in vars(args).items()},
        "source": version,
        "floors": {"resolver": args.resolver, "round_trips_ok": round_trips_ok, "requests_by_kind_ok": req_ok, "all_delayed": delayed_ok,
                   "release_s": release_s, "release_ok": release_ok, "wait_s": from_release_s, "wait_ok": wait_ok,
                   "resolver_rate": resolver_rate, "plain_rate": plain.get("rate"), "rate_share": rate_share,
                   "resolver_alone_rate": (s.get("resolver_alone") or {}).get("rate"),
                   "rate_ok": rate_ok, "bytes_per_delayed_raw": per_raw, "bytes_per_delayed_net": per_net,
                   "memory_ok": mem_ok, "exactly_once": once_ok},
        "derived": {"last_answer_to_last_enqueued_s": enqueue_s, "gate_to_last_answer_s": answers_s,
                    "gate_to_last_received_s": from_release_s, "last_answer_to_marks_s": marks},
        "runs": runs,
    }
    path = common.write_results("resolution-storm", out)
    print(f"results: {path}")
    if not once_ok:
        return 2
    passed = req_ok and delayed_ok and release_ok and mem_ok and (not floored or (wait_ok and rate_ok))
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
