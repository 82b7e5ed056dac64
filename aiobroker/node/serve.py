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
from .standby import WaitStopped

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


#: ``aiobroker serve``'s exit status when the node stepped down (another node took its store over)
EXIT_STEPPED_DOWN = 3


async def serve(config: NodeConfig, names: NodeName | None = None) -> int | None:
    node = Node(config)
    if names is not None:
        names.instance = lambda: node.broker_instance
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        stopping = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                async for signum in signals:
                    log.info("received %s; stopping", signal.Signals(signum).name)
                    stopping.set()
                    node.ownership.stop_waiting()  # a standby (or store_wait) still waiting for the store gives up
                    return

            tg.start_soon(on_signal)
            try:
                await node.start()
            except WaitStopped as exc:
                log.info("%s", exc.message)
                tg.cancel_scope.cancel()
                return None
            frozen, thresholds = apply_node_policy()  # once everything start-up makes exists (collector.py says why)
            log.info("garbage collector: %d start-up object(s) frozen; collection thresholds %s", frozen, thresholds)
            status = await run_until_stopped(node, stopping)
            tg.cancel_scope.cancel()
        return status


async def run_until_stopped(node: Node, stopping: anyio.Event) -> int | None:
    """Serve until ``stopping`` is set (a signal: then None) or the node steps down (then
    :data:`EXIT_STEPPED_DOWN`); either way the node is stopped when this returns (without writing anything more,
    if it stepped down)."""
    stepped_down = False
    try:
        async with anyio.create_task_group() as tg:

            async def on_step_down() -> None:
                nonlocal stepped_down
                step_down = node.ownership.step_down
                assert step_down is not None  # made by start()
                await step_down.event.wait()  # the node logged why
                stepped_down = True
                tg.cancel_scope.cancel()

            tg.start_soon(on_step_down)
            await stopping.wait()
            tg.cancel_scope.cancel()
    finally:
        await node.stop()
    return EXIT_STEPPED_DOWN if stepped_down else None


def run(config: NodeConfig) -> int | None:
    """Run a node on uvloop (when installed) until a signal stops it (None) or it steps down (its exit status)."""
    names = setup_logging(config.log_level, config.log_format)
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we test
        options = {}
    return anyio.run(serve, config, names, backend="asyncio", backend_options=options)
