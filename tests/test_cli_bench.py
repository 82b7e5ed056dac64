"""``aiobroker bench`` run as users run it: a real command against a real node process, its JSON and its table, its
pacing, its plot, its refusals of bad options; and the run's checker, which must catch what it exists to catch."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiobroker.cli.bench import summarize
from aiobroker.cli.bench_run import HEADER, Plan, Tally, _see
from node_process import NodeProcess

BENCH_TIMEOUT = 120


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path_factory.mktemp("bench") / "data", store="memory").start()
    yield n
    n.stop()


def bench(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiobroker", "--address", node.url, "bench", *args],
        capture_output=True, text=True, timeout=BENCH_TIMEOUT, check=False,
    )


def queues(node: NodeProcess) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "aiobroker", "--address", node.url, "list", "queues", "--json"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    return [q["name"] for q in json.loads(out)]


def test_every_message_arrives_once_in_order_and_the_run_cleans_up(node: NodeProcess) -> None:
    before = queues(node)
    done = bench(node, "--count", "6000", "--producers", "2", "--consumers", "2", "--conversations", "3",
                 "--batch", "200", "--json")
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    assert (s["sent"], s["received"], s["missing"], s["duplicates"], s["out_of_order"]) == (6000, 6000, 0, 0, 0)
    assert s["conversations"] == 6 and s["size"] == 128
    assert s["msg_per_s"] > 0 and s["mb_per_s"] > 0
    lat = s["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert s["latency_from_due_ms"] is None  # unpaced
    assert sum(s["per_second"]) == 6000
    assert queues(node) == before, "the run dropped the queues it made"
    assert s["objects"]["queue_to"] not in queues(node)


def test_the_table_says_what_a_person_needs(node: NodeProcess) -> None:
    done = bench(node, "--count", "2000", "--size", "1024")
    assert done.returncode == 0, done.stderr
    lines = dict(line.split("  ", 1) for line in done.stdout.splitlines())
    assert lines["messages"].strip().startswith("2,000 of 2,000 received in")
    assert "msg/s" in lines["throughput"] and "(1024 B each)" in lines["throughput"]
    assert lines["latency ms"].strip().startswith("p50 ")
    assert lines["exactly once"].strip() == "yes, and in order"


def test_a_paced_run_keeps_its_rate_and_counts_latency_from_when_each_message_was_due(node: NodeProcess) -> None:
    done = bench(node, "--duration", "2", "--rate", "1000", "--batch", "50", "--json")
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    # 1,000 msg/s for 2 s: about 2,000 (an unpaced run sends tens of thousands in that time)
    assert 1500 <= s["sent"] <= 2200, s["sent"]
    assert s["received"] == s["sent"] and s["missing"] == 0
    assert s["latency_from_due_ms"]["p50"] is not None
    assert s["rate"] == 1000
    progress = [line for line in done.stderr.splitlines() if line.startswith("aiobroker: bench: sent ")]
    assert progress, f"no progress line on stderr: {done.stderr!r}"


def test_plot_draws_a_png(node: NodeProcess, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs the plot extra (the test extra installs it)")
    out = tmp_path / "bench.png"
    done = bench(node, "--count", "2000", "--plot", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"drew {out}" in done.stderr


def test_bad_options_are_refused_before_anything_runs(node: NodeProcess) -> None:
    small = bench(node, "--size", "10")
    assert small.returncode == 2
    assert "a message is at least 32 bytes" in small.stderr
    both = bench(node, "--count", "10", "--duration", "1")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    rate = bench(node, "--rate", "0")
    assert rate.returncode == 2 and "messages a second > 0" in rate.stderr


def test_an_unreachable_node_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    from node_process import free_port

    done = subprocess.run(
        [sys.executable, "-m", "aiobroker", "--address", f"tcp://127.0.0.1:{free_port()}", "bench", "--count", "10"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("aiobroker: error: ") and len(done.stderr.strip().splitlines()) == 1


def _body(producer: int, conversation: int, seq: int) -> bytes:
    return HEADER.pack(producer, conversation, seq, 0, 0) + b"\0" * 8


def test_the_checker_counts_a_message_out_of_order_one_twice_and_those_never_arrived() -> None:
    tally = Tally(sent=6 + 3)
    for seq in (0, 1, 3, 2, 3):  # 2 after 3; 3 twice; 4 and 5 never arrive
        _see(tally, _body(0, 0, seq), now=1_000_000, second=0)
    for seq in (0, 1, 2):  # another conversation of the same producer, in order: nothing to say
        _see(tally, _body(0, 1, seq), now=1_000_000, second=0)
    s = summarize(Plan(count=9), tally)
    assert (s["out_of_order"], s["duplicates"], s["missing"]) == (1, 1, 2)
    assert s["received"] == 7  # each message counted once, the second 3 not
    assert struct.calcsize(HEADER.format) == 32


def test_consumers_cut_off_by_the_drain_bound_are_said_to_be_slow_not_lossy(
    node: NodeProcess, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # no time at all to drain after the last send: what is still queued then is not a lost message, and the
    # command must not blame the node's delivery for it
    from aiobroker.cli import app, bench_run

    monkeypatch.setattr(bench_run, "DRAIN_SECONDS", 0.0)
    status = app.main(["--address", node.url, "bench", "--count", "20000", "--batch", "100", "--json"])
    out, err = capsys.readouterr()
    assert status == 1
    s = json.loads(out)
    assert s["drain_timed_out"] is True and s["missing"] > 0
    assert "not a lost message" in err and "broke exactly-once" not in err
