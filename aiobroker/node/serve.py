"""Run a node in the foreground until SIGINT or SIGTERM: what ``aiobroker serve`` does.

Logs go to stderr, one line each: in words, or with ``log_format = "json"`` one JSON object a line
(:mod:`~aiobroker.node.logs`) that names the node on every line once the node has read its store. A clean stop
(either signal) stops accepting, closes connections, writes what is pending and closes the store, so the next
start on the same data directory finds everything.
"""

from __future__ import annotations

import logging
import signal
import sys

import anyio

from ..config import NodeConfig
from .collector import apply_node_policy
from .logs import JsonFormatter, NodeName
from .server import Node

log = logging.getLogger("aiobroker.node")

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str, log_format: str = "text") -> NodeName:
    """Log to stderr at ``level`` in ``log_format`` ("text" or "json"); the returned filter names the node on
    each line once it is told how (:func:`serve` does)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    names = NodeName()
    handler.addFilter(names)
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    return names


async def serve(config: NodeConfig, names: NodeName | None = None) -> None:
    node = Node(config)
    if names is not None:
        names.instance = lambda: node.broker_instance
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        await node.start()
        frozen, thresholds = apply_node_policy()  # once everything start-up makes exists (collector.py says why)
        log.info("garbage collector: %d start-up object(s) frozen; collection thresholds %s", frozen, thresholds)
        try:
            async for signum in signals:
                log.info("received %s; stopping", signal.Signals(signum).name)
                break
        finally:
            await node.stop()


def run(config: NodeConfig) -> None:
    """Run a node on uvloop (when installed) until a signal stops it."""
    names = setup_logging(config.log_level, config.log_format)
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we test
        options = {}
    anyio.run(serve, config, names, backend="asyncio", backend_options=options)
