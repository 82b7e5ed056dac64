"""The words of :mod:`aiobroker.config`'s error messages: a wrong value (:class:`Invalid`), what it is, what is allowed.

Part of :mod:`aiobroker.config` (its docstring says how the parts fit); import from there. Every check raises
:class:`Invalid` with the reason only; whoever knows where the value came from (a file and key, an override, a
:class:`~aiobroker.config.NodeConfig` field) puts that in front and raises :class:`~aiobroker.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from typing import Any


class Invalid(Exception):
    """A value is wrong. The caller prefixes where the value came from and raises ConfigError."""

    def __init__(self, reason: str, sub: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.sub = sub  # a position inside the value, e.g. "[2]" for an item of objects


def describe(value: Any) -> str:
    """``a boolean (true)``, ``a string ('x')``: the kind of a wrong value, in TOML's words, and the value."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    kinds: tuple[tuple[type | tuple[type, ...], str], ...] = (
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (Mapping, "a table"),
        ((list, tuple), "an array"),
        (datetime, "a date-time"),
        (date, "a date"),
        (time, "a time"),
    )
    kind = next((name for cls, name in kinds if isinstance(value, cls)), f"a {type(value).__name__}")
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} ({text})"


def describe_or_empty(value: Any) -> str:
    """Like :func:`describe`, but ``an empty string`` for ``""`` (where a non-empty string was asked for)."""
    return "an empty string" if value == "" else describe(value)


def quoted(words: Iterable[str]) -> str:
    """``"a", "b" or "c"``."""
    items = [f'"{w}"' for w in words]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def did_you_mean(word: str, candidates: Iterable[str], template: str = "{}") -> str:
    """``"; did you mean X?"`` for the candidate closest to ``word`` (case aside), or ``""`` if none is close."""
    by_lower = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {template.format(by_lower[match[0]])}?" if match else ""
