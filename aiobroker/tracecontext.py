"""W3C trace context on a message: what a ``traceparent`` and a ``tracestate`` may be, and the one string that
carries both in the stored row, in the envelope between nodes and in a ``send`` request.

Pure (no OpenTelemetry here: ``aiobroker/tracing.py`` makes spans, when the ``otel`` extra is installed), so the
core, the client and the CLI all check input with the same words.

The carried form, :data:`~aiobroker.core.records.ROW_TRACE`, is the ``traceparent`` (always 55 characters:
version ``00``), then, only when there is a ``tracestate``, one space and the ``tracestate``::

    00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 rojo=00f067aa0ba902b7,congo=t61rcWkgMzE

One string, not a pair, so a row stays a flat tuple that SQLite binds as it is, and a message without trace
context costs one ``None``.
"""

from __future__ import annotations

import re
from typing import Any, Final

from .errors import InvalidArgument

#: the W3C Trace Context level 1 ``traceparent`` of version 00: version, trace id, parent (span) id, flags
TRACEPARENT_FORMAT: Final = "00-<32 lowercase hex: trace id>-<16 lowercase hex: span id>-<2 lowercase hex: flags>"
TRACEPARENT_LENGTH: Final = 55
#: The longest ``tracestate`` carried. W3C asks for 512 characters where it can; 256 keeps a message's envelope
#: within its fixed 4 KiB allowance beside the largest dialog-security key header (``ENVELOPE_OVERHEAD``), so no
#: frame limit moves. A longer one is refused, not cut silently: what the receiver gets is what was sent.
MAX_TRACESTATE: Final = 256
#: the longest carried form: traceparent, a space, tracestate
MAX_TRACE: Final = TRACEPARENT_LENGTH + 1 + MAX_TRACESTATE

_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}\Z")
#: printable ASCII without a leading or trailing space (W3C's list-members, commas and optional white space)
_TRACESTATE = re.compile(r"[!-~](?:[ -~]*[!-~])?\Z")


def check_traceparent(value: Any) -> str:
    """``value`` if it is a valid version-00 ``traceparent``, else :class:`InvalidArgument` saying the format."""
    if not isinstance(value, str) or _TRACEPARENT.match(value) is None:
        shown = repr(value) if not isinstance(value, str) or len(value) <= 80 else repr(value[:80] + "...")
        raise InvalidArgument(
            f"traceparent {shown} is not a W3C traceparent: expected {TRACEPARENT_FORMAT}"
            " (trace id and span id not all zeros), e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        )
    return value


def check_tracestate(value: Any) -> str | None:
    """``value`` (None or empty: no tracestate) if it is a ``tracestate`` this broker carries, else
    :class:`InvalidArgument`."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"tracestate must be a string, got {type(value).__name__}")
    if len(value) > MAX_TRACESTATE:
        raise InvalidArgument(
            f"tracestate of {len(value)} characters is over the {MAX_TRACESTATE} this broker carries;"
            " drop list-members from its end (W3C: the least recently updated ones)"
        )
    if _TRACESTATE.match(value) is None:
        raise InvalidArgument(
            "tracestate must be printable ASCII, comma-separated key=value list-members (W3C Trace Context),"
            " without leading or trailing spaces"
        )
    return value


def make_trace(traceparent: Any, tracestate: Any = None) -> str | None:
    """The carried form of a message's trace context (None when ``traceparent`` is None), checked."""
    if traceparent is None:
        if tracestate is not None and tracestate != "":
            raise InvalidArgument("tracestate needs a traceparent: W3C trace context has no tracestate alone")
        return None
    parent = check_traceparent(traceparent)
    state = check_tracestate(tracestate)
    return parent if state is None else f"{parent} {state}"


def check_trace(trace: Any) -> str:
    """A carried form as received (a ``send`` request's third element, an envelope's field): ``trace`` if valid,
    else :class:`InvalidArgument`."""
    if not isinstance(trace, str):
        raise InvalidArgument(
            f"a message's trace context is a string (traceparent, then a space and tracestate), got"
            f" {type(trace).__name__}"
        )
    check_traceparent(trace[:TRACEPARENT_LENGTH])
    if len(trace) > TRACEPARENT_LENGTH:
        if trace[TRACEPARENT_LENGTH] != " ":
            check_traceparent(trace)  # says what a traceparent looks like
        if check_tracestate(trace[TRACEPARENT_LENGTH + 1 :]) is None:
            raise InvalidArgument("a message's trace context has a space after its traceparent but no tracestate")
    return trace


def valid_trace(trace: Any) -> bool:
    """Whether ``trace`` is a valid carried form (for checking what a peer sent, where no one is told why)."""
    try:
        check_trace(trace)
    except InvalidArgument:
        return False
    return True


def split_trace(trace: str | None) -> tuple[str | None, str | None]:
    """``(traceparent, tracestate)`` of a carried form; ``(None, None)`` for None."""
    if trace is None:
        return None, None
    return trace[:TRACEPARENT_LENGTH], trace[TRACEPARENT_LENGTH + 1 :] or None
