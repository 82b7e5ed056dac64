"""Options the built-in resolvers share, checked the same way for each: ``max_open_questions``, the questions a
resolver keeps open at once (``http`` and ``dns_srv``; each has its own default and says why)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiobroker.resolver import ConfigError

#: the most ``max_open_questions`` may be
MAX_OPEN_QUESTIONS_LIMIT = 1000


def max_open_questions(options: Mapping[str, Any], default: int) -> int:
    """The ``[resolver]`` table's ``max_open_questions``: a whole number from 1 to MAX_OPEN_QUESTIONS_LIMIT."""
    value = options.get("max_open_questions", default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OPEN_QUESTIONS_LIMIT:
        raise ConfigError(f"[resolver] max_open_questions must be a whole number from 1 to {MAX_OPEN_QUESTIONS_LIMIT},"
                          f" got {value!r}")
    return value
