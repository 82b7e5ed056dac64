"""benchmarks/bench_backlog.py's pure parts (benchmarks/backlog_parts.py), so the script cannot rot between the
long runs that need it: the bodies, the fill plan, the record of what was acknowledged, the drain's exactly-once
check (which must catch what it exists to catch), the floors; and its command line run as a user runs it, with a
tiny run through real node processes, unbounded and against a budget it fills."""

from __future__ import annotations

import json
import re
import sys
from functools import partial
from pathlib import Path

import pytest

import bench_scripts

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import backlog_parts as parts  # noqa: E402
import bench_backlog  # noqa: E402

#: the script run as a user runs it (bench_scripts.run_script), 60 s at most unless told
run_script = partial(bench_scripts.run_script, "bench_backlog.py", timeout=60)


# --- bodies and the fill plan ------------------------------------------------------------------------------------


def test_a_body_carries_its_conversation_and_number_at_its_size() -> None:
    body = parts.make_body(128, 7, 123_456)
    assert len(body) == 128 and parts.read_body(body) == (7, 123_456)
    assert len(parts.make_body(4096, 0, 0)) == 4096
    with pytest.raises(ValueError, match="at least 16 bytes"):
        parts.make_body(15, 0, 0)


def test_messages_are_spread_evenly_over_the_conversations() -> None:
    assert parts.per_conversation(10, 3) == [4, 3, 3]
    assert parts.per_conversation(2, 4) == [1, 1, 0, 0]
    assert sum(parts.per_conversation(10_000_001, 1000)) == 10_000_001
    with pytest.raises(ValueError):
        parts.per_conversation(10, 0)


def test_the_fill_sends_every_number_of_every_conversation_once_in_order_going_round_them() -> None:
    counts = parts.per_conversation(2_345, 7)
    producers = 2
    seen: dict[int, list[int]] = {}
    for p in range(producers):
        mine = range(p, 7, producers)
        batches = list(parts.fill_batches(counts, 100, mine))
        assert all(c % producers == p for c, _, _ in batches), "a producer sends only its own conversations"
        assert all(0 < k <= 100 for _, _, k in batches)
        assert [c for c, _, _ in batches[:len(mine)]] == list(mine), "round the conversations, one batch each"
        for c, first, k in batches:
            seen.setdefault(c, []).extend(range(first, first + k))
    assert {c: len(v) for c, v in seen.items()} == dict(enumerate(counts))
    assert all(v == list(range(len(v))) for v in seen.values())
    assert list(parts.fill_batches([0, 0], 10, [0, 1])) == []
    with pytest.raises(ValueError):
        list(parts.fill_batches([5], 0, [0]))


# --- what was acknowledged, and the drain's check --------------------------------------------------------------


def test_acknowledged_ranges_merge_and_a_refused_batch_leaves_a_gap() -> None:
    acked = parts.Acked(3)
    acked.add(0, 0, 10)
    acked.add(0, 10, 5)
    acked.add(1, 0, 10)
    acked.add(1, 20, 10)  # numbers 10..19 were refused
    assert acked.ranges == [[[0, 15]], [[0, 10], [20, 10]], []]
    assert (acked.total, acked.gaps) == (35, 1)
    again = parts.Acked.from_json(json.loads(json.dumps(acked.to_json())))
    assert again.ranges == acked.ranges and again.total == 35


def drain(acked: parts.Acked, arrivals: list[tuple[int, int]]) -> parts.DrainChecker:
    checker = parts.DrainChecker(acked)
    for conversation, number in arrivals:
        checker.see(conversation, number)
    return checker


def two_conversations() -> parts.Acked:
    acked = parts.Acked(2)
    acked.add(0, 0, 3)
    acked.add(1, 0, 2)
    acked.add(1, 5, 1)  # 2..4 refused: only 5 is due after 1
    return acked


def test_the_drain_check_passes_every_message_once_in_order_per_conversation_interleaved() -> None:
    checker = drain(two_conversations(), [(1, 0), (0, 0), (0, 1), (1, 1), (1, 5), (0, 2)])
    assert checker.ok and checker.complete
    assert checker.summary() == {"exactly_once": True, "received_as_due": 6, "expected": 6, "problems": 0,
                                 "first_problems": []}


@pytest.mark.parametrize(("arrivals", "says"), [
    ([(0, 0), (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 5)], "number 0 while 1 was due"),  # a duplicate
    ([(0, 0), (0, 2), (0, 1), (1, 0), (1, 1), (1, 5)], "number 2 while 1 was due"),  # reordered
    ([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)], "number 2 while 5 was due"),  # a refused one arrived
    ([(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 5)], "after all it sent had arrived"),
    ([(2, 0)], "conversation 2, which was never begun"),
])
def test_the_drain_check_catches_duplicates_reorderings_and_strangers(arrivals: list[tuple[int, int]],
                                                                      says: str) -> None:
    checker = drain(two_conversations(), arrivals)
    assert not checker.ok
    assert checker.problems >= 1 and says in checker.summary()["first_problems"][0]


def test_the_drain_check_counts_what_is_missing() -> None:
    checker = drain(two_conversations(), [(0, 0), (0, 1), (1, 0)])
    assert not checker.complete and not checker.ok and checker.missing() == 3


# --- floors ------------------------------------------------------------------------------------------------------


def full_case(**changes: object) -> dict[str, object]:
    case: dict[str, object] = {"size": 128, "messages": 1000, "stored": 1000, "refused": None,
                               "rss_per_message": 100.0, "restart_s": 1.5, "drain_rate": 60_000.0,
                               "baseline_rate": 100_000.0, "peak_growth": 10 * parts.MIB}
    case.update(changes)
    return case


