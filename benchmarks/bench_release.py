"""Release of DELAYED messages, node A's side alone: CPU per released message, by phase, in one process.

What ``bench_resolution_storm.py`` makes node A do once the registry answers, without the processes, sockets and
the registry around it, so that the cost per message can be measured and compared between two trees in one
sitting. Node A's real core (``BrokerCore``) on a real store (``--stores``: SQLite in a temporary directory with
``durability = "normal"``, and the memory store), node B's real core (memory store) as the far end:

1. set-up, not measured: A gets the ``http`` resolver (answering bindings too) and no route; S services x C
   conversations are begun and one message of ``--size`` bytes sent on each, so every conversation is DELAYED
   and the resolver asked once per service; everything is written to A's store.
2. the release, measured, in groups of ``--answers-per-write`` answers (the writer gathers the answers that came
   during its last write into one batch): for each answer, the binding question's "not found" and the route's
   answer, as ``node/resolving.py`` hands them to the core (**reroute**); on a store that pages (SQLite), the
   DELAYED messages' bodies were left in the store at set-up (``core/tx_bodies.py``), so the bodies the release
   asked for are read back and handed to the core, as ``node/pages.py``'s ``StoreReads`` does (**read**); the link
   takes its envelopes and frames them, as ``PeerLinks._send_loop`` does (**send**); the writer seals and writes the batch (**seal**, **write**;
   the endpoint records of the release); B accepts the frame and acknowledges (not measured); A decodes B's
   acknowledgement frame and applies it, as ``PeerLinks.accept`` does (**ack**); the writer seals and writes again
   (the deleted rows, the records that now know B's broker instance).

CPU is this thread's (``time.thread_time``). In a node the writer seals on the event loop and writes in its
thread (a large batch): **write** is the writer thread's share, the rest the event loop's. The collector runs as
``aiobroker serve`` sets it (``--gc``). Every message is checked to arrive at B exactly once (on SQLite, its body read back from the store), every row to
be gone from A's store, and every stored record to know B's broker instance.

Each phase's figure is the least of ``--rounds`` rounds (others on a shared machine only ever add to it). With
``--callgrind`` the figures are instructions per message instead, counted by valgrind's callgrind: they do not
move with the machine's load (one round per store under callgrind, about 50x slower: use ``--services 50``).

    .venv/bin/python benchmarks/bench_release.py                      # 200 services x 100 conversations, 5 rounds
    PYTHONPATH=/work/main .venv/bin/python benchmarks/bench_release.py   # the same, on another tree's code
    .venv/bin/python benchmarks/bench_release.py --services 50 --callgrind       # instructions per message
    .venv/bin/python benchmarks/bench_release.py --profile release.prof --stores sqlite   # cProfile the release

(Run it as a script, as shown: the script's directory then comes first on ``sys.path``, not the current one, so
PYTHONPATH decides which tree's ``aiobroker`` is measured; the first line of the output names it.)
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

import aiobroker
from aiobroker.core.broker import BrokerCore
from aiobroker.core.effects import BodiesWanted, ResolveRequest
from aiobroker.core.paging import DEFAULT_WINDOW
from aiobroker.node.collector import apply_node_policy
from aiobroker.resolver import RouteAnswer, Target
from aiobroker.store.base import Store
from aiobroker.store.memory import MemoryStore
from aiobroker.store.sqlite import SqliteStore
from aiobroker.node.links import SEND_BATCH
from aiobroker.node.pages import INLINE_BODIES
from aiobroker.wire.codec import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, batch_bytes, encode_frame
from aiobroker.wire.frames import Envelopes, envelopes_wire, parse_frame

T = TypeVar("T")
PHASES = ("reroute", "read", "send", "ack", "seal", "write")
STORES = ("memory", "sqlite")
B_ADDRESS = "tcp://127.0.0.1:4023"
INITIATOR = "//release/initiator"
SERVICE_FMT = "//release/svc-{:05d}"
TARGET_QUEUE = "release_in"
#: a link's frame's byte budget with the default max_frame_size (``PeerLinks._session``)
FRAME_BYTES = batch_bytes(DEFAULT_MAX_FRAME_SIZE)
SETUP_WRITE = 10_000  # conversations begun per write in the set-up
DEFAULT_THRESHOLDS = gc.get_threshold()
#: a run under callgrind is ~50x slower than native; this bounds it
CALLGRIND_TIMEOUT = 1800


class Side:
    """One node's core and store, flushed as the node's writer does: seal, write, then ``durable_upto``."""

    def __init__(self, name: str, store: Store, **options: Any) -> None:
        self.store = store
        snapshot = store.open()
        # ids made as a node makes them (random: where an endpoint's record lands in the store's index)
        self.core = BrokerCore(broker_instance=f"instance-{name}", persist=store.durable, **options)
        self.core.load(snapshot, 0.0)

    def seal(self) -> Any:
        batch, pending = self.core.seal()
        return batch, pending, self.core.sealed_upto

    def write(self, sealed: Any) -> None:
        batch, pending, upto = sealed
        if self.store.durable and batch:
            self.store.write(batch)
        self.core.durable_upto = upto
        if pending:
            self.core.publish(pending)

    def flush(self) -> None:
        self.write(self.seal())


def set_up(store: Store, services: int, conversations: int, size: int) -> tuple[Side, Side, list[str]]:
    """A with every conversation DELAYED (and stored), B ready to take them; the services asked about, in order."""
    # a store that pages gets the queue window a node gives it (``node/startup.py``): DELAYED bodies then wait in
    # the store only, and are read back as the release sends them on
    a = Side("a", store, resolver_name="http", resolver_answers_bindings=True,
             max_delayed_per_service=conversations, max_delayed_messages=services * conversations,
             page_window=DEFAULT_WINDOW if store.pages else None)
    b = Side("b", MemoryStore())
    names = [SERVICE_FMT.format(i) for i in range(services)]
    a.core.create_object("queue", {"name": "release_init"})
    a.core.create_object("service", {"name": INITIATOR, "queue": "release_init", "contracts": []})
    b.core.create_object("queue", {"name": TARGET_QUEUE})
    for name in names:
        b.core.create_object("service", {"name": name, "queue": TARGET_QUEUE, "contracts": ["DEFAULT"]})
    b.flush()
    body = b"\xa5" * size
    begun = 0
    for name in names:
        for _ in range(conversations):
            handle = a.core.begin_dialog(from_service=INITIATOR, to_service=name, contract="DEFAULT", now=0.0).handle
            a.core.send(handle, [["DEFAULT", body]], 0.0)
            begun += 1
            if begun % SETUP_WRITE == 0:
                a.flush()
    a.flush()
    asked = [e.service for e in a.core.drain_effects() if isinstance(e, ResolveRequest)]
    delayed = a.core.dynamic_statistics(0.0)["delayed_messages"]
    if asked != names or delayed != services * conversations:
        raise SystemExit(f"set-up: {len(asked)} questions for {services} services and {delayed:,} messages delayed"
                         f" of {services * conversations:,}: the tree does not DELAY as the storm needs")
    return a, b, names


class Phases:
    """CPU seconds (this thread) per phase; the profile, if any, sees the measured phases only (not B). Under
    callgrind (``markers``), each phase runs inside a libc function of its own that calls back (``Markers``), so
    that callgrind's inclusive count of that function is the phase's instructions."""

    def __init__(self, profile: cProfile.Profile | None, markers: Markers | None = None) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.profile = profile
        self.markers = markers

    def run(self, phase: str, work: Callable[[], T]) -> T:
        if self.markers is not None:
            return self.markers.run(phase, work)
        if self.profile is not None:
            self.profile.enable()
        started = time.thread_time()
        try:
            return work()
        finally:
            self.seconds[phase] += time.thread_time() - started
            if self.profile is not None:
                self.profile.disable()


class Markers:
    """Runs a phase's work as the comparison callback of a libc search (``--callgrind``): callgrind then counts
    the phase as part of that function, inclusively, whatever it calls. One libc function per phase, each told
    apart by ``callgrind_annotate`` (MARKER_LINES says how each shows there)."""

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        self.ctypes = ctypes
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"))
        self.compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
        self.action = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_int)
        self.loaded = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
        for name in ("bsearch", "lfind", "tfind", "tsearch"):
            getattr(self.libc, name).restype = ctypes.c_void_p
        self.box = (ctypes.c_int * 2)(0, 0)
        self.root = ctypes.c_void_p()
        self._keep = self.compare(lambda _a, _b: 0)
        self.libc.tsearch(self.box, ctypes.byref(self.root), self._keep)  # a tree of one node, for tfind and twalk

    def run(self, phase: str, work: Callable[[], T]) -> T:
        ctypes, libc, box = self.ctypes, self.libc, self.box
        result: list[T] = []
        failed: list[BaseException] = []

        def once(*_args: Any) -> int:
            if not result and not failed:  # a search may call back more than once: the work runs once
                try:
                    result.append(work())
                except BaseException as exc:  # raised again outside C
                    failed.append(exc)
            return 0

        one = ctypes.c_size_t(1)
        width = ctypes.c_size_t(ctypes.sizeof(ctypes.c_int))
        if phase == "reroute":
            libc.bsearch(box, box, one, width, self.compare(once))
        elif phase == "send":
            libc.lfind(box, box, ctypes.byref(one), width, self.compare(once))
        elif phase == "ack":
            libc.qsort(box, ctypes.c_size_t(2), width, self.compare(once))
        elif phase == "seal":
            libc.twalk(self.root, self.action(once))
        elif phase == "read":
            libc.dl_iterate_phdr(self.loaded(once), None)
        else:
            libc.tfind(box, ctypes.byref(self.root), self.compare(once))
        if failed:
            raise failed[0]
        return result[0]


#: how callgrind_annotate --inclusive=yes names each phase's marker (a libc file, and the function where it has one);
#: tfind's line ("tsearch.c:0x...") counts twalk's callbacks too, so write = that line - seal's
MARKER_LINES = {
    "reroute": re.compile(r"stdlib-bsearch\.h:0x"),
    "read": re.compile(r"dl-iteratephdr\.c:"),
    "send": re.compile(r"lsearch\.c:0x"),
    "ack": re.compile(r"msort\.c:qsort_r "),
    "seal": re.compile(r"tsearch\.c:trecurse "),
    "write": re.compile(r"tsearch\.c:0x"),
}


def release(a: Side, b: Side, names: list[str], per_write: int, phases: Phases) -> tuple[int, int]:
    """Answer every question, read the bodies back, send, acknowledge, write; returns how many messages B received
    and how many bodies were read back from A's store."""
    from aiobroker.core.dispatcher import BINDING
    from aiobroker.resolver import NotFound

    not_found = NotFound("no binding").message
    decoder = FrameDecoder()
    received = read = 0
    now = 1.0

    def answer(group: list[str]) -> list[BodiesWanted]:
        wanted: list[BodiesWanted] = []
        for name in group:
            route = RouteAnswer(service_name=name, targets=(Target(address=B_ADDRESS),), lifetime=3600.0)
            # as ``Resolving._settle`` hands a combined answer to the core: the binding's first
            a.core.resolve_failed(name, f"not found: {not_found}", now, None, BINDING)
            a.core.resolved(name, route, now)
            wanted += [e for e in a.core.drain_effects() if isinstance(e, BodiesWanted)]
        return wanted

    def read_back(requests: list[BodiesWanted]) -> int:
        # as ``StoreReads._read_bodies``: the requests that came meanwhile as one, read on the event loop a slice
        # at a time (``StoreReads._bodies``), then handed to the core together
        request = requests[0] if len(requests) == 1 else BodiesWanted(
            list(chain.from_iterable(r.handles for r in requests)), list(chain.from_iterable(r.ids for r in requests))
        )
        bodies: dict[int, bytes] = {}
        for start in range(0, len(request.ids), INLINE_BODIES):
            bodies.update(a.store.read_bodies(request.ids[start : start + INLINE_BODIES]))
        a.core.bodies_read(request, bodies, now)
        return len(bodies)

    def send() -> list[bytes]:
        frames: list[bytes] = []
        while messages := a.core.outgoing(B_ADDRESS, SEND_BATCH, FRAME_BYTES):
            frames.append(encode_frame(envelopes_wire(messages, [])))
        return frames

    def acknowledged(reply: bytes) -> None:
        for got in [parse_frame(obj) for obj in decoder.feed(reply)]:
            assert isinstance(got, Envelopes)
            a.core.acknowledged(got.acks, now)

    def commit() -> None:
        sealed = phases.run("seal", a.seal)
        phases.run("write", lambda: a.write(sealed))

    for start in range(0, len(names), per_write):
        group = names[start : start + per_write]
        wanted = phases.run("reroute", lambda: answer(group))  # noqa: B023 (run at once)
        # run on every store (nothing to read from one that keeps the bodies), so that callgrind sees its marker
        read += phases.run("read", lambda: read_back(wanted))  # noqa: B023 (run at once)
        frames = phases.run("send", send)
        commit()
        for data in frames:  # B, not measured: it stores them and acknowledges
            (frame,) = [parse_frame(obj) for obj in FrameDecoder().feed(data)]
            assert isinstance(frame, Envelopes)
            acks, _ = b.core.accept(frame.messages, now)
            b.flush()
            received += len(frame.messages)
            reply = encode_frame(envelopes_wire([], acks))
            phases.run("ack", lambda: acknowledged(reply))  # noqa: B023 (run at once)
        commit()
    return received, read


