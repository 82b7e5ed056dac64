"""Output: stdout and stderr lines, JSON, tables, and the words for states, times, sizes and messages."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..client import Message
from ..core.catalog import DIALOG_TIMER, END_DIALOG, ERROR
from ..durations import duration
from .common import PROG

#: Conversation states: the two-letter code and its name in words.
STATE_NAMES = {
    "SO": "started outbound",
    "CO": "conversing",
    "DI": "disconnected inbound",
    "ER": "error",
    "CD": "closed",
}
STATE_MEANINGS = {
    "SO": "begun here, nothing sent yet",
    "CO": "messages may flow both ways",
    "DI": "the far side ended it; this side may still receive, not send, and must end it",
    "ER": "an Error arrived or the lifetime ran out; this side must end it",
    "CD": "this side ended it; kept only until its last message is delivered",
}

#: Short names for the system message types in text output.
SYSTEM_TYPE_NAMES = {END_DIALOG: "EndDialog", ERROR: "Error", DIALOG_TIMER: "DialogTimer"}


def echo(*parts: Any) -> None:
    """A result line, to stdout."""
    print(*parts)


def note(text: str) -> None:
    """A note for people, to stderr."""
    print(f"{PROG}: {text}", file=sys.stderr)


#: Keys whose values are wall-clock times (seconds since the epoch, as the node keeps and sends them). The CLI's
#: JSON gives each as an RFC 3339 string in UTC (``"2026-12-04T21:03:05.120Z"``, null for never) and keeps the
#: number beside it as ``KEY_unix`` for scripts that compute with it. Durations (``age_seconds``,
#: ``next_retry_in``, ``uptime_seconds``) stay numbers of seconds.
TIME_KEYS = frozenset(
    {
        "enqueued_at", "expires_at", "timer_at", "lease_expires_at", "next_attempt", "not_before", "not_after",
        "next_retry_at", "started_at", "at",
    }
)


def rfc3339(ts: float) -> str:
    """``ts`` (seconds since the epoch) as RFC 3339 in UTC with milliseconds: ``2026-12-04T21:03:05.120Z``."""
    try:
        stamp = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, OSError, ValueError):  # beyond what a datetime holds: say so rather than fail
        return "9999-12-31T23:59:59.999Z" if ts > 0 else "0001-01-01T00:00:00.000Z"
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_times(value: Any) -> Any:
    """``value`` with every :data:`TIME_KEYS` number (or null) as RFC 3339, plus its ``KEY_unix`` number."""
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if key in TIME_KEYS and (item is None or (isinstance(item, int | float) and not isinstance(item, bool))):
                out[key] = None if item is None else rfc3339(float(item))
                out[f"{key}_unix"] = item
            else:
                out[key] = json_times(item)
        return out
    if isinstance(value, list | tuple):
        return [json_times(item) for item in value]
    return value


def to_json(value: Any, *, indent: int | None = 2) -> str:
    """Every ``--json`` output: times as RFC 3339 (:func:`json_times`), bytes as base64."""

    def fallback(obj: Any) -> Any:
        if isinstance(obj, bytes):
            return base64.b64encode(obj).decode("ascii")
        return str(obj)

    return json.dumps(json_times(value), indent=indent, ensure_ascii=False, default=fallback)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def onoff(value: Any) -> str:
    """A queue's switch in words: the node says "on" or "off" (an older node: true or false)."""
    if isinstance(value, str):
        return value
    return "on" if value else "off"


def type_name(message_type: str) -> str:
    return SYSTEM_TYPE_NAMES.get(message_type, message_type)


def state_words(code: str) -> str:
    return f"{code} ({STATE_NAMES.get(code, 'unknown state')})"


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        stamp = datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return str(ts)
    return f"{stamp} ({_relative(ts - time.time())})"


def _relative(delta: float) -> str:
    words = duration(abs(delta))
    return f"in {words}" if delta >= 0 else f"{words} ago"


def size(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def escape_controls(text: str) -> str:
    """One line per message: control characters are shown escaped (\\n, \\t, \\x01); the rest as it is."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable() and ch != " ":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def message_line(m: Message) -> str:
    head = f"{m.conversation_handle} seq={m.sequence_number} type={type_name(m.message_type)}"
    error = m.error
    if error is not None:
        code, description = error
        return f"{head} error {code}: {escape_controls(description)}"
    if not m.body:
        return f"{head} body: (empty)"
    try:
        text = m.body.decode("utf-8")
    except UnicodeDecodeError:
        return f"{head} body (not UTF-8; {len(m.body)} bytes in hex): {m.body.hex()}"
    return f"{head} body: {escape_controls(text)}"


def message_json(m: Message) -> str:
    try:
        body, is_b64 = m.body.decode("utf-8"), False
    except UnicodeDecodeError:
        body, is_b64 = base64.b64encode(m.body).decode("ascii"), True
    obj: dict[str, Any] = {
        "queue": m.queue,
        "handle": m.conversation_handle,
        "conversation_id": m.conversation_id,
        "group_id": m.conversation_group_id,
        "sequence_number": m.sequence_number,
        "message_type": m.message_type,
        "service": m.service_name,
        "far_service": m.far_service_name,
        "contract": m.contract,
        "is_initiator": m.is_initiator,
        "enqueued_at": m.enqueued_at,
        "body": body,
        "body_base64": is_b64,
        "traceparent": m.traceparent,
        "tracestate": m.tracestate,
    }
    error = m.error
    if error is not None:
        obj["error"] = {"code": error[0], "description": error[1]}
    return to_json(obj, indent=None)
