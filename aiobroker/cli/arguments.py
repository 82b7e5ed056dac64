"""Argparse building blocks shared by the commands: value types, the help formatter, and adding one command."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from ..core.catalog import SENT_BY
from .common import EXIT_STATUS_CLIENT

# ============================================================================================== argument types


def on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def bound(text: str) -> int | str:
    """A queue's bound: a whole number >= 1, or "none" (no bound; the node takes the word)."""
    if text.strip().lower() == "none":
        return "none"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f'expected a whole number >= 1, or "none" for no bound; got {text!r}') from None


def message_rule(text: str) -> tuple[str, str]:
    name, sep, sent_by = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"expected TYPE=SENT_BY (SENT_BY: {'|'.join(SENT_BY)}), got {text!r}"
        )
    sent_by = sent_by.strip().lower()
    if sent_by not in SENT_BY:
        raise argparse.ArgumentTypeError(f"SENT_BY in {text!r} must be one of {', '.join(SENT_BY)}")
    return name, sent_by


# ============================================================================================== commands


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def add_command(
    subparsers: Any,
    name: str,
    summary: str,
    examples: Sequence[str] = (),
    parents: Sequence[argparse.ArgumentParser] = (),
    details: str = "",
    exit_status: str = EXIT_STATUS_CLIENT,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """Add one (sub)command: ``summary`` is its line in the parent's help and, capitalised, its description;
    ``exit_status`` ends its help (the statuses it exits with)."""
    description = summary[0].upper() + summary[1:] + "."
    if details:
        description += "\n\n" + details
    epilog = exit_status
    if examples:
        epilog = (
            "example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {e}" for e in examples)
            + "\n\n" + exit_status
        )
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=Formatter,
        parents=list(parents),
        **kwargs,
    )
    return parser
