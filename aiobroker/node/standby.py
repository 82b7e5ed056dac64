"""Waiting for the store another node holds, as a standby or for ``[node] store_wait``; stepping down.

A standby waits to take over a store another node owns, listening meanwhile.

A node started with ``[node] standby = true`` (``aiobroker serve --standby``) on a store that another node holds
binds its address at once and waits for the store without end. Until it has the store it has nothing to serve:
it cannot even tell who may connect (the identities are in the store), so every connection, a client's or a peer
node's, is answered REFUSED ``standby`` at its HELLO, in words that name the owner, with the owner's address and
the time the wait began in the frame's ``info`` (``owner``, ``since``) for programs: a client or link given several
addresses moves on to the owner (docs/high-availability.md). ``/readyz`` says the same, with status 503.

When the store opens (the owner died, or stopped), the refusing ends and the node restores the state and serves on
the same listening socket: a connection that arrives meanwhile waits in the socket's backlog and is served by the
new owner, never refused by the old standby.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import Listener, TaskGroup

from ..config import NodeConfig
from ..core.records import Snapshot
from ..durations import duration
from ..errors import BrokerError, Standby
from ..store.base import Store, StoreFenced, StoreInUse
from ..transport.connection import FramedConnection
from ..wire.frames import Refused
from .sessions import HANDSHAKE_TIMEOUT
from .writer import StoreWriter

log = logging.getLogger("aiobroker.node")


class Refuser:
    """What a standby says to whoever connects, kept up to date with what the store says of its owner."""

    def __init__(self, store: Store, url: str, max_frame_size: int) -> None:
        self.store = store
        self.url = url
        self.max_frame_size = max_frame_size
        #: when the wait began (Unix time), and the owner's address as the store last named it (None: unknown)
        self.since = time.time()
        self.owner: str | None = None
        self.refused = 0

    def error(self) -> Standby:
        """The refusal, as the error a client raises for it."""
        where = f"from its owner at {self.owner}; connect there" if self.owner else (
            "from the node that owns it (the store does not say where that node listens)"
        )
        return Standby(
            f"this node ({self.url}) is a standby: it waits to take over the store ({self.store.name}) {where}",
            owner=self.owner,
            since=self.since,
        )

    def not_ready(self) -> str:
        """What ``/readyz`` says meanwhile."""
        return f"standby: waiting to take over the store ({self.store.name}) from " + (
            f"its owner at {self.owner}" if self.owner else "the node that owns it"
        )

    async def refuse(self, stream: Any) -> None:
        """Answer one connection's HELLO (whatever it says) with REFUSED ``standby``, then close it."""
        conn = FramedConnection(stream, max_frame_size=self.max_frame_size, peer="?")
        try:
            with anyio.move_on_after(HANDSHAKE_TIMEOUT):
                await conn.receive_one()
                err = self.error()
                info = {"owner": err.owner, "since": err.since}
                self.refused += 1
                await conn.send_last(Refused(code=err.code, message=err.message, info=info))
        except BrokerError:
            pass  # it sent garbage or went away: there is nothing to tell it
        finally:
            await conn.aclose()


#: seconds between tries to open a store another node holds ([node] store_wait, a standby)
STORE_RETRY = 0.25


class WaitStopped(BrokerError):
    """The node was told to stop (a signal to ``aiobroker serve``) while it waited for its store: it never
    started, and wrote nothing."""

    code = "stopped"


class Ownership:
    """A node's hold on its store: taking it (waiting while another node holds it, which :meth:`stop_waiting` gives
    up), then holding it (announcing the node's address, and stepping down if the store says it is lost)."""

    def __init__(self) -> None:
        self._waiting: anyio.CancelScope | None = None
        self._stop_waiting = False
        #: how the node stops when another node takes its store over (made once it holds it; ``serve`` waits on it)
        self.step_down: StepDown | None = None

    def stop_waiting(self) -> None:
        """Give up waiting for a store another node holds (a standby's wait, ``store_wait``): the node's start
        raises :class:`WaitStopped`. No effect once the store is open."""
        self._stop_waiting = True
        if self._waiting is not None:
            self._waiting.cancel()

    async def take(
        self, store: Store, config: NodeConfig, listener: Listener[Any] | None, url: str,
        not_ready: Callable[[str], None],
    ) -> tuple[Snapshot, tuple[float, float] | None]:
        """Open the store (:func:`take_store`); :class:`WaitStopped`, with the store closed again, if the wait was
        given up."""
        with anyio.CancelScope() as self._waiting:
            if self._stop_waiting:
                self._waiting.cancel()
            return await take_store(store, config, listener, url, not_ready)
        with anyio.CancelScope(shield=True):  # an open that finished as the wait was given up must not keep it
            await anyio.to_thread.run_sync(store.close)
        raise WaitStopped(f"stopped while waiting for the store ({store.name}); it was never opened for writing")

    async def hold(
        self, store: Store, url: str, on_down: Callable[[str], None], tg: TaskGroup, writer: StoreWriter
    ) -> None:
        """Once the node listens: tell the store where clients reach its owner (a standby sends them there), hear
        from it if another node takes it over, and run the store writer in ``tg``, stopped when the node steps
        down."""
        await anyio.to_thread.run_sync(store.announce, url)
        self.step_down = StepDown(on_down, asyncio.get_running_loop())
        store.watch(self.step_down.lost)
        tg.start_soon(self.step_down.run_writer, writer)

    @staticmethod
    def log_take_over(store: Store, took_over: tuple[float, float] | None) -> None:
        if took_over is not None:
            log.info(
                "took over the store (%s) after waiting %s as a standby; loading it and starting to serve took %.2fs",
                store.name, duration(took_over[0]), time.perf_counter() - took_over[1],
            )


