"""Shared helpers for the benchmarks (not tests: they print figures).

Processes are started with :func:`start_process` and stopped with :func:`stop_process`, by pid only (SIGTERM,
then SIGKILL after a deadline). Every wait here has a deadline; every loop is bounded in count and in time.

The message body used by every benchmark starts with two unsigned 64-bit big-endian integers: the send time
(``time.monotonic_ns()`` in the sending process; CLOCK_MONOTONIC is shared by all processes on Linux) and the
sequence number. The rest of the body is padding up to the requested size.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import time
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_DIR = HERE / "results"
LOGS_DIR = RESULTS_DIR / "logs"
LOOPBACK = "127.0.0.1"

# The benchmarks measure the tree they live in: benchmarks/ and the repository root go first on sys.path (as
# PYTHONPATH puts the root for the processes started here), ahead of any installed aiobroker.
for _i, _p in enumerate((str(HERE), str(REPO))):
    if _p not in sys.path:
        sys.path.insert(_i, _p)

# --- message bodies -------------------------------------------------------------------------------------------

BODY_HEADER = struct.Struct(">QQ")  # send time (monotonic ns), sequence number
BODY_HEADER_SIZE = BODY_HEADER.size
_SEQ = struct.Struct(">Q")


def make_body(size: int, seq: int, send_ns: int | None = None, *, _pads: dict[int, bytes] = {}) -> bytes:  # noqa: B006
    """A body of ``size`` bytes (at least 16) that starts with the send time and ``seq``."""
    pad = _pads.get(size)
    if pad is None:
        if size < BODY_HEADER_SIZE:
            raise ValueError(f"a body is at least {BODY_HEADER_SIZE} bytes (send time + sequence number)")
        pad = _pads[size] = b"\xa5" * (size - BODY_HEADER_SIZE)
    return BODY_HEADER.pack(time.monotonic_ns() if send_ns is None else send_ns, seq) + pad


def body_send_ns(body: bytes) -> int:
    return int(_SEQ.unpack_from(body, 0)[0])


def body_seq(body: bytes) -> int:
    return int(_SEQ.unpack_from(body, 8)[0])


def parse_sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        mult = 1
        if part.endswith("k") or part.endswith("kib"):
            mult, part = 1024, part.rstrip("kib")
        value = int(part) * mult
        if value < BODY_HEADER_SIZE:
            raise ValueError(f"body size {value} is under the minimum of {BODY_HEADER_SIZE} bytes")
        out.append(value)
    if not out:
        raise ValueError("no sizes given")
    return out


class SequenceChecker:
    """Exactly-once, in-order check of sequence numbers 0..n-1. Cheap per message; keeps the first problems."""

    __slots__ = ("n", "expected", "problems", "extra", "_kept")

    def __init__(self, n: int) -> None:
        self.n = n
        self.expected = 0  # the next sequence number due; also the count received in order
        self.problems = 0  # duplicates, gaps, reorderings
        self.extra = 0  # anything that arrived after 0..n-1 had all arrived
        self._kept: list[str] = []

    def see(self, seq: int) -> None:
        if seq == self.expected and seq < self.n:
            self.expected = seq + 1
            return
        self._problem(seq)

    def _problem(self, seq: int) -> None:
        if self.expected >= self.n:
            self.extra += 1
            what = f"seq {seq} arrived after all {self.n} had arrived (duplicate)"
        elif seq < self.expected:
            what = f"seq {seq} arrived again (duplicate; expected {self.expected})"
        elif seq >= self.n:
            what = f"seq {seq} is out of range 0..{self.n - 1}"
        else:
            what = f"seq {seq} arrived while {self.expected} was due (gap or reordering)"
            self.expected = seq + 1  # resynchronise, so one gap is not reported a thousand times
        self.problems += 1
        if len(self._kept) < 5:
            self._kept.append(what)

    @property
    def complete(self) -> bool:
        return self.expected >= self.n

    @property
    def ok(self) -> bool:
        return self.expected == self.n and self.problems == 0

    def summary(self) -> dict[str, Any]:
        return {
            "exactly_once": self.ok,
            "in_order_received": self.expected,
            "expected": self.n,
            "problems": self.problems,
            "extra": self.extra,
            "first_problems": list(self._kept),
        }


# --- figures --------------------------------------------------------------------------------------------------


def throughput(count: int, elapsed_ns: int) -> float:
    return count / (elapsed_ns / 1e9) if elapsed_ns > 0 else 0.0


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def latency_summary(latencies_ns: Sequence[int]) -> dict[str, Any]:
    values = sorted(latencies_ns)
    ms = 1e-6
    return {
        "samples": len(values),
        "p50_ms": percentile(values, 50) * ms,
        "p90_ms": percentile(values, 90) * ms,
        "p99_ms": percentile(values, 99) * ms,
        "p999_ms": percentile(values, 99.9) * ms,
        "max_ms": (values[-1] * ms) if values else float("nan"),
        "min_ms": (values[0] * ms) if values else float("nan"),
    }


def latency_report(
    samples: Sequence[tuple[int, int, int]], *, start_ns: int, warmup: float, rate: float,
    samples_out: str | None = None,
) -> dict[str, Any]:
    """Latency figures from ``(seq, send_ns, recv_ns)`` samples of a paced run, after ``warmup`` seconds.

    ``latency`` is receive time - the send time written in the body (what the floors use). ``from_schedule`` is
    receive time - the time the message was due (``start + seq / rate``): it also counts the time a message waited
    because the producer was held up (for instance by a slow ``send_many``), which ``latency`` cannot see.
    ``samples_out``: write the measured ``[send_ns, recv_ns]`` pairs there as JSON, for the orchestrator
    (:func:`run_latency_worker`), which sets them beside the platform's pauses.
    """
    warm_end = start_ns + int(warmup * 1e9)
    ns_per_msg = 1e9 / rate
    from_send = [r - s for _, s, r in samples if s >= warm_end]
    from_schedule = []
    for seq, _, r in samples:
        due = start_ns + int(seq * ns_per_msg)
        if due >= warm_end:
            from_schedule.append(r - due)
    if samples_out:
        Path(samples_out).write_text(json.dumps([(s, r) for _, s, r in samples if s >= warm_end]))
    return {"latency": latency_summary(from_send), "from_schedule": latency_summary(from_schedule)}


#: The project's latency floor: p99 under 5 ms at 5,000 msg/s (issue 2).
LATENCY_FLOOR_MS = 5.0
#: A latency run is DISTURBED when the platform itself was paused for more than this share of it: p99 is the
#: worst 1% of messages, so a platform that stood still for over 1% of the run can alone decide the figure.
DISTURBED_SHARE = 0.01


def run_latency_worker(argv: Sequence[str], *, timeout: float, what: str, cpus: set[int] | None = None,
                       floor_ms: float = LATENCY_FLOOR_MS) -> dict[str, Any]:
    """:func:`run_worker` for a paced latency load, with the platform's pauses measured beside it.

    Adds ``pauses`` (what :mod:`pauses` saw during the measured part of the run), ``outside_pauses`` (the latency
    of the messages that were not in flight during any of those pauses: the part of the tail that is the code's
    own) and ``disturbed`` (the platform was paused for more than :data:`DISTURBED_SHARE` of the run).
    """
    import pauses
    import tempfile

    fd, samples_path = tempfile.mkstemp(prefix="aiobroker-latency-", suffix=".json")
    os.close(fd)
    try:
        with pauses.PauseMeter(max_seconds=timeout + 10) as meter:
            result = run_worker([*argv, "--samples-out", samples_path], timeout=timeout, what=what, cpus=cpus)
        text = Path(samples_path).read_text()
    finally:
        Path(samples_path).unlink(missing_ok=True)
    measured: list[list[int]] = json.loads(text) if text else []
    if not measured:
        return result
    first = min(s for s, _ in measured)
    last = max(r for _, r in measured)
    seen = pauses.summarize(meter.result, first, last, floor_ms=floor_ms)
    spans = sorted((end - length, end) for end, length in meter.result.get("pauses", []))
    result["pauses"] = seen
    result["outside_pauses"] = latency_summary([r - s for s, r in measured if not _overlaps(spans, s, r)])
    result["disturbed"] = seen["total_ms"] / 1e3 > DISTURBED_SHARE * seen["window_s"]
    return result


def _overlaps(spans: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    """Whether ``[start, end]`` meets any of ``spans``: the meter's pauses, one after another, so sorted by start
    and by end alike, and the last span starting before ``end`` is the only one that can reach ``start``."""
    import bisect

    i = bisect.bisect_right(spans, (end, 1 << 62))
    return i > 0 and spans[i - 1][1] >= start


def median(values: Sequence[float]) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def fmt_rate(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:,.0f}"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.3f}"


def fmt_size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, file: Any = None) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = file or sys.stdout

    def line(r: Sequence[str]) -> str:
        # text left-aligned in the first columns, numbers right-aligned
        parts = []
        for i, c in enumerate(r):
            parts.append(c.rjust(widths[i]) if _numeric(c) else c.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    print(line(cells[0]), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells[1:]:
        print(line(r), file=out)
    out.flush()


def _numeric(c: str) -> bool:
    c = c.replace(",", "").replace("%", "").replace("x", "").strip()
    try:
        float(c)
        return True
    except ValueError:
        return False


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("anyio", "uvloop", "msgpack"):
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:
            info[dist] = None
    return info


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``data`` (plus the command and the machine) to ``benchmarks/results/<name>-<timestamp>.json``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    payload = {
        "benchmark": name,
        "when": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": machine_info(),
        **data,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


class Progress:
    """Prints a line to stderr at most every ``every`` seconds (and only when :meth:`tick` is called)."""

    def __init__(self, label: str, total: int | None = None, every: float = 2.0) -> None:
        self.label = label
        self.total = total
        self.every = every
        self.start = time.monotonic()
        self._next = self.start + every

    def tick(self, done: int, extra: str = "") -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every
        of = f"/{self.total:,}" if self.total else ""
        print(f"    .. {self.label}: {done:,}{of} after {now - self.start:.1f} s {extra}".rstrip(),
              file=sys.stderr, flush=True)


# --- processes and ports --------------------------------------------------------------------------------------


class BenchError(Exception):
    """A one-line, user-facing failure (printed without a traceback)."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def start_process(
    argv: Sequence[str],
    *,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    cpus: set[int] | None = None,
    stdout: Any = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv``; its stdout and stderr go to ``log_path`` if given (else they are inherited)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [full_env.get("PYTHONPATH")])])
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    full_env["AIOBROKER_BENCH_CHILD"] = "1"  # children leave one-time notices to the parent
    if env:
        full_env.update(env)
    preexec: Callable[[], None] | None = None
    if cpus is not None and hasattr(os, "sched_setaffinity"):
        wanted = set(cpus)

        def preexec() -> None:
            os.sched_setaffinity(0, wanted)

    out: Any = stdout
    err: Any = None
    log = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed below
        out = log if stdout is None else stdout
        err = subprocess.STDOUT if stdout is None else log
    try:
        return subprocess.Popen(
            list(argv), stdout=out, stderr=err, env=full_env, cwd=str(cwd or REPO), preexec_fn=preexec
        )
    except OSError as exc:
        raise BenchError(f"cannot start {argv[0]}: {exc}") from exc
    finally:
        if log is not None:
            log.close()


