"""benchmarks/bench_release.py run as a user runs it, with tiny numbers, so the script cannot rot between the runs
that measure with it: its help, a release on both stores (which checks every message arrives exactly once and
nothing is left in A's store), and its refusals."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import bench_scripts


#: the script run as a user runs it (bench_scripts.run_script), 120 s at most unless told
run_script = partial(bench_scripts.run_script, "bench_release.py", timeout=120)


def test_help_names_the_options() -> None:
    done = run_script("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--services", "--conversations", "--answers-per-write", "--rounds", "--stores", "--gc", "--profile"):
        assert option in done.stdout


def test_a_tiny_release_on_both_stores_reports_every_phase(tmp_path: Path) -> None:
    profile = tmp_path / "release.prof"
    done = run_script("--services", "3", "--conversations", "4", "--answers-per-write", "2", "--rounds", "1",
                      "--profile", str(profile))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "3 services x 4 conversations = 12 messages" in done.stdout  # (on SQLite, every body was read back)
    for store in ("memory", "sqlite"):
        line = next(line for line in done.stdout.splitlines() if line.strip().startswith(f"{store}:"))
        for phase in ("reroute", "read", "send", "ack", "seal", "write", "event loop", "writer"):
            assert re.search(rf"{phase} +\d+\.\d\d", line), (phase, line)
    assert profile.stat().st_size > 0


def test_bad_numbers_and_unknown_stores_are_refused_before_any_work() -> None:
    done = run_script("--services", "0")
    assert done.returncode == 2 and "--services must be at least 1" in done.stderr
    done = run_script("--stores", "memory,postgres")
    assert done.returncode == 2 and "unknown store(s) postgres" in done.stderr and "memory, sqlite" in done.stderr
    assert "bench_release:" not in done.stdout


def test_the_phases_run_inside_their_libc_markers_as_under_callgrind() -> None:
    """--callgrind runs the script again under valgrind with the hidden --markers: each phase then runs as the
    callback of a libc search (what callgrind counts it by). Natively, the same run must complete and check the
    release as every run does."""
    done = run_script("--markers", "--services", "2", "--conversations", "3", "--rounds", "1")
    assert done.returncode == 0, done.stderr + done.stdout
    assert done.stdout == ""  # the parent reads callgrind's counts, not this run's output
