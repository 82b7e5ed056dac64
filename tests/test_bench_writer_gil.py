"""benchmarks/bench_writer_gil.py run as a user runs it, with tiny numbers, so the script cannot rot between the
runs that measure with it: both tables, every row with its figures."""

from __future__ import annotations

import re
from functools import partial

import bench_scripts

#: the script run as a user runs it (bench_scripts.run_script), 120 s at most
run_script = partial(bench_scripts.run_script, "bench_writer_gil.py", timeout=120)


def test_help_names_the_options() -> None:
    done = run_script("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--records", "--passes", "--batch", "--rounds", "--bodies"):
        assert option in done.stdout


def test_a_tiny_run_prints_writes_and_reads_beside_an_idle_and_a_busy_thread() -> None:
    done = run_script("--records", "200", "--passes", "2", "--batch", "100", "--rounds", "1", "--bodies", "600")
    assert done.returncode == 0, done.stderr + done.stdout
    for loop in ("idle", "busy"):
        for writer in ("one-row", "store"):
            assert re.search(rf"^{loop} +{writer} +\d+\.\d\d +\d+\.\d\d$", done.stdout, re.M), (loop, writer)
    for writer in ("idle", "writing"):
        for reader in ("row a body", "store"):
            assert re.search(rf"^{writer} +{reader} +\d+\.\d\d +\d+\.\d\d$", done.stdout, re.M), (writer, reader)
    assert re.search(r"^results: .*writer-gil-.*\.json$", done.stdout, re.M)