async def take_store(
    store: Store, config: NodeConfig, listener: Listener[Any] | None, url: str, not_ready: Callable[[str], None]
) -> tuple[Snapshot, tuple[float, float] | None]:
    """Open ``store``: as a standby (``listener``) for as long as it takes, else for up to ``[node] store_wait``.
    A node that gives up, or is stopped while it waits, closes the store (a database store keeps a connection
    open between its tries)."""
    try:
        return await _take_store(store, config, listener, url, not_ready)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(store.close)
        raise


async def _take_store(
    store: Store, config: NodeConfig, listener: Listener[Any] | None, url: str, not_ready: Callable[[str], None]
) -> tuple[Snapshot, tuple[float, float] | None]:
    if listener is not None:
        refuser = Refuser(store, url, config.max_frame_size)
        return await wait_for_store(store, listener, refuser, not_ready, STORE_RETRY, config.queue_window)
    deadline = time.monotonic() + config.store_wait
    waiting = False
    while True:
        not_ready(f"opening the store ({store.name})")
        try:
            return await anyio.to_thread.run_sync(opener(store, config.queue_window)), None
        except StoreInUse as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            not_ready(f"waiting for the store: {exc.message}")
            if not waiting:
                log.warning("%s; waiting up to %s for it ([node] store_wait)", exc.message, duration(left))
                waiting = True
            await anyio.sleep(min(STORE_RETRY, left))


def opener(store: Store, window: int) -> Callable[[], Snapshot]:
    """How to open ``store``: a store that pages reads each queue's first ``window`` messages only
    (``core/paging.py``) and the transmission queue without its bodies (``core/tx_bodies.py``), any other
    everything."""
    return functools.partial(store.open_paged, window, tx_bodies=False) if store.pages else store.open


async def wait_for_store(
    store: Store, listener: Listener[Any], refuser: Refuser, not_ready: Callable[[str], None], retry: float,
    window: int,
) -> tuple[Snapshot, tuple[float, float] | None]:
    """Open ``store``, trying again every ``retry`` seconds for as long as another node holds it; meanwhile refuse
    every connection on ``listener``. Returns the snapshot and, if the node waited, how long it waited and when
    (``time.perf_counter``) the open that succeeded began."""
    waited_from: float | None = None
    async with anyio.create_task_group() as tg:
        while True:
            began = time.perf_counter()
            try:
                snapshot = await anyio.to_thread.run_sync(opener(store, window))
                break
            except StoreInUse as exc:
                if waited_from is None or exc.owner != refuser.owner:
                    # the store's words say what holds it, then (after "; ") what a node that cannot wait should do:
                    # a standby waits, so only the first part applies
                    log.warning(
                        "standby: %s; waiting to take over, refusing clients and peers meanwhile%s",
                        exc.message.split("; ")[0],
                        f" (sending them to {exc.owner})" if exc.owner else "",
                    )
                refuser.owner = exc.owner
                not_ready(refuser.not_ready())
                if waited_from is None:
                    waited_from = began
                    refuser.since = time.time()
                    tg.start_soon(listener.serve, refuser.refuse)
                await anyio.sleep(retry)
        # Stop accepting for the standby: the socket stays open, so what connects from now on waits in its backlog
        # for the node that serves.
        tg.cancel_scope.cancel()
    return snapshot, None if waited_from is None else (began - waited_from, began)


class StepDown:
    """How a node stops when another has taken its store over: the store says so (:meth:`Store.watch` calls
    :meth:`lost`, from any thread), or refuses a batch with :class:`StoreFenced`. Either way the store writer is
    stopped at once and nothing more is written, not even what stopping would otherwise store; ``on_down(reason)``
    tells the node, which stops (``aiobroker serve`` then exits with status 3)."""

    def __init__(self, on_down: Callable[[str], None], loop: asyncio.AbstractEventLoop) -> None:
        self.on_down = on_down
        self.loop = loop
        #: why the node stepped down (None: it has not)
        self.reason: str | None = None
        self.event = anyio.Event()
        self._writer_scope: anyio.CancelScope | None = None

    def lost(self, reason: str) -> None:
        """The store's word that this node no longer owns it; safe from any thread, and after the node stopped."""
        with suppress(RuntimeError):  # the loop is closed: the node is gone already
            self.loop.call_soon_threadsafe(self.step_down, reason)

    def step_down(self, reason: str) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        if self._writer_scope is not None:
            self._writer_scope.cancel()
        log.error("stepping down: another node took over the store (%s); nothing more is written", reason)
        self.on_down(reason)
        self.event.set()

    async def run_writer(self, writer: StoreWriter) -> None:
        """The store writer's task, stopped when the node steps down; a fenced batch makes it step down."""
        with anyio.CancelScope() as self._writer_scope:
            try:
                await writer.run()
            except StoreFenced as exc:
                self.step_down(exc.message)
