"""Where a machine's cores go during one phase of a run: CPU seconds per process (and per thread kind) between two
instants, sampled from ``/proc`` every few milliseconds by a thread of the benchmark's own process.

A benchmark whose processes share two cores (nodes, a registry, a load process) is bound by their sum: this says
which of them took the CPU while, say, a resolver's answers were coming in. The instants are ``time.monotonic_ns()``
values, comparable across the machine's processes (CLOCK_MONOTONIC), so a phase measured in one process (the load's
"gate opened") can be cut from samples taken in another.

    sampler = PhaseCpu(label_of)      # label_of(argv) -> a name, or None to leave the process out
    sampler.start(); ...; sampler.stop()
    sampler.between(t0_ns, t1_ns)     # {"A main": 1.14, "A threads": 0.41, "B main": 1.19, ...}
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from common import stat_cpu

def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def _argv(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def _thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``."""
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        cpu = stat_cpu(f"/proc/{pid}/task/{tid}/stat")
        if cpu is not None:
            out[int(tid)] = cpu[0] + cpu[1]
    return out


class PhaseCpu:
    """Samples, every ``period`` seconds, the CPU of each thread of every descendant of this process that
    ``label_of`` names (from its command line); :meth:`between` says what each label took between two instants.
    A process's own thread is "<label> main", the others "<label> threads" (a node's store writer, its readers)."""

    def __init__(self, label_of: Callable[[str], str | None], period: float = 0.02) -> None:
        self.label_of = label_of
        self.period = period
        self.samples: list[tuple[int, dict[str, float]]] = []
        self._labels: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="phase-cpu", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _label(self, pid: int) -> str | None:
        label = self._labels.get(pid)
        if label is None:
            # not remembered until named: a process caught between fork and exec shows our command line, or an
            # empty one, for a moment
            argv = _argv(pid)
            label = None if argv is None or argv == _argv(os.getpid()) else self.label_of(argv)
            if label is not None:
                self._labels[pid] = label
        return label

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            now = time.monotonic_ns()
            totals: dict[str, float] = {}
            todo, seen = _children(me), set()
            while todo:
                pid = todo.pop()
                if pid in seen:
                    continue
                seen.add(pid)
                todo += _children(pid)
                label = self._label(pid)
                if label is None:
                    continue
                for tid, cpu in _thread_cpu(pid).items():
                    key = f"{label} main" if tid == pid else f"{label} threads"
                    totals[key] = totals.get(key, 0.0) + cpu
            self.samples.append((now, totals))
            self._stop.wait(self.period)

    def _upto(self, t_ns: int) -> dict[str, float]:
        """Each label's CPU as last sampled at or before ``t_ns`` (a process that has ended keeps its last)."""
        known: dict[str, float] = {}
        for when, totals in self.samples:
            if when > t_ns:
                break
            known.update(totals)
        return known

    def between(self, t0_ns: int | None, t1_ns: int | None) -> dict[str, float]:
        """CPU seconds each label took between ``t0_ns`` and ``t1_ns``, to the sampling period (a thread that ended
        in between counts up to its last sample)."""
        if t0_ns is None or t1_ns is None:
            return {}
        a, b = self._upto(t0_ns), self._upto(t1_ns)
        return {key: round(b[key] - a.get(key, 0.0), 3) for key in sorted(b) if b[key] - a.get(key, 0.0) > 0.0005}