def one_round(
    store_kind: str, args: argparse.Namespace, tmp: Path, profile: cProfile.Profile | None
) -> dict[str, float]:
    store: Store = SqliteStore(tmp / f"a-{time.monotonic_ns()}") if store_kind == "sqlite" else MemoryStore()
    gc.unfreeze()  # what an earlier round froze is garbage now
    gc.collect()
    if args.gc == "node":  # as ``aiobroker serve`` once started, before any conversation exists
        apply_node_policy()
    a, b, names = set_up(store, args.services, args.conversations, args.size)
    if args.gc == "off":
        gc.disable()
    phases = Phases(profile, Markers() if args.markers else None)
    try:
        received, read = release(a, b, names, args.answers_per_write, phases)
    finally:
        gc.enable()
        gc.set_threshold(*DEFAULT_THRESHOLDS)
    total = args.services * args.conversations
    left = a.core.tx.message_count
    if isinstance(store, SqliteStore):
        store.close()
        check = SqliteStore(store.data_dir)  # what a restart would read back
        snap = check.open()
        check.close()
        stored_rows = len(snap.messages)
        unknown = sum(1 for _, state in snap.endpoints if state[8] is None and state[2] == INITIATOR)
    else:
        stored_rows = unknown = 0
    queued = b.core.queues[TARGET_QUEUE].waiting
    if store.pages and read != total:
        raise SystemExit(f"{store_kind}: {read:,} bodies read back of {total:,}: DELAYED bodies are not left in this"
                         " store (core/tx_bodies.py), so the release measured is not the storm's")
    if received != total or left or stored_rows or unknown or queued != total:
        raise SystemExit(f"{store_kind}: {received:,} sent of {total:,}, {queued:,} queued at B, {left:,} still"
                         f" unacknowledged at A, {stored_rows:,} rows left in A's store, {unknown:,} stored records"
                         " without B's broker instance: the release is broken")
    return {phase: seconds / total * 1e6 for phase, seconds in phases.seconds.items()}


