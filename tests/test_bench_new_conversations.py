"""benchmarks/bench_new_conversations.py run as a user runs it: its command line, its refusals, and a tiny round
through a real node process and a real peer connection, which must deliver every message exactly once."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import bench_scripts


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
