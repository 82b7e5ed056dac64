"""benchmarks/bench_new_conversations.py run as a user runs it: its command line, its refusals, and a tiny round
through a real node process and a real peer connection, which must deliver every message exactly once."""

from __future__ import annotations

import json
import re
import shutil
from functools import partial
from pathlib import Path

import bench_scripts
import pytest


#: the script run as a user runs it (bench_scripts.run_script), 120 s at most unless told
run_script = partial(bench_scripts.run_script, "bench_new_conversations.py", timeout=120)


def test_help_names_the_options() -> None:
    done = run_script("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--messages", "--services", "--frame", "--window", "--receivers", "--receive-batch", "--rounds",
                   "--instructions", "--profile", "--json"):
        assert option in done.stdout


def test_a_window_smaller_than_a_frame_is_refused() -> None:
    done = run_script("--frame", "100", "--window", "50")
    assert done.returncode == 2
    assert "--window must be at least --frame" in done.stderr


def test_a_tiny_round_delivers_every_message_once_and_reports_cpu_per_message(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = run_script("--messages", "300", "--services", "7", "--frame", "50", "--window", "100", "--receivers", "3",
                      "--receive-batch", "40", "--rounds", "1", "--json", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "us CPU per message" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["messages"] == 300 and len(figures["rounds"]) == 1
    assert figures["node_us_per_message"] > 0 and figures["client_us_per_message"] > 0
    assert figures["rounds"][0]["peer_cpu_s"] is not None  # the peer saw every message acknowledged


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_instructions_leave_the_interpreters_exit_out(tmp_path: Path) -> None:
    """--instructions counts node B up to its interpreter's exit: the exit's collections walk every endpoint still
    alive, work done once when the node stops, which counted as if done per message."""
    kept = tmp_path / "callgrind"
    done = run_script("--instructions", "--messages", "200", "--services", "3", "--frame", "50", "--receivers", "2",
                      "--receive-batch", "50", "--rounds", "1", "--keep-callgrind", str(kept), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"node B: [\d,]+ instructions per message", done.stdout), done.stdout
    for messages in (0, 200):
        before = int(re.findall(r"^summary: (\d+)$", (kept / f"callgrind-{messages}.out.1").read_text(), re.M)[-1])
        exit_part = int(re.findall(r"^summary: (\d+)$", (kept / f"callgrind-{messages}.out").read_text(), re.M)[-1])
        whole = int(re.findall(r"Collected : (\d+)", (kept / f"callgrind-{messages}.log").read_text())[-1])
        # the two parts make the whole (give or take the dump's own few thousand instructions)
        assert exit_part > 0 and abs(before + exit_part - whole) < whole / 10_000, (before, exit_part, whole)
