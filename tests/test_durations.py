"""The one duration format (``aiobroker/durations.py``) that status, diagnose, the log and errors all use."""

from __future__ import annotations

import math

import pytest

from aiobroker.durations import duration, until


@pytest.mark.parametrize(("seconds", "words"), [
    (0, "0s"),
    (0.004, "0s"),
    (0.25, "0.25s"),
    (0.5, "0.5s"),
    (0.999, "1s"),
    (1.94, "1.9s"),
    (2.0, "2s"),
    (9.96, "10s"),
    (45.4, "45s"),
    (59.6, "1m00s"),
    (125, "2m05s"),
    (3599.6, "1h00m"),
    (3725, "1h02m"),
    (86_399, "1d00h"),
    (3 * 86_400 + 4 * 3600 + 59, "3d04h"),
    (-1.5, "-1.5s"),
    (math.inf, "forever"),
])
def test_duration_shrinks_its_precision_as_the_duration_grows(seconds: float, words: str) -> None:
    assert duration(seconds) == words


def test_until_says_in_or_now() -> None:
    assert until(1.94) == "in 1.9s"
    assert until(0) == "now" and until(-3) == "now"