def stop_process(proc: subprocess.Popen[Any], *, grace: float = 5.0) -> int | None:
    """SIGTERM to ``proc.pid``, wait up to ``grace`` seconds, then SIGKILL to the same pid. Returns the exit code."""
    if proc.poll() is not None:  # already exited (and reaped: its pid is not ours to signal any more)
        return proc.returncode
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        print(f"warning: process {proc.pid} did not exit after SIGKILL", file=sys.stderr)
        return None


def wait_for_port(
    port: int,
    *,
    host: str = LOOPBACK,
    timeout: float = 15.0,
    proc: subprocess.Popen[Any] | None = None,
    what: str = "process",
    log_path: Path | None = None,
) -> float:
    """Wait until ``host:port`` accepts a TCP connection; returns the seconds it took.

    Raises :class:`BenchError` (one line) if ``proc`` exits first or the deadline passes.
    """
    start = time.monotonic()
    deadline = start + timeout
    next_say = start + 3.0
    attempts = 0
    while attempts < 100_000:
        attempts += 1
        if time.monotonic() >= next_say:
            print(f"    .. waiting for {what} to listen on {host}:{port} ({time.monotonic() - start:.0f} s of "
                  f"{timeout:.0f} s)", file=sys.stderr, flush=True)
            next_say += 3.0
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode} before listening on {host}:{port}"
                             + _log_hint(log_path))
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return time.monotonic() - start
        except OSError:
            pass
        if time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    raise BenchError(f"{what} did not accept connections on {host}:{port} within {timeout:.0f} s"
                     + _log_hint(log_path))


