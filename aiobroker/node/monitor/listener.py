"""The HTTP monitoring listener: the app served by Hypercorn on the node's own event loop, in a task group of the
node's, plus a watch on the event loop's lag.

The socket is bound here, before anything else of the node starts, so that a taken address fails the start with a
clear error before the store is touched, and the probes answer (``/readyz``: 503, opening the store) while a large
store is read back. It is handed to Hypercorn as ``fd://N``; Hypercorn then owns and closes it. Hypercorn is given
a shutdown trigger, so it installs no signal handlers: the node's own (``aiobroker serve``) stay in charge. Stopping
sets the trigger and waits at most :data:`GRACE` seconds for requests being answered.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import anyio
from anyio.abc import TaskGroup
from hypercorn.asyncio import serve
from hypercorn.config import Config

from ...errors import ConfigError
from .app import build_app
from .actions import Operated

log = logging.getLogger("aiobroker.http")

#: seconds requests being answered get to finish when the node stops
GRACE = 1.0
#: how often the event loop's lag is measured (a timer asked for this many seconds ahead, and how late it ran)
LAG_INTERVAL = 0.5


class MonitorListener:
    def __init__(self, node: Operated) -> None:
        self.node = node
        cfg = node.config
        self.host = cfg.http_host
        self.port = cfg.http_port or 0
        self.tls = cfg.tls_cert is not None and cfg.tls_key is not None
        self._fd: int | None = None
        self._shutdown = anyio.Event()
        self._served = anyio.Event()
        self._tg: TaskGroup | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (``https`` when the node has ``[tls]``), the port as bound."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def start(self) -> bool:
        """Bind and start serving; True if it serves. An address that cannot be bound is a ConfigError naming it,
        or, when the config says the listener is optional (``aiobroker serve``'s default), a warning and False."""
        cfg = self.node.config
        try:
            self._fd = self._bind()
        except OSError as exc:
            why = exc.strerror or str(exc)
            if cfg.http_optional:
                log.warning(
                    "no HTTP monitoring: cannot listen on %s (%s), the default; another node on this machine may"
                    " have it: give this one its own with --http HOST:PORT ([http] listen), or --http off", cfg.http_listen,
                    why,
                )
                return False
            raise ConfigError(
                f"cannot listen for HTTP on {cfg.http_listen}: {why}; is another node running there? choose another"
                " address with --http HOST:PORT ([http] listen), or turn it off with --http off"
            ) from exc
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._serve, name=f"http {self.url}")
        self._tg.start_soon(self._watch_loop, name="event loop lag")
        return True

    async def stop(self) -> None:
        if self._tg is None:
            return
        tg, self._tg = self._tg, None
        self._shutdown.set()  # Hypercorn closes its socket and lets requests being answered finish
        with anyio.move_on_after(GRACE + 1.0, shield=True):
            await self._served.wait()
        tg.cancel_scope.cancel()  # the lag watch, and a Hypercorn past its grace
        await tg.__aexit__(None, None, None)
        if self._fd is not None:  # never handed over (stopped before it served)
            os.close(self._fd)
            self._fd = None

    def _bind(self) -> int:
        """A listening socket on the address (OSError if it cannot be had), detached: its file descriptor."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        sock.setblocking(False)
        return sock.detach()

    def _config(self) -> Config:
        cfg = self.node.config
        config = Config()
        config.bind = [f"fd://{self._fd}"]
        config.accesslog = None
        quiet = logging.getLogger("aiobroker.http.server")  # Hypercorn's "Running on ... (CTRL + C to quit)"
        quiet.setLevel(logging.WARNING)
        config.errorlog = quiet
        config.graceful_timeout = GRACE
        config.include_server_header = False
        if self.tls:
            config.certfile = str(cfg.tls_cert)
            config.keyfile = str(cfg.tls_key)
        return config

    async def _serve(self) -> None:
        config = self._config()
        self._fd = None  # Hypercorn owns the socket from here
        try:
            await serve(build_app(self.node), config, shutdown_trigger=self._shutdown.wait)  # type: ignore[arg-type]
        finally:
            self._served.set()

    async def _watch_loop(self) -> None:
        counters = self.node.counters
        while True:
            started = time.monotonic()
            await anyio.sleep(LAG_INTERVAL)
            lag = max(0.0, time.monotonic() - started - LAG_INTERVAL)
            counters.loop_lag_seconds = lag
            counters.loop_lag_max_seconds = max(counters.loop_lag_max_seconds, lag)
