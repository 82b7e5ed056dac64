"""Running a script of ``benchmarks/`` as a user runs it, for the tests that keep each one from rotting between the
runs that measure with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``benchmarks/<name> args...`` with this interpreter; its output captured, its exit code not checked."""
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
