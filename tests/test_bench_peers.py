"""benchmarks/bench_peers.py's pure parts, so the script cannot rot between the runs that need the peers' servers:
its command line (``--help`` run as a user runs it, the options, the refusals), the order of the interleaved runs,
the medians, ratios and table, the chart, and the MQTT client's packet framing. Needs neither nats-py nor the
servers."""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import bench_scripts

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_peers  # noqa: E402
import peers_clients  # noqa: E402


#: the script run as a user runs it (bench_scripts.run_script), 60 s at most unless told
run_script = partial(bench_scripts.run_script, "bench_peers.py", timeout=60)


def test_help_runs_and_names_the_options() -> None:
    done = run_script("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--quick", "--rounds", "--systems", "--sizes", "--plot", "--json", "--no-install"):
        assert option in done.stdout
    assert "nats-server" in done.stdout and "mosquitto" in done.stdout


def test_an_unknown_system_is_refused_before_anything_is_installed_or_started() -> None:
    done = run_script("--systems", "memory,kafka", "--no-install")
    assert done.returncode == 2
    assert "unknown system(s) kafka" in done.stderr
    assert "memory, sqlite" in done.stderr  # the choices are named
    assert "bench_peers:" not in done.stdout  # no run began


def test_defaults_and_quick() -> None:
    args = bench_peers.parse_args([])
    assert args.system_list == ["relay", "memory", "sqlite", "nats", "jetstream", "mosquitto"]
    assert args.size_list == [128, 4096]
    assert (args.rounds, args.seconds, args.duration, args.warmup, args.rate) == (3, 4.0, 5.0, 1.0, 5000.0)
    quick = bench_peers.parse_args(["--quick"])
    assert (quick.rounds, quick.seconds, quick.duration, quick.warmup) == (1, 1.0, 1.5, 0.3)
    assert bench_peers.parse_args(["--quick", "--rounds", "3"]).rounds == 3


