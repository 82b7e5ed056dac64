"""The node's log formats: ``aiobroker serve --log-format json`` (or ``[node] log_format = "json"``) writes one JSON
object a line to stderr, with the node and the service, queue, peer and resolver a line names; ``text`` (the
default) stays a line of words. Real node processes driven by the real command line, and the formatter alone.
"""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from aiobroker.node.logs import FIELDS, JsonFormatter
from markdown_blocks import fenced_blocks
from node_process import free_port, stop_by_pid, wait_for

CALL_TIMEOUT = 30.0
START_TIMEOUT = 20.0
RFC3339_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) +aiobroker\.[a-z.]+: \S")


def aiobroker(*args: str, address: str | None = None) -> subprocess.CompletedProcess[str]:
    where = ["--address", address] if address is not None else []
    return subprocess.run(
        [sys.executable, "-m", "aiobroker", *where, *args],
        capture_output=True, text=True, timeout=CALL_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def ok(address: str, *args: str) -> str:
    r = aiobroker(*args, address=address)
    assert r.returncode == 0, f"aiobroker {' '.join(args)} exited {r.returncode}: {r.stderr}"
    return r.stdout


@contextmanager
def serve(tmp_path: Path, *flags: str) -> Iterator[tuple[str, Path]]:
    """``aiobroker serve`` with ``flags`` on a free port, its stderr alone in a file; yields (address, that file).
    Stopped by its pid with SIGTERM, and it must exit 0."""
    port = free_port()
    stderr = tmp_path / f"serve-{port}.stderr"
    cmd = [sys.executable, "-m", "aiobroker", "serve", "--listen", f"127.0.0.1:{port}",
           "--data-dir", str(tmp_path / f"data-{port}"), *flags]  # fmt: skip
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    address = f"tcp://127.0.0.1:{port}"
    try:
        def listening() -> bool:
            assert proc.poll() is None, f"the node exited with {proc.returncode}:\n{stderr.read_text()}"
            return aiobroker("status", address=address).returncode == 0

        wait_for(listening, START_TIMEOUT, f"the node on port {port} to answer")
        yield address, stderr
    finally:
        code = stop_by_pid(proc)
    assert code == 0, f"the node exited with {code}:\n{stderr.read_text()}"


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as a JSON object; fails naming the first line that is not one."""
    lines = []
    for text in path.read_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            raise AssertionError(f"a log line is not JSON: {text!r}") from None
        assert isinstance(line, dict), text
        lines.append(line)
    return lines


# --- a real node ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_log_format_json_writes_one_object_a_line_with_the_node_and_the_fields(tmp_path: Path) -> None:
    empty = tmp_path / "services.toml"  # a resolver that knows no service: asked, it says so
    empty.write_text("")
    config = tmp_path / "node.toml"
    config.write_text(f'[resolver]\nkind = "static_file"\npath = "{empty}"\n')
    dead = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there: the link fails
    # --http on a free port: serve's default (4080) may be taken on this machine, and the warning that says so
    # comes before the node knows its name
    with serve(tmp_path, "--log-format", "json", "--config", str(config), "--http", "127.0.0.1:0") as (
        address, stderr
    ):
        ok(address, "create", "queue", "qa")
        ok(address, "create", "service", "//t/A", "--queue", "qa", "--contract", "DEFAULT")
        # a conversation with a message, on this node
        handle = ok(address, "send", "--from", "//t/A", "--to", "//t/A", "--body", "hello").strip()
        [message] = [json.loads(line) for line in ok(address, "receive", "qa", "--json").splitlines()]
        assert message["body"] == "hello", message
        ok(address, "end", handle, "--cleanup")  # an administrator's cleanup is logged, naming the conversation
        # a message to a service nobody knows (the resolver is asked) and one to a node that is not there
        ok(address, "send", "--from", "//t/A", "--to", "//t/Nowhere", "--body", "waits")
        ok(address, "create", "route", "to-dead", dead, "--service", "//t/Far")
        ok(address, "send", "--from", "//t/A", "--to", "//t/Far", "--body", "waits too")

        def has(**fields: str) -> bool:
            return any(all(line.get(k) == v for k, v in fields.items()) for line in json_lines(stderr))

        wait_for(lambda: has(peer=dead), 15, f"a line about the link to {dead}")
        wait_for(lambda: has(service="//t/Nowhere", resolver="static_file"), 15, "the resolver's answer")
    assert UUID.match(handle), handle
    lines = json_lines(stderr)  # every line, the stop's too
    nodes = {line.get("node") for line in lines}
    assert len(nodes) == 1 and UUID.match(str(*nodes)), [line for line in lines if not line.get("node")]  # every line names the one node
    for line in lines:
        assert RFC3339_MS_UTC.match(line["time"]), line
        assert line["level"] in ("debug", "info", "warning", "error"), line
        assert line["logger"].startswith("aiobroker"), line
        assert isinstance(line["message"], str) and line["message"], line
        assert set(line) <= {"time", "level", "logger", "message", "exception", *FIELDS}, line
    node = lines[0]["node"]
    assert lines[0]["message"].startswith(f"node {node} listening on {address} "), lines[0]  # the words of today
    link = next(line for line in lines if line.get("peer") == dead)
    assert link["level"] == "warning" and link["message"].startswith(f"link to {dead} failed: "), link
    # the route and the binding are asked at once: a line for each answer, in either order
    asked = [line["message"] for line in lines if line.get("service") == "//t/Nowhere"]
    assert any(m.startswith("static_file: no route for service '//t/Nowhere'") for m in asked), asked
    created = next(line for line in lines if line.get("queue") == "qa")
    assert created["message"] == "created queue 'qa'", created
    cleaned = next(line for line in lines if line.get("conversation") == handle)
    assert cleaned["message"].startswith(f"ended conversation {handle} (cleanup: nothing sent)"), cleaned


@pytest.mark.slow
def test_config_file_log_format_json_and_text_flag_wins(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nlog_format = "json"\n')
    with serve(tmp_path, "--config", str(config)) as (address, stderr):
        ok(address, "create", "queue", "qj")
    assert any(line.get("queue") == "qj" for line in json_lines(stderr))
    with serve(tmp_path, "--config", str(config), "--log-format", "text") as (address, stderr):
        ok(address, "create", "queue", "qt")
    lines = stderr.read_text().splitlines()
    assert lines and all(TEXT_LINE.match(line) for line in lines), lines
    assert any(line.endswith(" aiobroker.node: created queue 'qt'") for line in lines), lines


@pytest.mark.slow
def test_text_is_the_default_and_the_same_as_log_format_text(tmp_path: Path) -> None:
    shapes = []
    for flags in ((), ("--log-format", "text")):
        with serve(tmp_path, *flags) as (address, stderr):
            ok(address, "create", "queue", "q")
        lines = stderr.read_text().splitlines()
        assert lines and all(TEXT_LINE.match(line) for line in lines), lines
        assert any(line.endswith(" INFO    aiobroker.node: created queue 'q'") for line in lines), lines
        shapes.append([re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+", "#", line) for line in lines])  # numbers, times
    assert shapes[0] == shapes[1]  # the same lines, word for word


@pytest.mark.slow
def test_a_bad_log_format_is_refused_naming_the_choices(tmp_path: Path) -> None:
    r = aiobroker("serve", "--log-format", "xml", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 2, r
    assert "--log-format" in r.stderr and "'xml'" in r.stderr and "'text', 'json'" in r.stderr, r.stderr
    config = tmp_path / "node.toml"
    config.write_text('[node]\nlog_format = "yaml"\n')
    r = aiobroker("serve", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 1, r
    assert r.stderr.count("\n") == 1 and "[node] log_format" in r.stderr, r.stderr
    assert '"text" or "json"' in r.stderr and "yaml" in r.stderr, r.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_serve_help_shows_the_log_format() -> None:
    r = aiobroker("serve", "--help")
    assert r.returncode == 0
    assert "--log-format {text,json}" in r.stdout, r.stdout


# --- the formatter ----------------------------------------------------------------------------------------------


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("the cause")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("aiobroker.node", logging.WARNING, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_the_formatter_writes_what_json_cannot_hold_as_its_repr() -> None:
    weird = object()
    out = JsonFormatter().format(record(
        "service %r waits", "//t/S", service="//t/S", peer=weird, queue=frozenset({"x"}),
        resolver=math.nan, conversation={(1, 2): "tuple key"}, node=Unprintable(), something_else="not a field",
    ))  # fmt: skip
    assert "\n" not in out
    line = json.loads(out)
    assert line["message"] == "service '//t/S' waits" and line["level"] == "warning"
    assert line["service"] == "//t/S"
    assert line["peer"] == repr(weird)
    assert line["queue"] == "frozenset({'x'})"
    assert line["resolver"] == "nan"
    assert line["conversation"] == "{(1, 2): 'tuple key'}"
    assert line["node"] == "<Unprintable that cannot be shown>"
    assert "something_else" not in line  # only the known fields
    assert RFC3339_MS_UTC.match(line["time"]), line


def test_the_formatter_keeps_the_exception_and_survives_arguments_that_do_not_fit() -> None:
    line = json.loads(JsonFormatter().format(record("resolver %s failed", "x", exc=True)))
    assert line["message"] == "resolver x failed"
    assert line["exception"].startswith("Traceback") and "ValueError: the cause" in line["exception"]
    line = json.loads(JsonFormatter().format(record("%d of %d", "not a number")))
    assert line["message"] == "'%d of %d' ('not a number',)"


def test_the_readme_example_line_is_what_the_formatter_writes() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    [example] = [text for heading, text in fenced_blocks(readme, "json") if heading == "Running a node"]
    line = json.loads(example)
    assert list(line)[:4] == ["time", "level", "logger", "message"] and RFC3339_MS_UTC.match(line["time"]), line
    assert set(line) <= {"time", "level", "logger", "message", "exception", *FIELDS}, line
    fields = {k: v for k, v in line.items() if k in FIELDS}
    again = record(line["message"], **fields)
    again.levelno, again.levelname, again.name = logging.WARNING, line["level"].upper(), line["logger"]
    written = json.loads(JsonFormatter().format(again))
    assert {k: v for k, v in written.items() if k != "time"} == {k: v for k, v in line.items() if k != "time"}
