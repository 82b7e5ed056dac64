"""Run a node in the foreground until SIGINT or SIGTERM: what ``aiobroker serve`` does.

Logs go to stderr in words, one line each. A clean stop (either signal) stops accepting, closes connections,
writes what is pending and closes the store, so the next start on the same data directory finds everything.
"""

from __future__ import annotations

import logging
import signal
import sys

import anyio

from ..config import NodeConfig
from .server import Node

log = logging.getLogger("aiobroker.node")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def serve(config: NodeConfig) -> None:
    node = Node(config)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        await node.start()
        try:
            async for signum in signals:
                log.info("received %s; stopping", signal.Signals(signum).name)
                break
        finally:
            await node.stop()


def run(config: NodeConfig) -> None:
    """Run a node on uvloop (when installed) until a signal stops it."""
    setup_logging(config.log_level)
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we test
        options = {}
    anyio.run(serve, config, backend="asyncio", backend_options=options)
