"""Names of objects: what every catalog object's name must be."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgument

MAX_NAME_BYTES = 256


def check_name(kind: str, name: Any) -> str:
    """A name is a non-empty string of at most 256 UTF-8 bytes with no control characters."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{kind} name must be a non-empty string, got {name!r}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidArgument(f"{kind} name {name[:40]!r}... is over {MAX_NAME_BYTES} UTF-8 bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidArgument(f"{kind} name {name!r} contains a control character")
    return name
