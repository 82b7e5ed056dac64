"""Random (version 4) UUIDs as strings, for conversation handles, conversation ids and group ids.

``str(uuid.uuid4())`` costs about 2 us: a ``getrandom`` system call for 16 bytes, a ``UUID`` object, and its
formatting. A resolution storm makes 300,000 of them on the sending node and 100,000 on the receiving one, where
they were 30% of the receiving node's time. :func:`new_id` makes the same ids from random bytes read 16 KiB at a
time (the same source, ``os.urandom``), and spells a pool of them at once, in C: each of an id's 32 hex digits is
copied into its place in a template of dashes by one strided slice assignment for the whole pool (32 in all), and
one ``split`` cuts the ids apart. About 0.12 us an id; spelling each with five slices and an f-string was 0.42 us.
A child process made by ``fork`` starts a pool of its own, so it never repeats its parent's ids.
"""

from __future__ import annotations

import os

#: ids made from one read of random bytes
POOL = 1024

#: one line per id, the dashes in place
_TEMPLATE = b"00000000-0000-0000-0000-000000000000\n" * POOL
_LINE = 37
#: where each of an id's 32 hex digits goes in its line
_PLACES = [place for place in range(36) if place not in (8, 13, 18, 23)]
#: byte 6's high nibble says version 4; byte 8's two high bits say the RFC 4122 variant
_VERSION_4 = bytes(b & 0x0F | 0x40 for b in range(256))
_VARIANT = bytes(b & 0x3F | 0x80 for b in range(256))

_pool: list[str] = []


def _spell_pool() -> list[str]:
    raw = bytearray(os.urandom(16 * POOL))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT)
    digits = raw.hex().encode()
    lines = bytearray(_TEMPLATE)
    for digit, place in enumerate(_PLACES):
        lines[place::_LINE] = digits[digit::32]
    return lines.decode().split()


def new_id() -> str:
    """A new random UUID (version 4), as ``str(uuid.uuid4())`` spells it."""
    return _pool.pop() if _pool else _refill()  # a list popped: one Python frame an id


def _refill() -> str:
    _pool.extend(_spell_pool())
    return _pool.pop()


def _after_fork() -> None:
    _pool.clear()  # the parent's ids: the child spells its own


os.register_at_fork(after_in_child=_after_fork)
