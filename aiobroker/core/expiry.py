"""The expiry shared by objects that come and go with a resolver's answers (routes, bindings)."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgument


def expiry_from_def(d: dict[str, Any], now: float | None, what: str) -> float | None:
    """``expires_at`` (wall-clock seconds, or None: never) from a definition's ``expires_at`` or ``lifetime`` (which
    counts from ``now``); ``what`` names the object in errors, e.g. ``route 'r'``."""
    expires_at = d.get("expires_at")
    lifetime = d.get("lifetime")
    if lifetime is not None:
        if not isinstance(lifetime, (int, float)) or isinstance(lifetime, bool) or lifetime <= 0:
            raise InvalidArgument(f"{what}: lifetime must be a number of seconds > 0")
        if now is None:
            raise InvalidArgument(f"{what}: a lifetime needs the current time")
        expires_at = now + lifetime
    if expires_at is not None and (not isinstance(expires_at, (int, float)) or isinstance(expires_at, bool)):
        raise InvalidArgument(f"{what}: expires_at must be a time in seconds")
    return float(expires_at) if expires_at is not None else None
