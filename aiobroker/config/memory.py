"""The default memory budget (``[limits] max_memory``): a quarter of what the machine, or the node's cgroup, has.

Why a quarter: the budget counts what the node holds for messages (bodies and a fixed cost per message,
``core/budget.py``), not the whole process. Beside it the node needs the interpreter and its modules (about 40 MiB),
the buffers of its connections (a frame each being read, up to ``max_frame_size``; replies being written), the
store's batch in flight and its page cache, and the garbage collector's slack; and a node rarely has the machine to
itself. A quarter leaves that room on a small container and does not waste a large machine's memory on a cap that
a backlog of 128-byte messages (about 530 bytes a message held) would reach only past millions of messages.
The floor keeps a tiny container's budget useful; the cgroup's limit wins over the machine's memory, since the
kernel kills the node at the cgroup's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

#: the fraction of the memory available that the default budget takes
DEFAULT_FRACTION: Final = 0.25
#: the default budget is never below this
DEFAULT_FLOOR: Final = 64 * 1024 * 1024
#: the smallest budget one may set: below it a node holds hardly a batch
MIN_MAX_MEMORY: Final = 1024 * 1024


def available_memory(cgroup: Path = Path("/sys/fs/cgroup/memory.max")) -> int | None:
    """The memory this process may use: its cgroup's limit (cgroup v2) when there is one, else the machine's
    physical memory; None if neither can be read."""
    machine: int | None = None
    try:
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    try:
        text = cgroup.read_text().strip()
    except OSError:
        return machine
    if text.isdigit():
        limit = int(text)
        return min(limit, machine) if machine is not None else limit
    return machine  # "max": no limit


def default_max_memory(available: int | None = None) -> int:
    """A quarter of the memory available (:func:`available_memory`), at least :data:`DEFAULT_FLOOR`."""
    if available is None:
        available = available_memory()
    if available is None:
        return DEFAULT_FLOOR * 4
    return max(DEFAULT_FLOOR, int(available * DEFAULT_FRACTION))
