"""``aiobroker bench --plot FILE.png``: the run drawn, throughput each second beside the latency distribution.

matplotlib is the optional ``plot`` extra: imported here only, and only when ``--plot`` is given (the command
checks it is installed before the run starts).
"""

from __future__ import annotations

from typing import Any

from .bench_run import Tally


def plot(path: str, summary: dict[str, Any], tally: Tally) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no screen needed: the file is the output
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    per_second = summary["per_second"]
    left.plot(range(len(per_second)), per_second, drawstyle="steps-post")
    left.set_xlabel("second of the run")
    left.set_ylabel("messages received")
    left.set_title(f"throughput: {summary['msg_per_s']:,.0f} msg/s overall")
    left.set_ylim(bottom=0)
    latencies_ms = [v / 1e6 for v in tally.latencies_ns]
    if latencies_ms:
        right.hist(latencies_ms, bins=100, log=True)
    lat = summary["latency_ms"]
    for name, style in (("p50", "--"), ("p99", ":")):
        if lat[name] is not None:
            right.axvline(lat[name], linestyle=style, color="black", label=f"{name} {lat[name]:.3f} ms")
    right.set_xlabel("latency, ms (send to receipt)")
    right.set_ylabel("messages (log scale)")
    right.set_title("latency distribution")
    right.legend()
    fig.suptitle(
        f"aiobroker bench: {summary['received']:,} messages of {summary['size']} B, {summary['producers']} producer(s),"
        f" {summary['consumers']} consumer(s)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