def report(store_kind: str, rounds: list[dict[str, float]], out: Callable[[str], None] = print) -> dict[str, float]:
    # the least of the rounds, phase by phase: on a shared machine other processes only ever add to a phase's CPU
    # time (they take its caches), so the least is the steadiest figure of what the code costs
    least = {phase: min(r[phase] for r in rounds) for phase in PHASES}
    main_us = sum(least[phase] for phase in PHASES if phase != "write")
    writer_us = least["write"]
    cells = "  ".join(f"{phase} {least[phase]:5.2f}" for phase in PHASES)
    out(f"{store_kind:>6}: {cells}  | event loop {main_us:5.2f}  writer {writer_us:5.2f}  all {main_us + writer_us:5.2f}"
        f" us/message (least of {len(rounds)} rounds)")
    return {**least, "event_loop": main_us, "writer": writer_us}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], epilog="Run it as shown at the top of the file.")
    p.add_argument("--services", type=int, default=200, help="services asked about (default 200)")
    p.add_argument("--conversations", type=int, default=100, help="DELAYED conversations per service (default 100)")
    p.add_argument("--size", type=int, default=128, help="bytes per message body (default 128)")
    p.add_argument("--answers-per-write", type=int, default=10,
                   help="answers handled between two writes of the writer (default 10)")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds per store, each from a fresh set-up; each phase's least is shown (default 5)")
    p.add_argument("--stores", default="memory,sqlite", help="A's stores, in order (default memory,sqlite)")
    p.add_argument("--gc", choices=("node", "python", "off"), default="node",
                   help="the collector: the policy aiobroker serve applies once started, before the conversations"
                        " are begun (default), as Python sets it, or off during the release")
    p.add_argument("--profile", metavar="FILE", help="cProfile the release phases (all rounds) into FILE")
    p.add_argument("--callgrind", action="store_true",
                   help="count instructions per message by phase with valgrind's callgrind instead of CPU seconds"
                        " (one round per store, ~50x slower: use --services 50)")
    p.add_argument("--markers", action="store_true", help=argparse.SUPPRESS)  # the run under callgrind
    args = p.parse_args(argv)
    for name in ("services", "conversations", "size", "answers_per_write", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.callgrind and (shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None):
        p.error("--callgrind needs valgrind and callgrind_annotate (Debian: apt-get install valgrind)")
    if args.callgrind and args.profile:
        p.error("--callgrind and --profile measure apart: give one of them")
    args.store_list = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = [s for s in args.store_list if s not in STORES]
    if unknown or not args.store_list:
        p.error(f"unknown store(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(STORES)}")
    return args


def count_instructions(store_kind: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """One round under callgrind, its phases run inside their marker functions (:class:`Markers`): instructions
    per message, per phase. Counts do not move with the machine's load, as CPU seconds do."""
    out = tmp / f"callgrind-{store_kind}.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__, "--markers",
           "--stores", store_kind, "--rounds", "1", "--services", str(args.services), "--conversations",
           str(args.conversations), "--size", str(args.size), "--answers-per-write", str(args.answers_per_write),
           "--gc", args.gc]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=CALLGRIND_TIMEOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the run under callgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
                               capture_output=True, text=True, timeout=CALLGRIND_TIMEOUT, check=True).stdout
    counts: dict[str, int] = {}
    for line in annotated.splitlines():
        for phase, pattern in MARKER_LINES.items():
            if phase not in counts and pattern.search(line):
                counts[phase] = int(line.split()[0].replace(",", ""))
    missing = [phase for phase in PHASES if phase not in counts]
    if missing:
        raise SystemExit(f"callgrind_annotate shows no marker for {', '.join(missing)}: this libc names its search"
                         " functions otherwise; use CPU seconds (without --callgrind)")
    counts["write"] -= counts["seal"]  # tfind's line counts twalk's callbacks too (MARKER_LINES)
    total = args.services * args.conversations
    return {phase: counts[phase] / total for phase in PHASES}


