"""Durations in words: one format for ``status``, ``diagnose``, the log and error messages alike.

``0.25s``, ``1.9s``, ``2s``, ``45s``, ``2m05s``, ``1h02m``, ``3d04h``: the precision shrinks as the duration grows,
so a figure is never longer than it is useful, and the same wait reads the same wherever it is shown. Pure, with
no clock: a caller that shows a wait computes ``deadline - now`` when it shows it (never when the wait began, or
"in 3s" sits beside "1.9s" a second later) and passes the difference.
"""

from __future__ import annotations

import math

__all__ = ["duration", "until"]


def duration(seconds: float) -> str:
    """``seconds`` in words: hundredths under 1 s, tenths under 10 s (``.0`` left off), whole seconds under a
    minute, then minutes and seconds, hours and minutes, days and hours. A negative duration gets a ``-``."""
    if math.isnan(seconds):
        return "?"
    if seconds < 0:
        return "-" + duration(-seconds)
    if math.isinf(seconds):
        return "forever"
    if round(seconds, 2) < 1:
        return _trim(f"{seconds:.2f}") + "s"
    if round(seconds, 1) < 10:
        return _trim(f"{seconds:.1f}") + "s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        m, s = divmod(whole, 60)
        return f"{m}m{s:02d}s"
    minutes = round(seconds / 60)
    if minutes < 24 * 60:
        h, m = divmod(minutes, 60)
        return f"{h}h{m:02d}m"
    hours = round(seconds / 3600)
    d, h = divmod(hours, 24)
    return f"{d}d{h:02d}h"


def until(seconds: float) -> str:
    """A wait that ends ``seconds`` from now: ``in 1.9s``, or ``now`` when it is due."""
    return f"in {duration(seconds)}" if seconds > 0 else "now"


def _trim(text: str) -> str:
    """``2.00`` → ``2``, ``0.50`` → ``0.5``: the zeros after the point say nothing."""
    return text.rstrip("0").rstrip(".") if "." in text else text