def verdicts(case: dict[str, object], max_memory: int | None = 512 * parts.MIB) -> dict[str, bool]:
    return {f.what.split(": ", 1)[1].split(" (")[0]: f.passed for f in parts.floors(case, max_memory=max_memory)}


def test_floors_pass_on_figures_within_them() -> None:
    assert all(verdicts(full_case()).values())
    assert len(verdicts(full_case())) == 5


def test_each_floor_fails_on_its_own_figure() -> None:
    assert verdicts(full_case(rss_per_message=121.0))["resident memory <= 120 B a stored message"] is False
    assert verdicts(full_case(restart_s=20.0))["restart to serving < 20 s"] is False
    assert verdicts(full_case(drain_rate=49_999.0))["drain >= 50% of one-node throughput"] is False
    assert verdicts(full_case(peak_growth=513 * parts.MIB))["resident growth within max_memory"] is False
    refused = parts.floors(full_case(stored=600, refused="nothing was sent: over budget; receive or raise it"),
                           max_memory=None)[0]
    assert not refused.passed and refused.measured == "600 stored, then refused: nothing was sent: over budget"


def test_a_phase_that_did_not_run_fails_its_floors_and_only_128_bytes_has_a_memory_floor() -> None:
    missing = verdicts({"size": 128, "messages": 1000, "stored": 0})
    assert not any(missing.values())
    big = verdicts(full_case(size=4096, rss_per_message=5000.0), max_memory=None)
    assert all(big.values()) and not any("resident" in what for what in big)


# --- the command line --------------------------------------------------------------------------------------------


def test_help_runs_and_names_the_options() -> None:
    done = run_script("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--quick", "--messages", "--size", "--conversations", "--max-memory", "--max-seconds", "--store",
                   "--producers", "--consumers"):
        assert option in done.stdout
    assert "Exit status 0" in done.stdout


def test_defaults_quick_and_sizes() -> None:
    args = bench_backlog.parse_args([])
    assert args.cases == [(10_000_000, 128), (1_000_000, 4096)]
    assert (args.max_memory, args.conversations, args.store) == (512 * parts.MIB, 1000, "sqlite")
    assert bench_backlog.parse_args(["--quick"]).cases == [(500_000, 128), (50_000, 4096)]
    assert bench_backlog.parse_args(["--quick", "--size", "4k"]).cases == [(50_000, 4096)]
    assert bench_backlog.parse_args(["--size", "128", "--messages", "5000"]).cases == [(5000, 128)]
    assert bench_backlog.parse_args(["--max-memory", "0"]).max_memory is None
    assert bench_backlog.parse_args(["--max-memory", "unbounded"]).max_memory is None
    assert bench_backlog.parse_args(["--max-memory", "2GiB"]).max_memory == 2048 * parts.MIB
    assert bench_backlog.parse_args(["--max-memory", "1048576"]).max_memory == parts.MIB


@pytest.mark.parametrize(("argv", "says"), [
    (["--size", "8"], "under the minimum"),
    (["--size", "128,4096"], "--size takes one size"),
    (["--max-memory", "lots"], "give bytes or N MiB/GiB"),
    (["--max-memory", "1000"], "under the node's minimum of 1 MiB"),
    (["--conversations", "0"], "--conversations must be at least 1"),
    (["--messages", "10", "--conversations", "20"], "more than the 10 messages of a case"),
    (["--max-seconds", "0"], "must be positive"),
    (["--data-root", "/nonexistent/backlog"], "no such directory"),
])
def test_bad_options_say_what_is_wrong_before_anything_starts(argv: list[str], says: str) -> None:
    done = run_script(*argv)
    assert done.returncode == 2
    assert says in done.stderr
    assert "bench_backlog:" not in done.stdout  # no run began


# --- a tiny run through real node processes ----------------------------------------------------------------------


def result_file(stdout: str) -> dict[str, object]:
    found = re.search(r"^results: (\S+)$", stdout, re.M)
    assert found, stdout
    path = Path(found.group(1))
    path = path if path.is_absolute() else Path.cwd() / path
    data: dict[str, object] = json.loads(path.read_text())
    path.unlink()
    return data


TINY = ["--size", "128", "--messages", "3000", "--conversations", "30", "--baseline-messages", "3000",
        "--max-seconds", "60", "--start-timeout", "30"]


@pytest.mark.slow
def test_a_tiny_unbounded_run_stores_restarts_and_drains_every_message_exactly_once() -> None:
    done = run_script(*TINY, "--max-memory", "0", timeout=240)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: today's node misses the memory floor
    data = result_file(done.stdout)
    (case,) = data["cases"]  # type: ignore[misc]
    assert case["stored"] == 3000 and case["refused"] is None
    assert case["drain"]["check"]["exactly_once"] is True and case["drain"]["received"] == 3000
    assert 0 < case["restart_s"] < 30 and case["rss_per_message"] > 0 and case["baseline_rate"] > 0
    assert "restart to serving" in done.stdout and "exactly once and in order: ok" in done.stdout


@pytest.mark.slow
def test_a_budget_the_fill_reaches_is_reported_as_refused_and_fails_the_floor_without_a_crash() -> None:
    done = run_script(*TINY, "--messages", "20000", "--max-memory", "1MiB", timeout=240)
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"REFUSED after [\d,]+ of 20,000 stored: .*memory budget of 1\.0 MiB", done.stdout), done.stdout
    assert re.search(r"FAIL  128 B: all 20,000 messages stored: [\d,]+ stored, then refused", done.stdout)
    data = result_file(done.stdout)
    (case,) = data["cases"]  # type: ignore[misc]
    assert 0 < case["stored"] < 20_000
    assert case["drain"]["received"] == case["stored"], "what was stored before the refusal is drained"
    assert case["drain"]["check"]["exactly_once"] is True