def report_instructions(store_kind: str, per: dict[str, float], out: Callable[[str], None]) -> None:
    main_i = sum(per[phase] for phase in PHASES if phase != "write")
    cells = "  ".join(f"{phase} {per[phase]:6,.0f}" for phase in PHASES)
    out(f"{store_kind:>6}: {cells}  | event loop {main_i:6,.0f}  writer {per['write']:6,.0f}  instructions/message")


def main(argv: list[str] | None = None) -> int:
    def out(line: str) -> None:
        print(line, flush=True)

    args = parse_args(argv)
    total = args.services * args.conversations
    if not args.markers:
        out(f"bench_release: aiobroker from {Path(aiobroker.__file__).resolve().parent}; {args.services} services x"
            f" {args.conversations} conversations = {total:,} messages of {args.size} B, {args.answers_per_write}"
            f" answers per write, gc {args.gc}{', counted by callgrind' if args.callgrind else ''}")
    profile = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory(prefix="bench-release-") as tmp:
        for store_kind in args.store_list:
            if args.callgrind:
                report_instructions(store_kind, count_instructions(store_kind, args, Path(tmp)), out)
                continue
            rounds = [one_round(store_kind, args, Path(tmp), profile) for _ in range(args.rounds)]
            if not args.markers:
                report(store_kind, rounds, out)
    if profile is not None:
        profile.dump_stats(args.profile)
        out(f"profile of the release written to {args.profile} (python -m pstats {args.profile})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
