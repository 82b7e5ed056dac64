"""The frame decoder (``aiobroker/wire/codec.py`` ``FrameDecoder``) on the shapes the node reads, against the
decoder of another revision in the same run.

Three streams, each fed in reads of the size the node takes from a socket (``READ_SIZE``, 256 KiB, or what a
loaded socket gives: 64 KiB): ``4k-batch`` (send frames of 1,000 messages of 4 KiB, a frame spanning many reads),
``128-batch`` (the same with 128 B bodies), ``small`` (one request a frame, ~100 B, thousands in a read). Each
runs in a fresh interpreter per tree (``--ref`` exported by ``git archive``), rounds interleaved, best of each
round, median of the rounds; µs a message (a request for ``small``).

    python benchmarks/bench_decoder.py                 # this tree against HEAD~1
    python benchmarks/bench_decoder.py --ref 9b8e632 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import aiobroker
from aiobroker.wire.codec import FrameDecoder, HEADER, packb
assert aiobroker.__file__.startswith(sys.argv[1]), aiobroker.__file__

def frames(size, count, per_frame):
    body = b"x" * size
    out = []
    for f in range(count):
        msgs = [[f * per_frame + i, "q:bench", "h-1", i, "DEFAULT", body, 1.0, 0] for i in range(per_frame)]
        payload = packb([3, f, "send", {"handle": "h-1", "messages": msgs}])
        out.append(HEADER.pack(len(payload)) + payload)
    return b"".join(out)

def small(count):
    out = []
    for i in range(count):
        payload = packb([3, i, "receive", {"queue": "q:bench", "max_messages": 100, "timeout": 1.0}])
        out.append(HEADER.pack(len(payload)) + payload)
    return b"".join(out)

shapes = {
    "4k-batch": (frames(4096, 8, 1000), 8000, 64 * 1024),
    "128-batch": (frames(128, 40, 1000), 40000, 256 * 1024),
    "small": (small(100_000), 100_000, 256 * 1024),
}
result = {}
for name, (stream, units, read) in shapes.items():
    reads = [stream[i:i + read] for i in range(0, len(stream), read)]
    best = float("inf")
    for _ in range(5):
        d = FrameDecoder(max_frame_size=64 << 20)
        t = time.perf_counter()
        for r in reads:
            d.feed(r)
        best = min(best, time.perf_counter() - t)
    result[name] = best / units * 1e6
print(json.dumps(result))
"""


def export(ref: str, into: Path) -> str:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "aiobroker"], check=True, capture_output=True,
                             timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, capture_output=True, timeout=60)
    return str(into)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="HEAD~1", help="the revision to compare against (default HEAD~1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-decoder-") as tmp:
        trees = {args.ref: export(args.ref, Path(tmp)), "this tree": str(REPO)}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for r in range(args.rounds):
            for name, tree in trees.items():
                out = subprocess.run([sys.executable, "-c", WORKER, tree], check=True, capture_output=True, text=True,
                                     timeout=600).stdout
                runs[name].append(json.loads(out))
                print(f"  round {r + 1}/{args.rounds} {name}: {runs[name][-1]}", flush=True)
    shapes = list(runs[args.ref][0])
    print(f"\nµs a message (a request for 'small'), median of {args.rounds} rounds")
    print(f"{'shape':<10} {args.ref:>12} {'this tree':>12} {'ratio':>7}")
    for shape in shapes:
        before = statistics.median(run[shape] for run in runs[args.ref])
        after = statistics.median(run[shape] for run in runs["this tree"])
        print(f"{shape:<10} {before:>12.3f} {after:>12.3f} {after / before:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
