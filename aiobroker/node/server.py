"""The node: the shell around the core. It owns the task group, the clock, the store and the sockets.

It runs four kinds of task, all in one task group: the listener (one task per client connection, each with a
reader and a writer; :mod:`~aiobroker.node.sessions` holds the handshake), the store writer (group commit,
:mod:`~aiobroker.node.writer`), the ticker (:mod:`~aiobroker.node.waiters`), which sleeps until the core's next
deadline or a waiting receive's time-out, and one task per resolver question (:mod:`~aiobroker.node.resolving`).
Everything that decides is in the core; the node only feeds it requests and time, and carries out what comes back.
The parts it hands itself to (handlers, rights, links) know it only through :mod:`~aiobroker.node.shell`.

Use it in a program::

    async with aiobroker.Node(NodeConfig(store="memory", listen_port=0)) as node:
        async with aiobroker.connect(node.url) as client:
            ...

or run it with ``aiobroker serve``.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from anyio.abc import Listener, SocketAttribute, TaskGroup

if TYPE_CHECKING:
    from .monitor import MonitorListener

from ..version import __version__
from ..config import NodeConfig
from ..core.broker import BrokerCore
from ..core.effects import BodiesWanted, LeaseExpired, MemoryPressure, PageWanted, Report, ResolveRequest
from ..core.queues import Lease
from ..errors import BrokerError, ConfigError, ConnectionLost, Overloaded, ProtocolError, UnknownObject
from ..resolver import Resolver, load_resolver
from ..store import Store, open_store
from ..transport.connection import FramedConnection
from ..transport.tls import RefusingTLSListener, client_context, server_context
from ..wire.frames import Refused, Request
from . import resolving, sessions
from .admission import Admission
from .counters import Counters
from .handlers import OPS
from .links import PeerLinks
from .rights import guarded_ops
from .sessions import Session, handshake, peer_certificate
from .standby import Ownership
from .startup import broker_instance, restore
from .pages import StoreReads
from .waiters import Waiters
from .writer import StoreWriter

log = logging.getLogger("aiobroker.node")

def log_memory_pressure(over: bool, held: int, max_memory: int, low: int) -> None:
    """What the node holds for messages crossed a watermark of its budget (``core/budget.py``): said once a
    crossing, not per refused send; peer links refuse new envelopes while over (``links.py``)."""
    mib = 1024 * 1024
    if over:
        log.warning(
            "memory budget reached: the node holds %.1f MiB for messages, max_memory is %.1f MiB; sends are"
            " refused (Overloaded) and peer links take no new messages until receivers bring it below %.1f MiB",
            held / mib, max_memory / mib, low / mib,
        )
    else:
        log.info(
            "memory budget: back below %.1f MiB (holds %.1f MiB); sends and peer links are accepted again",
            low / mib, held / mib,
        )


class Node:
    def __init__(
        self,
        config: NodeConfig | None = None,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or NodeConfig()
        self.clock = clock
        self.store = store or open_store(
            self.config.store, self.config.data_dir, self.config.durability, self.config.store_options
        )
        self.core: BrokerCore = None  # type: ignore[assignment]  # made in start()
        #: this node's broker instance, once start() has read the store (None before)
        self.broker_instance: str | None = None
        self.writer: StoreWriter = None  # type: ignore[assignment]
        self.waiters: Waiters = None  # type: ignore[assignment]
        self.sessions: set[Session] = set()
        self._tg: TaskGroup | None = None
        self._started_at = 0.0
        self.host = self.config.listen_host
        self.port = self.config.listen_port
        self.requests_served = 0
        self.links = PeerLinks(self)
        cfg = self.config
        self.admission = Admission(
            max_connections=cfg.max_connections,
            reserved_connections=cfg.reserved_connections,
            max_connections_per_address=cfg.max_connections_per_address,
            idle_timeout=cfg.idle_timeout,
        )
        #: how this node's links connect when it speaks TLS (None: plain TCP)
        self.link_tls: ssl.SSLContext | None = None
        #: the resolver dynamic routing asks (None: the BCN service, if any), and its running questions
        self.resolver: Resolver | None = None
        self.resolving: resolving.Resolving | None = None
        #: the store refused a write: stop() must not try to write again
        self._store_failed = False
        #: what the shell counts for /metrics (sends, commits, acknowledgements, store writes, resolver answers)
        self.counters = Counters()
        #: the HTTP monitoring listener (docs/monitoring.md), when the config asks for one
        self.http: MonitorListener | None = None
        #: why the node cannot serve clients now, for /readyz (None: it can)
        self._not_ready: str | None = "not started"
        #: its hold on the store: the wait for it (``stop_waiting``), then stepping down if it is lost (standby.py)
        self.ownership = Ownership()

    # ---------------------------------------------------------------------------------------------- lifecycle

    @property
    def task_group(self) -> TaskGroup | None:
        """Where the node's long-running tasks live (peer links start theirs here)."""
        return self._tg

    @property
    def url(self) -> str:
        """What a client dials: ``tcp://host:port``, or ``tls://host:port`` when the node speaks TLS."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "tls" if self.config.tls_cert is not None else "tcp"
        return f"{scheme}://{host}:{self.port}"

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def http_url(self) -> str | None:
        """Where the HTTP monitoring listener answers (``http://host:port``, the port as bound), None without one."""
        return self.http.url if self.http is not None else None

    def not_ready(self) -> str | None:
        """Why the node cannot serve clients now (what ``/readyz`` says), or None when it can."""
        return self._not_ready

    async def start(self) -> None:
        """Open the store, restore state, create configured objects, and listen. Returns once accepting.

        A start either completes or leaves the store as it found it: everything that can fail (the config's
        objects, the security settings, the TLS files, the listening address) is decided in memory before the
        first write, and a failure abandons the store unwritten. The HTTP monitoring listener, if any, comes
        first, so that its probes answer (not ready) while the store is read back, and a taken address fails the
        start before the store is opened; it stops last (:meth:`stop`)."""
        if self.config.http_port is not None:
            from .monitor import MonitorListener  # here: starlette and hypercorn load only for a node that serves

            http = MonitorListener(self)
            if await http.start():
                self.http = http
        try:
            await self._start()
        except BaseException:
            self._not_ready = "the start failed"
            await self._stop_http()  # its task group is exited here, where it was entered: no shield around it
            raise
        self._not_ready = None

    def _stepped_down(self, reason: str) -> None:
        self._store_failed = True  # stop() must not write what is pending
        self._not_ready = f"stepped down: another node took over the store ({reason})"

    async def _stop_http(self) -> None:
        if self.http is not None:
            await self.http.stop()

    async def _start(self) -> None:
        started = time.perf_counter()
        cfg = self.config
        server_tls = None
        if cfg.tls_cert is not None and cfg.tls_key is not None:  # first: a bad file opens nothing
            server_tls = server_context(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
            self.link_tls = client_context(
                ca=cfg.tls_ca, cert=cfg.tls_cert, key=cfg.tls_key, check_hostname=cfg.tls_check_hostname
            )
        if cfg.resolver is not None:
            options = {k: v for k, v in cfg.resolver.items() if k != "kind"}
            self.resolver = load_resolver(str(cfg.resolver["kind"]), options)
        # A standby listens first, to send clients to the owner while it waits (standby.py); a node that is not
        # one decides everything else before it binds the address
        listener = await self._listen(server_tls) if cfg.standby else None
        try:
            snapshot, took_over = await self.ownership.take(self.store, cfg, listener, self.url, self._set_not_ready)
        except BaseException:
            if listener is not None:
                with anyio.CancelScope(shield=True):
                    await listener.aclose()
            raise
        if took_over is not None:  # a standby's start counts from the take-over
            started = took_over[1]
        self._not_ready = "restoring the store's state"
        self.broker_instance = instance = broker_instance(snapshot)  # from here on the log lines name the node
        try:
            self.core = restore(
                snapshot, instance, cfg, self.store.durable, self.resolver, self.store.pages, self.clock
            )
            listener = listener or await self._listen(server_tls)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if listener is not None:
                    await listener.aclose()
                await anyio.to_thread.run_sync(self.store.abandon)
                if self.resolver is not None:
                    await self.resolver.aclose()
            raise
        self.waiters = Waiters(self.core, self.clock, self.counters)
        self.reads = StoreReads(self.store, self.core, self.after_core, self.waiters.serve, self.clock)
        if self.resolver is not None:
            self.resolving = resolving.Resolving(
                self.resolver, self.core, self.clock, cfg.resolve_timeout, self.after_core, self.counters
            )
        self.writer = StoreWriter(
            self.core, self.store, self.waiters.serve_all, self.links.wake_ready, counters=self.counters
        )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._listener = listener
        try:
            # What loading and the config changed is stored before any client can see it; the task group exists
            # by now, so the links this wakes (restored conversations with messages for other nodes) start.
            await self.writer.drain()
        except BaseException:
            self._store_failed = True  # nothing more to write: the store refused the first batch
            await self.stop()
            raise
        await self.ownership.hold(self.store, self.url, self._stepped_down, self._tg, self.writer)
        self._tg.start_soon(self.waiters.run_ticker, self._after_tick)
        self._tg.start_soon(listener.serve, self._handle_connection)
        # After any start everything stored moves on by itself, with no new send to wake it: every link with
        # stored messages runs, and every conversation restored DELAYED is asked for again.
        self.links.wake_ready()
        self.handle_effects()
        self._started_at = time.time()
        stats = self.core.statistics()
        waiting = sum(q["waiting"] for q in stats["queues"])
        log.info(
            "node %s listening on %s (store %s%s); %s; restored %d conversation(s), %d queued message(s),"
            " %d object(s) in %.2fs",
            instance,
            self.url,
            self.store.name,
            f" at {self.store.location}" if self.store.location else ", nothing kept across restarts",
            f"monitoring on {self.http_url}" if self.http is not None else "no HTTP monitoring",
            stats["conversations"],
            waiting,
            sum(stats["objects"].values()),
            time.perf_counter() - started,
        )
        self.ownership.log_take_over(self.store, took_over)

    def _set_not_ready(self, why: str | None) -> None:
        self._not_ready = why

    async def _listen(self, server_tls: ssl.SSLContext | None) -> Listener[Any]:
        """Bind the listening address (TLS when ``server_tls``); sets ``host``/``port`` to what was bound."""
        cfg = self.config
        try:
            listener: Listener[Any] = await anyio.create_tcp_listener(local_host=cfg.listen_host, local_port=cfg.listen_port)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {cfg.listen}: {exc.strerror or exc}; is another node running there?"
                " choose another --listen address"
            ) from exc
        sockname = listener.extra(SocketAttribute.local_address)
        self.host, self.port = str(sockname[0]), int(sockname[1])
        if server_tls is not None:
            listener = RefusingTLSListener(
                listener, server_tls, standard_compatible=False, handshake_timeout=sessions.HANDSHAKE_TIMEOUT
            )
        return listener

    async def stop(self) -> None:
        """Stop accepting, close every connection, write what is pending, close the store; then the HTTP listener
        (``/readyz`` says "stopping" meanwhile)."""
        self._not_ready = "stopping"
        try:
            await self._stop()
        finally:
            await self._stop_http()

    async def _stop(self) -> None:
        if self._tg is not None:
            tg, self._tg = self._tg, None
            tg.cancel_scope.cancel()
            try:
                await tg.__aexit__(None, None, None)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._listener.aclose()
                    if self.writer is not None and not self._store_failed:
                        await self.writer.drain()
                    await anyio.to_thread.run_sync(self.store.close)
                    if self.resolver is not None:
                        await self.resolver.aclose()
                    log.info("node stopped; store closed")

    # --------------------------------------------------------------------------------------------- connections

    async def _handle_connection(self, stream: Any) -> None:
        try:
            addr = stream.extra(SocketAttribute.remote_address)
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            host = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        except Exception:  # noqa: BLE001 - counted as one unknown address
            peer = host = "?"
        conn = FramedConnection(stream, max_frame_size=self.config.max_frame_size, peer=peer)
        try:
            ticket = self.admission.arrive(host)
        except Overloaded as exc:
            await conn.send_last(Refused(code=exc.code, message=exc.message))
            await conn.aclose()
            return
        session = Session(conn, peer, ticket, self.writer.after_commit)
        try:
            role = await handshake(conn, session, peer_certificate(stream), self.core, self.config, self.admission)
            if role is None:
                return
            if role == "peer":
                log.info("peer node connected from %s", peer, extra={"peer": peer})
                await self.links.serve_inbound(conn)
                return
            self.sessions.add(session)
            log.debug("client %s connected", peer, extra={"peer": peer})
            refusal: ProtocolError | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.writer)
                in_flight = self.waiters.in_flight
                self.admission.watch_idle(tg, conn, lambda: in_flight(session), f"client {peer} ({session.identity})")
                try:
                    await self._serve(session)
                except ConnectionLost:
                    pass
                except ProtocolError as exc:
                    refusal = exc
                tg.cancel_scope.cancel()
            if refusal is not None:
                raise refusal
        except ProtocolError as exc:
            log.warning(
                "client %s sent a malformed frame; closing its connection: %s", peer, exc.message, extra={"peer": peer}
            )
            await conn.send_last(Refused(code=exc.code, message=exc.message))
        except ConnectionLost:
            pass
        finally:
            self.admission.leave(ticket)
            self.sessions.discard(session)
            conn.close()
            self._forget_session(session)
            await conn.aclose()

    async def _serve(self, session: Session) -> None:
        conn = session.conn
        ops = guarded_ops() if self.core.authorization else OPS
        while not conn.closed:
            frames = await conn.receive_frames()
            for frame in frames:
                if not isinstance(frame, Request):
                    raise ProtocolError(f"a client sends REQUEST frames, got {type(frame).__name__.upper()}")
                handler = ops.get(frame.op)
                try:
                    if handler is None:
                        raise UnknownObject(f"unknown operation {frame.op!r}; this node knows {', '.join(sorted(ops))}")
                    handler(self, session, frame.request_id, frame.args)
                except BrokerError as exc:
                    session.fail(frame.request_id, exc)
            self.requests_served += len(frames)
            self.after_core()

    def _forget_session(self, session: Session) -> None:
        if self.core is None:
            return
        queues = {lease.queue.name for lease in self.core.leases.values() if lease.owner is session}
        released = self.core.release_owner(session)
        if released:
            log.info(
                "client %s went away holding %d lease(s); their messages are back in the queue",
                session.peer,
                released,
                extra={"peer": session.peer},
            )
            self.writer.kick()
            for name in queues:
                self.waiters.serve(name)

    # ------------------------------------------------------------------------------------------ after the core

    def after_core(self) -> None:
        """After any call into the core: store what changed, keep the ticker's deadline, do what it asked."""
        self.writer.kick()
        self.waiters.maybe_wake_ticker()
        self.handle_effects()

    def _after_tick(self) -> None:
        """After the ticker moved the core's time on: do what it asked, store what changed."""
        self.handle_effects()
        self.writer.kick()

    def handle_effects(self, peer: object = None) -> None:
        """Drain the core's outbox and do each thing it asks (``core/effects.py``); ``peer``, if given, is the
        link whose frame the core just took, named in its reports. Before the node runs (no task group yet) the
        effects wait in the outbox for the start to drain them."""
        tg = self._tg
        if tg is None or not self.core.outbox:
            return
        expired: list[Lease] = []
        for effect in self.core.drain_effects():
            match effect:
                case ResolveRequest(kind=kind, service=service, binding_too=both):
                    # one per service at most: the dispatcher asks again only once this one is answered
                    if self.resolving is not None:
                        tg.start_soon(self.resolving.run, service, kind, both, name=f"resolve {kind} {service}")
                case LeaseExpired(lease=lease):
                    expired.append(lease)
                case MemoryPressure(over=over, held=held, max_memory=max_memory):
                    log_memory_pressure(over, held, max_memory, self.core.budget.low)
                case PageWanted() | BodiesWanted():  # node/pages.py
                    self.reads.want(effect, tg)
                case Report(text=text):
                    if peer is None:
                        log.warning("%s", text)
                    else:
                        log.warning("from %s: %s", peer, text, extra={"peer": str(peer)})
        if expired:
            self.waiters.leases_expired(expired)

    def diagnose(self, service: str, broker_instance: str | None) -> dict[str, Any]:
        """Why messages to a service go where they go, or wait: the routing steps in words, and dynamic routing."""
        return resolving.diagnose(self.core, self.resolver, service, broker_instance, self.clock())

    # ------------------------------------------------------------------------------------------------- status

    def log_change(self, what: str, fields: dict[str, str] | None = None) -> None:
        log.info("%s", what, extra=fields)

    def status(self) -> dict[str, Any]:
        stats = self.core.statistics(self.clock())
        stats["node"] = {
            "version": __version__,
            "role": "owner",  # of its store; a standby answers no request, its refusal says "standby" (standby.py)
            "listen": self.url,
            "http": self.http_url,  # the monitoring listener (docs/monitoring.md), or None
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self._started_at, 1),
            "connections": len(self.sessions),
            # every connection counted: established (privileged: admins and peers), handshaking, refused, idle-closed
            "admission": self.admission.statistics(),
            "requests_served": self.requests_served,
            "waiting_receives": self.waiters.count(),
        }
        stats["store"] = {**self.store.describe(), **self.writer.statistics()}
        stats["peers"] = self.links.statistics()
        if self.resolver is not None:
            stats["dynamic_routing"]["resolver_details"] = self.resolver.describe()
        return stats

    def __repr__(self) -> str:
        return f"<Node {self.url} {self.core!r}>"
