"""The platform's own pauses during a run, measured the way jHiccup measures them.

A latency run on a virtual machine shares its CPUs with the hypervisor: now and then both virtual CPUs stop for
10-20 ms together ("steal"), and every process on the machine, the broker, the load and this meter alike, stops
with them. No broker can answer while its CPU is not running, so a p99 measured across such a pause says more about
the host than about the code. To tell the two apart, this meter runs beside every latency run: a process that does
nothing but sleep 1 ms at a time, at real-time priority (``SCHED_FIFO``, so our own busy processes cannot delay
it), and records each time it woke more than ``record_ms`` late. A late wake-up it sees is a pause of the platform,
not of the processes under test.

Used by the benchmarks as a context manager (``with PauseMeter() as meter: ...``, then ``meter.result``); run directly
(``python benchmarks/pauses.py --seconds 30``) it prints the pauses it sees, which tells whether the machine is fit
for a latency run at all.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

INTERVAL_S = 0.001
#: wake-ups later than this are recorded (uvloop and the kernel add well under 0.2 ms on an idle machine)
RECORD_MS = 1.0


def sample(seconds: float, *, record_ms: float = RECORD_MS, stop: list[bool] | None = None) -> dict[str, Any]:
    """Sleep ``INTERVAL_S`` at a time for ``seconds`` (or until ``stop[0]``); return the late wake-ups.

    ``pauses`` lists ``[end_ns, pause_ns]``: the meter could not run from ``end_ns - pause_ns`` to ``end_ns``
    (``time.monotonic_ns()``, the clock every process on the machine shares, so pauses line up with latency
    samples taken elsewhere).
    """
    realtime = _make_realtime()
    record_ns = int(record_ms * 1e6)
    interval_ns = int(INTERVAL_S * 1e9)
    pauses: list[list[int]] = []
    start = time.monotonic_ns()
    end = start + int(seconds * 1e9)
    wakeups = 0
    # Bounded by count as well as time: at most one iteration per interval, plus slack for early wake-ups.
    for _ in range(int(seconds / INTERVAL_S) * 2 + 1000):
        before = time.monotonic_ns()
        if before >= end or (stop is not None and stop[0]):
            break
        time.sleep(INTERVAL_S)
        after = time.monotonic_ns()
        wakeups += 1
        late = after - before - interval_ns
        if late >= record_ns:
            pauses.append([after, late])
    return {"start_ns": start, "end_ns": time.monotonic_ns(), "wakeups": wakeups, "realtime": realtime,
            "record_ms": record_ms, "pauses": pauses}


def _make_realtime() -> bool:
    """Ask for SCHED_FIFO (needs root or CAP_SYS_NICE); without it the meter also sees our own processes' load."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))  # type: ignore[attr-defined]
        return True
    except (AttributeError, OSError):
        return False


def summarize(meter: dict[str, Any], start_ns: int, end_ns: int, *, floor_ms: float) -> dict[str, Any]:
    """The pauses that overlap ``[start_ns, end_ns]``: how many, the longest, their total, and how many were at
    least ``floor_ms`` long (a pause that long alone delays every message in flight past the latency floor)."""
    inside = [(e, p) for e, p in meter.get("pauses", []) if e >= start_ns and e - p <= end_ns]
    longest = max((p for _, p in inside), default=0)
    over = [p for _, p in inside if p >= floor_ms * 1e6]
    return {
        "realtime": bool(meter.get("realtime")),
        "count": len(inside),
        "max_ms": longest / 1e6,
        "total_ms": sum(p for _, p in inside) / 1e6,
        "over_floor": len(over),
        "floor_ms": floor_ms,
        "window_s": (end_ns - start_ns) / 1e9,
    }


def describe(summary: dict[str, Any]) -> str:
    if not summary.get("count"):
        return "platform: no pauses"
    return (f"platform paused {summary['count']}x, longest {summary['max_ms']:.1f} ms, "
            f"{summary['total_ms']:.0f} ms in all" + ("" if summary.get("realtime") else " (meter not real-time)"))


class PauseMeter:
    """Run the meter in its own process for the life of a ``with`` block; ``result`` holds its record after."""

    def __init__(self, max_seconds: float = 600.0) -> None:
        self.max_seconds = max_seconds
        self.result: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        fd, path = tempfile.mkstemp(prefix="aiobroker-pauses-", suffix=".json")
        os.close(fd)  # the meter process writes the file; this one only reads it back
        self._out = Path(path)

    def __enter__(self) -> PauseMeter:
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--seconds", str(self.max_seconds), "--out",
             str(self._out)],
            stdout=subprocess.DEVNULL,
        )
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the meter stops at its next wake-up and writes what it saw
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        try:
            self.result = json.loads(self._out.read_text() or "{}")
        except (OSError, ValueError):
            self.result = {}
        finally:
            self._out.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="pauses.py",
        description="Measure the platform's pauses: sleep 1 ms at a time at real-time priority and report every "
        "wake-up more than --record-ms late (jHiccup's method). Run alone, it says whether the machine is quiet "
        "enough for a latency run.",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="how long to measure (default 10)")
    p.add_argument("--record-ms", type=float, default=RECORD_MS, help=f"smallest pause recorded (default {RECORD_MS})")
    p.add_argument("--out", help="write the record here as JSON (used by the benchmarks) instead of a summary")
    args = p.parse_args(argv)
    stop = [False]

    def on_term(signum: int, frame: Any) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    if not args.out:
        print(f"measuring the platform's pauses for {args.seconds:.0f} s ...", flush=True)
    result = sample(args.seconds, record_ms=args.record_ms, stop=stop)
    if args.out:
        Path(args.out).write_text(json.dumps(result))
        return 0
    summary = summarize(result, result["start_ns"], result["end_ns"], floor_ms=5.0)
    print(describe(summary) + f"; {summary['over_floor']} of 5 ms or more in {summary['window_s']:.0f} s"
          + ("" if result["realtime"] else " (not real-time: run as root for a meter our own load cannot delay)"))
    for end, pause in result["pauses"]:
        print(f"  at {(end - result['start_ns']) / 1e9:7.3f} s: {pause / 1e6:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
