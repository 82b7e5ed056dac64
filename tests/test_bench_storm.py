"""benchmarks/bench_resolution_storm.py run as a user runs it, tiny (``--quick``: 100 services x 20 conversations),
so the script cannot rot between the long runs: every message exactly once and in order, every service asked once,
and the figures it prints, among them where the cores went while the answers came (benchmarks/phase_cpu.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from phase_cpu import PhaseCpu  # noqa: E402

SCRIPT = BENCHMARKS / "bench_resolution_storm.py"

pytestmark = pytest.mark.slow


def test_a_quick_storm_on_sqlite_delivers_everything_once_and_says_where_the_cpu_went() -> None:
    # one question open at a time: the answers take ~100 ms, several of the CPU sampler's periods (with 64 open a
    # quick run's answers can all come within one, and the phase then holds no sample worth naming)
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--no-baseline", "--store", "sqlite",
                          "--max-open-questions", "1"], capture_output=True, text=True, timeout=240, check=False)
    out = run.stdout + run.stderr
    assert run.returncode in (0, 1), out  # 1: a floor failed (a busy machine, or --quick's fixed costs); 2: lost
    assert "storm 2,000/2,000" in out and "yes" in out.split("exactly once, in order per conversation")[1], out
    assert "PASS (== 100)" in out, out  # one round trip per service
    # where the CPU went, by phase: A's loop worked while the answers came
    answers_row = next(line for line in out.splitlines() if line.startswith("CPU s, gate -> last answer"))
    assert "A main" in answers_row, out
    assert any(line.startswith("CPU s, last answer -> last received") for line in out.splitlines()), out


def test_phase_cpu_counts_the_cpu_a_child_burns_between_two_instants() -> None:
    sampler = PhaseCpu(lambda argv: "burner" if "burn-for-the-test" in argv else None, period=0.01)
    sampler.start()
    # burn 0.3 s of CPU, say so, and stay until told (so that a sample sees all of it), then end
    burn = ("import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
            "print('done', flush=True)\nsys.stdin.read()")
    t0 = time.monotonic_ns()
    child = subprocess.Popen([sys.executable, "-c", burn, "burn-for-the-test"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "done"
        burnt = time.monotonic_ns()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum(1 for when, _ in sampler.samples if when > burnt) < 2:
            time.sleep(0.01)
    finally:
        child.communicate("", timeout=10)
    sampler.stop()
    before = sampler.between(t0 - 10**9, t0)
    took = sampler.between(t0, time.monotonic_ns())
    assert "burner main" not in before, before
    assert 0.3 <= took.get("burner main", 0.0) <= 0.6, took  # the burn and the interpreter's start