@pytest.mark.parametrize(("argv", "says"), [
    (["--sizes", "8"], "under the minimum"),
    (["--plot", "chart.svg"], "--plot takes a .png"),
    (["--seconds", "-1"], "--seconds must be positive"),
    (["--systems", ","], "(none given)"),
])
def test_bad_options_say_what_is_wrong(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_peers.parse_args(argv)
    assert exc.value.code == 2
    assert says in capsys.readouterr().err


def test_runs_are_interleaved_round_by_round() -> None:
    args = bench_peers.parse_args(["--rounds", "2", "--systems", "nats,memory", "--sizes", "128"])
    assert bench_peers.plan(args) == [
        (0, "throughput", "nats", 128), (0, "throughput", "memory", 128),
        (0, "latency", "nats", 128), (0, "latency", "memory", 128),
        (1, "throughput", "nats", 128), (1, "throughput", "memory", 128),
        (1, "latency", "nats", 128), (1, "latency", "memory", 128),
    ]
    no_latency = bench_peers.parse_args(["--rounds", "1", "--systems", "relay", "--no-latency"])
    assert [mode for _, mode, _, _ in bench_peers.plan(no_latency)] == ["throughput", "throughput"]


def fake_run(system: str, mode: str, size: int, value: float, *, once: bool = True) -> dict[str, Any]:
    run: dict[str, Any] = {"system": system, "mode": mode, "size": size, "check": {"exactly_once": once},
                           "cpu": {"others_cores": 0.0}}
    if mode == "throughput":
        run.update(throughput=value, server_us_per_msg=value / 1e5)
    else:
        run.update(latency={"p50_ms": value / 2, "p99_ms": value}, from_schedule={"p99_ms": value + 1})
    return run


def test_medians_ratios_and_the_table() -> None:
    runs = [fake_run("nats", "throughput", 128, v) for v in (100_000.0, 150_000.0, 90_000.0)]
    runs += [fake_run("relay", "throughput", 128, v) for v in (800_000.0, 600_000.0, 700_000.0)]
    runs += [fake_run("memory", "throughput", 128, v) for v in (300_000.0, 200_000.0, 350_000.0)]
    runs += [fake_run("memory", "latency", 128, v) for v in (0.9, 2.5, 1.1)]
    runs.append(fake_run("jetstream", "throughput", 128, 25_000.0, once=False))
    summary = bench_peers.summarize(runs)
    assert summary["memory"][128]["thr"] == 300_000.0
    assert summary["memory"][128]["p99"] == 1.1 and summary["memory"][128]["p99_due"] == 2.1
    rows = bench_peers.table_rows(summary, ["relay", "memory", "nats", "jetstream", "mosquitto"], [128])
    by_system = {row[0]: dict(zip(bench_peers.HEADERS, row, strict=True)) for row in rows}
    memory = by_system["aiobroker, memory store"]
    assert memory["msg/s"] == "300,000"
    assert memory["vs NATS core"] == "3.00x"  # 300k / median(100k, 150k, 90k) = 300k / 100k
    assert memory["vs relay"] == "0.43x"  # 300k / 700k
    assert memory["p99 ms"] == "1.100" and memory["p99 from due ms"] == "2.100"
    assert (memory["stored"], memory["producer told"], memory["consumer"]) == (
        "in the node's memory", "confirmed when queued", "commits per batch (answered)")
    assert by_system["NATS core (nats-py)"]["vs NATS core"] == "1.00x"
    assert by_system["NATS core (nats-py)"]["stored"] == "not stored (at most once)"
    assert by_system["NATS JetStream, file"]["exactly-once"] == "FAILED"
    assert by_system["NATS JetStream, file"]["p99 ms"] == "-"  # no latency run
    assert by_system["mosquitto QoS 1"]["msg/s"] == "not run"
    table = bench_peers.markdown(bench_peers.HEADERS, rows)
    assert table.splitlines()[0].startswith("| system | body | msg/s | vs NATS core | vs relay |")
    assert len(table.splitlines()) == 2 + len(rows)


def test_ratio_and_short_rate() -> None:
    assert bench_peers.ratio(258_000, 155_000) == "1.66x"
    assert bench_peers.ratio(1.0, None) == "-" and bench_peers.ratio(None, 2.0) == "-"
    assert bench_peers.ratio(float("nan"), 2.0) == "-"
    assert [bench_peers.short_rate(x) for x in (744_123, 54_820, 9_870, 512, None)] == [
        "744k", "54.8k", "9.9k", "512", "-"]


def test_every_system_states_its_promises() -> None:
    for system in bench_peers.SYSTEMS:
        assert system.stored and system.confirmed and system.acked and system.tag
        assert system.key in peers_clients.CLIENTS


def test_the_chart_is_drawn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs = [fake_run(s, "throughput", size, 1000.0 * (i + 1)) for i, s in enumerate(("relay", "nats"))
            for size in (128, 4096)]
    runs += [fake_run("nats", "latency", 128, 0.4)]
    path = tmp_path / "peers.png"
    bench_peers.plot(bench_peers.summarize(runs), ["relay", "nats", "memory"], [128, 4096], path, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_mqtt_framing_survives_any_split() -> None:
    packets = [peers_clients.mqtt_publish_header(7, 4096) + b"\xa5" * 4096,  # a 2-byte remaining length
               b"\x40\x02\x00\x07",  # PUBACK
               peers_clients.mqtt_publish_header(65535, 128) + b"\x5a" * 128]
    stream = b"".join(packets)
    for cut in range(1, 40):  # chunks of every size from 1 byte up
        reader = peers_clients.MqttReader()
        got = []
        for i in range(0, len(stream), cut):
            got += reader.feed(stream[i:i + cut])
        assert [first for first, _ in got] == [0x32, 0x40, 0x32]
        assert got[1][1] == b"\x00\x07"
        topic = len(peers_clients.MQTT_TOPIC)
        assert got[0][1][2 + topic:4 + topic] == b"\x00\x07" and got[0][1][4 + topic:] == b"\xa5" * 4096
        assert got[2][1][4 + topic:] == b"\x5a" * 128
        assert reader.buf == b""


def test_a_malformed_mqtt_length_is_refused() -> None:
    with pytest.raises(ValueError, match="remaining length"):
        peers_clients.MqttReader().feed(b"\x30\xff\xff\xff\xff\x01")


def test_from_json_reprints_an_earlier_run_without_running_anything(tmp_path: Path) -> None:
    args = bench_peers.parse_args(["--systems", "nats,memory", "--sizes", "128", "--rounds", "2"])
    runs = [fake_run("nats", "throughput", 128, v) for v in (100_000.0, 120_000.0)]
    runs += [fake_run("memory", "throughput", 128, v) for v in (250_000.0, 230_000.0)]
    results = tmp_path / "peers-old.json"
    results.write_text(json.dumps({"when": "2026-12-05T02:00:00", "settings": vars(args), "runs": runs}))
    done = run_script("--from-json", str(results), "--markdown", "--plot", str(tmp_path / "old.png"))
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("| aiobroker, memory store"))
    assert "| 240,000 | 2.18x |" in row  # medians 240k and 110k
    assert "medians of 2 round(s)" in done.stdout
    assert (tmp_path / "old.png").read_bytes()[:4] == b"\x89PNG"
    assert "bench_peers:" not in done.stdout  # nothing was run


def test_from_json_refuses_a_file_that_is_not_a_results_file(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmark": "node"}))
    done = run_script("--from-json", str(other))
    assert done.returncode == 2
    assert "is not a bench_peers.py results file" in done.stderr and "KeyError" in done.stderr