def last_log_line(log_path: Path | None) -> str:
    if log_path is None:
        return ""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _log_hint(log_path: Path | None) -> str:
    if log_path is None:
        return ""
    last = last_log_line(log_path)
    shown = f"; last log line: {last[:200]!r}" if last else "; its log is empty"
    return f"{shown} (full log: {_rel(log_path)})"


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


RESULT_PREFIX = "RESULT "


def run_worker(
    argv: Sequence[str], *, timeout: float, what: str, cpus: set[int] | None = None
) -> dict[str, Any]:
    """Run a load-generating worker to completion (bounded by ``timeout``) and return the JSON it printed.

    The worker prints progress on stderr (shown as it comes) and one ``RESULT {json}`` line on stdout.
    """
    proc = start_process(argv, stdout=subprocess.PIPE, cpus=cpus)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise BenchError(f"{what} did not finish within {timeout:.0f} s (stopped it)") from None
    finally:
        if proc.poll() is None:
            stop_process(proc)
    result: dict[str, Any] | None = None
    for line in out.decode(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    if result is None:
        raise BenchError(f"{what} exited with code {proc.returncode} without a result")
    if "error" in result:
        raise BenchError(f"{what}: {result['error']}")
    return result


def emit_result(result: dict[str, Any]) -> None:
    """Worker side of :func:`run_worker`."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


def worker_main(label: str, body: Callable[[], dict[str, Any]]) -> int:
    """Run a worker's body; turn any failure into a one-line error result (the traceback goes to a log file)."""
    try:
        c0 = time.process_time()
        result = body()
        result["load_cpu_s"] = time.process_time() - c0
        emit_result(result)
        return 0
    except KeyboardInterrupt:
        emit_result({"error": "interrupted"})
        return 130
    except BaseException as exc:  # noqa: BLE001 - reported as one line; the traceback is kept in a file
        import traceback

        LOGS_DIR.mkdir(parents=True, exist_ok=True)
        path = LOGS_DIR / f"{label}-{os.getpid()}-traceback.txt"
        path.write_text("".join(traceback.format_exception(exc)))
        msg = _one_line(exc)
        emit_result({"error": f"{msg} (traceback: {_rel(path)})"})
        return 1


def _one_line(exc: BaseException) -> str:
    # Unwrap exception groups from task groups down to the first real cause.
    seen = 0
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions and seen < 20:
        exc = exc.exceptions[0]
        seen += 1
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_async(main: Callable[..., Any], *args: Any) -> Any:
    """Run ``main(*args)`` on anyio's asyncio backend with uvloop (the event loop aiobroker uses)."""
    import anyio

    return anyio.run(main, *args, backend="asyncio", backend_options={"use_uvloop": True})


class Deadline:
    """``Deadline(seconds)``: ``.left()`` seconds remaining (never negative), ``.passed``."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.end


def cpu_plan(pin: bool, servers: int) -> tuple[list[set[int] | None], set[int] | None]:
    """CPU sets for ``servers`` server processes and the load process when pinning (2+ CPUs), else Nones."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return [None] * servers, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return [None] * servers, None
    load = {cpus[-1]}
    server_cpus = set(cpus[:-1])
    return [server_cpus] * servers, load


# --- pacing (latency runs) ------------------------------------------------------------------------------------


async def paced_send(
    send_batch: Callable[[int, int], Any],
    *,
    rate: float,
    total: int,
    tick: float = 0.001,
    max_seconds: float,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Send ``total`` messages at ``rate`` per second: each ``tick`` sends every message now due, in one batch.

    ``await send_batch(first_seq, count)`` sends messages ``first_seq .. first_seq+count-1``. Message ``i`` is due
    at ``start + i / rate``. Returns the start time (monotonic ns), what was sent, the achieved rate and the
    worst lag behind the schedule (a sender that cannot keep up shows here, not in the latency figures).
    """
    import anyio

    start_ns = time.monotonic_ns()
    start = start_ns / 1e9  # time.monotonic() and time.monotonic_ns() read the same clock
    deadline = start + max_seconds
    sent = 0
    max_lag = 0.0
    batches = 0
    # Timers on uvloop have millisecond resolution (a 0.4 ms sleep returns at once), so each iteration sleeps
    # one whole tick; what fell due meanwhile goes in the next batch. The count bound allows for early wake-ups.
    max_ticks = int(4 * max_seconds / tick) + 10_000
    for _ in range(max_ticks):
        now = time.monotonic()
        if sent >= total or now >= deadline:
            break
        due = min(total, int((now - start) * rate) + 1)
        if due > sent:
            lag = now - (start + sent / rate)
            if lag > max_lag:
                max_lag = lag
            await send_batch(sent, due - sent)
            sent = due
            batches += 1
            if progress is not None:
                progress.tick(sent, "sent")
        await anyio.sleep(tick)
    elapsed = time.monotonic() - start
    return {
        "start_ns": start_ns,
        "sent": sent,
        "batches": batches,
        "target_rate": rate,
        "achieved_rate": sent / elapsed if elapsed > 0 else 0.0,
        "max_schedule_lag_ms": max_lag * 1e3,
    }


# --- CPU accounting: what the server used, and whether anything else was running ------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def stat_cpu(path: str) -> tuple[float, float] | None:
    """(user, system) CPU seconds from a Linux ``stat`` file: a process's (``/proc/PID/stat``, every thread) or one
    thread's (``/proc/PID/task/TID/stat``); None if it is gone."""
    try:
        with open(path) as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a live process, in bytes (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by a live process (Linux /proc), or None."""
    cpu = stat_cpu(f"/proc/{pid}/stat")
    return None if cpu is None else cpu[0] + cpu[1]


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, summed over CPUs (Linux /proc/stat).

    ``busy`` is user + nice + system time: what processes use. Interrupt and softirq time is left out: loopback
    TCP is processed largely in softirq, which is not charged to the sending or receiving process, so counting
    it would make a benchmark's own traffic look like another process's load.
    """
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
        vals = [int(v) for v in parts[1:]]
    except (OSError, ValueError):
        return None
    busy = vals[0] + vals[1] + vals[2]
    total = sum(vals[:8])  # guest time is already counted in user
    return busy / _CLK_TCK, total / _CLK_TCK


def machine_steal_seconds() -> float | None:
    """CPU seconds the hypervisor gave to other guests ("steal"), summed over CPUs, since boot."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
        return int(parts[8]) / _CLK_TCK if len(parts) > 8 else None
    except (OSError, ValueError):
        return None


def children_cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class CpuMeter:
    """Around one measured run: CPU used by the server process(es), by the load process, and by everything else.

    ``others_cores`` (CPU seconds used by other processes on the machine / wall seconds) and ``steal_cores`` (CPU
    the hypervisor gave to other guests) say whether the run shared the machine: on 2 cores, anything above ~0.1
    makes the figures unreliable.
    """

    def __init__(self, server_pids: Sequence[int]) -> None:
        self.server_pids = list(server_pids)
        self.t0 = time.monotonic()
        self.server0 = [proc_cpu_seconds(p) for p in self.server_pids]
        self.children0 = children_cpu_seconds()
        self.self0 = time.process_time()
        self.machine0 = machine_cpu_seconds()
        self.steal0 = machine_steal_seconds()

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        server = 0.0
        for pid, c0 in zip(self.server_pids, self.server0, strict=False):
            c1 = proc_cpu_seconds(pid)
            if c0 is not None and c1 is not None:
                server += c1 - c0
        load = children_cpu_seconds() - self.children0  # the load worker, reaped inside the window
        mine = time.process_time() - self.self0
        out: dict[str, Any] = {"wall_s": wall, "server_cpu_s": server, "load_cpu_s": load}
        m1 = machine_cpu_seconds()
        if self.machine0 and m1:
            busy = m1[0] - self.machine0[0]
            others = max(0.0, busy - server - load - mine)
            out["machine_busy_cpu_s"] = busy
            out["others_cpu_s"] = others
            out["others_cores"] = others / wall if wall > 0 else 0.0
        st1 = machine_steal_seconds()
        if self.steal0 is not None and st1 is not None:
            out["steal_cores"] = (st1 - self.steal0) / wall if wall > 0 else 0.0
        return out

    @staticmethod
    def contention(cpu: dict[str, Any]) -> float:
        """Cores' worth of CPU the run did not get: other processes' use plus the hypervisor's steal."""
        return float(cpu.get("others_cores", 0.0)) + float(cpu.get("steal_cores", 0.0))


def machine_busy_now(sample_s: float = 0.5) -> float | None:
    """Cores' worth of CPU not ours to have right now (sampled over ``sample_s``): what processes use, plus what
    the hypervisor gives other guests (steal, which made "quiet" machines measure 5-10x slower tails); None off
    Linux."""
    a, sa = machine_cpu_seconds(), machine_steal_seconds()
    time.sleep(sample_s)
    b, sb = machine_cpu_seconds(), machine_steal_seconds()
    if not a or not b:
        return None
    steal = (sb - sa) if sa is not None and sb is not None else 0.0
    return float(b[0] - a[0] + steal) / sample_s


def wait_until_quiet(max_wait: float, threshold: float = 0.15, *, say: Callable[[str], None] | None = None) -> float | None:
    """Wait (at most ``max_wait`` s) until other processes and steal take under ``threshold`` cores; return the
    last reading."""
    start = time.monotonic()
    deadline = start + max_wait
    busy = machine_busy_now()
    next_say = start
    for _ in range(int(max_wait / 0.5) + 2):
        if busy is None or busy < threshold or time.monotonic() >= deadline:
            break
        if say and time.monotonic() >= next_say:
            say(f"    .. waiting (up to {max_wait:.0f} s) for other processes and steal to leave the CPUs idle: "
                f"{busy:.2f} cores busy after {time.monotonic() - start:.0f} s")
            next_say = time.monotonic() + 5.0
        busy = machine_busy_now()
    if say and busy is not None and busy >= threshold:
        say(f"    .. still {busy:.2f} cores busy after {max_wait:.0f} s; measuring anyway")
    return busy


BUSY_THRESHOLD = 0.1  # cores taken by other processes (or steal) above which a run is marked BUSY
#: the ``--retry-busy K`` option's help, for every benchmark that has it (see :func:`run_unless_busy`)
RETRY_BUSY_HELP = ("run a measurement again (up to K more times) when other processes took CPU during it or the"
                   " platform paused; if every attempt was, the least disturbed one is reported")


def disturbance_ms(result: dict[str, Any]) -> float:
    """Milliseconds of CPU a run did not get: other processes' and the hypervisor's (steal) share of the run's
    wall time, plus the platform's pauses (latency runs)."""
    cpu = result.get("cpu", {})
    lost = CpuMeter.contention(cpu) * float(cpu.get("wall_s", 0.0)) * 1000.0
    return lost + float(result.get("pauses", {}).get("total_ms", 0.0))


def _quiet(result: dict[str, Any]) -> bool:
    """Whether a run had the machine to itself: no other process took CPU, and the platform did not pause it long."""
    return CpuMeter.contention(result.get("cpu", {})) <= BUSY_THRESHOLD and not result.get("disturbed")


def run_unless_busy(fn: Callable[[], dict[str, Any]], retries: int, label: str) -> dict[str, Any]:
    """Run ``fn()`` (a measured run whose result has a ``cpu`` entry from :class:`CpuMeter`); while another
    program took CPU during it, or the platform was paused for long (``disturbed``, from
    :func:`run_latency_worker`), run it again, at most ``retries`` more times.

    Returns the first undisturbed run; if every attempt was disturbed, the least disturbed one
    (:func:`disturbance_ms`), chosen by what the machine did to the run, never by the run's own figures. Every
    attempt's disturbance and figures stay in the result (``attempts``), so nothing measured is hidden."""
    attempts: list[dict[str, Any]] = []
    for attempt in range(retries + 1):
        result = fn()
        attempts.append(result)
        if _quiet(result) or attempt == retries:
            break
        busy = CpuMeter.contention(result.get("cpu", {}))
        why = (f"other processes took {busy:.2f} cores during the run" if busy > BUSY_THRESHOLD
               else f"the platform was paused for {result['pauses']['total_ms']:.0f} ms of the run")
        print(f"    .. {label}: {why}; running it again ({attempt + 1}/{retries})", flush=True)
    last = attempts[-1]
    if len(attempts) == 1:
        return last
    clean = _quiet(last)
    chosen = last if clean else min(attempts, key=disturbance_ms)
    chosen["busy_retries"] = len(attempts) - 1
    chosen["attempts"] = [_attempt_summary(a, a is chosen) for a in attempts]
    if not clean:
        print(f"    .. {label}: every attempt was disturbed; reporting the least disturbed"
              f" ({attempts.index(chosen) + 1} of {len(attempts)}, {disturbance_ms(chosen):.0f} ms of CPU lost)",
              flush=True)
    return chosen


def _attempt_summary(result: dict[str, Any], chosen: bool) -> dict[str, Any]:
    """One attempt of :func:`run_unless_busy`, as kept in the chosen result."""
    out: dict[str, Any] = {"chosen": chosen, "disturbance_ms": round(disturbance_ms(result), 1),
                           "contention_cores": round(CpuMeter.contention(result.get("cpu", {})), 3),
                           "pauses_ms": result.get("pauses", {}).get("total_ms")}
    for key in ("throughput", "latency", "outside_pauses"):
        if key in result:
            out[key] = result[key]
    return out


def sigterm_as_interrupt() -> None:
    """In an orchestrator: make SIGTERM raise KeyboardInterrupt, so ``finally`` blocks stop the child processes."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run_guarded(bench: Callable[[], int], stopped: str) -> int:
    """An orchestrator's run, as every benchmark's ``main`` has it: SIGTERM stops it as Ctrl-C does, a
    :class:`BenchError` is one line and exit status 2, an interrupt says what was stopped (``stopped``) and exits
    130; otherwise ``bench()``'s own status."""
    sigterm_as_interrupt()
    try:
        return bench()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted ({stopped} were stopped)", file=sys.stderr)
        return 130


class Scraper:
    """Fetches a URL every ``every`` seconds in a thread, as Prometheus scrapes a target, until stopped; counts
    the answers (status 200) and the failures."""

    def __init__(self, url: str, every: float) -> None:
        self.url = url
        self.every = every
        self.answered = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=5) as http:
            while not self._stop.wait(self.every):
                try:
                    ok = http.get(self.url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.answered += ok
                self.failed += not ok
