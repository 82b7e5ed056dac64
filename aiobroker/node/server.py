"""The node: the shell around the core. It owns the task group, the clock, the store and the sockets.

It runs four kinds of task, all in one task group: the listener (one task per client connection, each with a
reader and a writer), the store writer (group commit, :mod:`aiobroker.node.writer`), and the ticker, which sleeps until
the core's next deadline (a lifetime, a timer, a lease) or a waiting receive's time-out and then calls
``core.advance(now)``. Everything that decides is in the core; the node only feeds it requests and time, and
carries out what comes back.

Use it in a program::

    async with aiobroker.Node(NodeConfig(store="memory", listen_port=0)) as node:
        async with aiobroker.connect(node.url) as client:
            ...

or run it with ``aiobroker serve``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import logging
import math
import os
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import Listener, SocketAttribute, TaskGroup
from anyio.streams.tls import TLSAttribute

from .. import __version__
from .admission import FAREWELL_TIMEOUT, Admission, Ticket
from ..config import NodeConfig
from .rights import guarded_ops
from ..core.broker import BrokerCore
from ..core.identities import PUBLIC, require_signer, token_digest
from ..core.queues import Lease
from ..durations import duration
from ..errors import (
    BrokerError,
    ConfigError,
    ConnectionLost,
    NotAuthorized,
    Overloaded,
    ProtocolError,
    QueueDisabled,
    UnknownObject,
)
from ..core.catalog import BCN_SERVICE, QueueDef
from ..core.dispatcher import BINDING, ROUTE
from ..core.records import Snapshot
from ..core.routing import explain
from .links import PeerLinks
from .handlers import OPS
from ..store import Store, open_store
from ..transport.connection import FramedConnection
from ..transport.tls import RefusingTLSListener, client_context, server_context
from ..wire.codec import batch_bytes
from ..wire.frames import PROTOCOL_VERSION, Failed, Hello, Refused, Request, Welcome
from .writer import StoreWriter
from aiobroker.resolver import NotFound, Resolver, ResolverError, load_resolver

log = logging.getLogger("aiobroker.node")

HANDSHAKE_TIMEOUT = 10.0
#: While a receive waits or a lease is held, the ticker looks at the clock at least this often, so a new deadline
#: further away than this (a receive's time-out, a lease's expiry) never has to wake it early.
TICKER_MAX_SLEEP = 0.25


class Session:
    """One client connection: its framed stream, who it authenticated as, and the owner of the leases it takes."""

    __slots__ = ("node", "conn", "peer", "id", "identity", "ticket")

    _ids = itertools.count(1)

    def __init__(self, node: Node, conn: FramedConnection, peer: str, ticket: Ticket) -> None:
        self.node = node
        self.conn = conn
        self.peer = peer
        self.id = next(self._ids)
        #: the identity it authenticated as at the handshake (a token, a TLS client certificate), else ``public``
        self.identity = PUBLIC
        #: its place among the node's connections (aiobroker.node.admission)
        self.ticket = ticket

    def in_flight(self) -> bool:
        """A receive waiting or a lease held: however quiet, such a connection is not idle."""
        node = self.node
        if any(lease.owner is self for lease in node.core.leases.values()):
            return True
        return any(w.session is self and not w.done for waiting in node.waiters.values() for w in waiting)

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def reply_now(self, rid: int, result: Any) -> None:
        self.conn.send([11, rid, result])

    def reply_durable(self, rid: int, result: Any) -> None:
        """Answer once what this request changed is stored."""
        send = self.conn.send
        self.node.writer.after_commit(lambda: send([11, rid, result]))

    def fail(self, rid: int, exc: BrokerError) -> None:
        self.conn.send_frame(Failed(request_id=rid, code=exc.code, message=exc.message))

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.peer} as {self.identity}>"


class _Waiter:
    """A receive waiting for messages."""

    __slots__ = ("session", "rid", "queue", "max_messages", "lease_seconds", "deadline", "done")

    def __init__(
        self, session: Session, rid: int, queue: str, max_messages: int, lease_seconds: float | None, deadline: float
    ) -> None:
        self.session = session
        self.rid = rid
        self.queue = queue
        self.max_messages = max_messages
        self.lease_seconds = lease_seconds
        self.deadline = deadline
        self.done = False


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
        self.store = store or open_store(self.config.store, self.config.data_dir, self.config.durability)
        self.core: BrokerCore = None  # type: ignore[assignment]  # made in start()
        self.writer: StoreWriter = None  # type: ignore[assignment]
        self.sessions: set[Session] = set()
        self.waiters: dict[str, deque[_Waiter]] = {}
        self._waiter_deadlines: list[tuple[float, int, _Waiter]] = []
        self._waiter_seq = itertools.count()
        self._tick_wake = anyio.Event()
        #: when (time.monotonic()) the ticker will look next by itself; -inf while it is awake
        self._ticker_target = math.inf
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
        #: the resolver dynamic routing asks (None: the BCN service, if any)
        self.resolver: Resolver | None = None
        #: the store refused a write: stop() must not try to write again
        self._store_failed = False

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

    async def start(self) -> None:
        """Open the store, restore state, create configured objects, and listen. Returns once accepting.

        A start either completes or leaves the store as it found it: everything that can fail (the config's
        objects, the security settings, the TLS files, the listening address) is decided in memory before the
        first write, and a failure abandons the store unwritten."""
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
        snapshot = await anyio.to_thread.run_sync(self.store.open)
        try:
            instance = self._restore(snapshot)
            listener = await self._listen(server_tls)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.store.abandon)
                if self.resolver is not None:
                    await self.resolver.aclose()
            raise
        self.writer = StoreWriter(self.core, self.store, self._on_published, self.links.wake_ready)
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
        self._tg.start_soon(self.writer.run)
        self._tg.start_soon(self._ticker)
        self._tg.start_soon(listener.serve, self._handle_connection)
        # After any start everything stored moves on by itself, with no new send to wake it: every link with
        # stored messages runs, and every conversation restored DELAYED is asked for again.
        self.links.wake_ready()
        self.start_resolves()
        self._started_at = time.time()
        stats = self.core.statistics()
        waiting = sum(q["waiting"] for q in stats["queues"])
        log.info(
            "node %s listening on %s (store %s%s); restored %d conversation(s), %d queued message(s), %d object(s)"
            " in %.2fs",
            instance,
            self.url,
            self.store.name,
            f" at {cfg.data_dir.resolve()}" if self.store.durable else ", nothing kept across restarts",
            stats["conversations"],
            waiting,
            sum(stats["objects"].values()),
            time.perf_counter() - started,
        )

    def _restore(self, snapshot: Snapshot) -> str:
        """Build the core from the store's snapshot and apply the config's objects, in memory only; returns the
        broker instance."""
        cfg = self.config
        instance = snapshot.meta.get("broker_instance") or str(uuid.uuid4())
        self.core = BrokerCore(
            broker_instance=instance,
            persist=self.store.durable,
            max_message_size=cfg.max_message_size,
            max_batch_bytes=batch_bytes(cfg.max_frame_size),
            receive_lease=cfg.receive_lease,
            poison_rollbacks=cfg.poison_rollbacks,
            forwarding=cfg.forwarding,
            max_hops=cfg.max_hops,
            closed_retention=cfg.closed_retention,
            resolver_name=str(cfg.resolver["kind"]) if cfg.resolver is not None else None,
            resolver_answers_bindings=bool(getattr(self.resolver, "answers_bindings", False)),
            resolve_timeout=cfg.resolve_timeout,
            max_delayed_per_service=cfg.max_delayed_per_service,
            max_delayed_messages=cfg.max_delayed_messages,
            node_identity=cfg.node_identity,
            authorization=cfg.authorization,
            binding_failure_cache=cfg.binding_failure_cache,
        )
        for warning in self.core.load(snapshot, self.clock()):
            log.warning("while restoring state: %s", warning)
        if "broker_instance" not in snapshot.meta:
            self.core.changes.meta["broker_instance"] = instance
        self._apply_config_objects()
        self._check_security()
        return instance

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
                listener, server_tls, standard_compatible=False, handshake_timeout=HANDSHAKE_TIMEOUT
            )
        return listener

    def _apply_config_objects(self) -> None:
        """Create the config file's objects that do not exist; one that exists must match it. Identities come
        first (services name their owners, bindings their signers); the rest in the config's order."""
        objects = sorted(self.config.objects, key=lambda o: o[0] != "identity")
        for kind, definition in objects:
            name = str(definition.get("name"))
            try:
                existing = self.core.catalog.table(kind).get(name)
                if existing is None:
                    self.core.create_object(kind, dict(definition), self.clock())
                    log.info("created %s %r from the config file", kind.replace("_", " "), name)
                    continue
                wanted = self.core.catalog.build(kind, dict(definition), self.clock())
                if isinstance(existing, QueueDef) and isinstance(wanted, QueueDef) and existing.status != wanted.status:
                    # A queue's status is the node's to change at run time (poison-message handling turns it off)
                    # as much as an operator's: the stored one stands, or a node whose queue was disabled could
                    # never start again on its own config file.
                    log.warning(
                        "queue %r is %s although the config file says %s; it stays %s (aiobroker alter queue %s"
                        " --status %s changes it)", name, _onoff(existing.status), _onoff(wanted.status),
                        _onoff(existing.status), name, _onoff(wanted.status),
                    )
                    wanted = dataclasses.replace(wanted, status=existing.status)
                if existing != wanted:
                    shown = existing.public_def() if hasattr(existing, "public_def") else existing.to_def()
                    raise ConfigError(
                        f"it exists with another definition ({shown}); drop it first, or change the"
                        " config to match"
                    )
            except BrokerError as exc:
                raise ConfigError(f"config {kind.replace('_', ' ')} {name!r}: {exc.message}") from exc

    def _check_security(self) -> None:
        """The node's identity must exist with a private key; say how authorization stands."""
        cfg, catalog = self.config, self.core.catalog
        if cfg.node_identity is not None:
            try:
                require_signer(catalog.identities.get(cfg.node_identity), cfg.node_identity, "[security] identity")
            except BrokerError as exc:
                raise ConfigError(
                    f"config {exc.message}; add an [[identity]] named {cfg.node_identity!r} with certificate and"
                    " private_key"
                ) from exc
        if cfg.authorization:
            admins = [i.name for i in catalog.identities.values() if i.admin]
            log.info(
                "authorization on: %d identit%s, admin: %s",
                len(catalog.identities),
                "y" if len(catalog.identities) == 1 else "ies",
                ", ".join(admins) or "none",
            )
            if not admins:
                log.warning(
                    "authorization is on but no identity has admin, so no client can create, alter or drop objects;"
                    " add an [[identity]] with admin = true and a token to the config file"
                )

    async def stop(self) -> None:
        """Stop accepting, close every connection, write what is pending, close the store."""
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
        session = Session(self, conn, peer, ticket)
        try:
            role = await self._handshake(conn, session, _peer_certificate(stream))
            if role is None:
                return
            if role == "peer":
                log.info("peer node connected from %s", peer)
                await self.links.serve_inbound(conn)
                return
            self.sessions.add(session)
            log.debug("client %s connected", peer)
            refusal: ProtocolError | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.writer)
                self.admission.watch_idle(tg, conn, session.in_flight, f"client {peer} ({session.identity})")
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
            log.warning("client %s sent a malformed frame; closing its connection: %s", peer, exc.message)
            await conn.send_last(Refused(code=exc.code, message=exc.message))
        except ConnectionLost:
            pass
        finally:
            self.admission.leave(ticket)
            self.sessions.discard(session)
            conn.close()
            self._forget_session(session)
            await conn.aclose()

    async def _handshake(self, conn: FramedConnection, session: Session, certificate: bytes | None) -> str | None:
        """HELLO/WELCOME; returns the peer's role ("client" or "peer"), or None if it was refused. A client's
        identity (see :meth:`_authenticate`) goes in ``session.identity``."""
        peer = session.peer
        with anyio.move_on_after(HANDSHAKE_TIMEOUT):
            frame = await conn.receive_one()
            if not isinstance(frame, Hello):
                raise ProtocolError(f"expected HELLO as the first frame, got {type(frame).__name__.upper()}")
            if frame.version != PROTOCOL_VERSION:
                msg = (
                    f"protocol version {frame.version} is not spoken here (this node speaks {PROTOCOL_VERSION});"
                    " upgrade the older side"
                )
                log.warning("refused %s: %s", peer, msg)
                await conn.send_last(Refused(code="protocol_error", message=msg))
                return None
            # a peer node authenticates like a client, and needs the peer right when authorization is on (its
            # conversations' initiators are checked again, per conversation, by the core)
            who = "peer node" if frame.role == "peer" else "client"
            try:
                session.identity = self._authenticate(frame.info, certificate)
                if frame.role == "peer" and self.core.authorization:
                    if not self.core.catalog.may(session.identity, "peer", ""):
                        raise NotAuthorized(
                            f"identity {session.identity!r} may not link to this node as a peer node; an"
                            " administrator gives an identity peer = true, and the linking node presents its token"
                            " ([federation] link_token) or its TLS certificate"
                        )
                # administrators and peer nodes may use the reserved connections (the peer right was checked above)
                privileged = frame.role == "peer" or self.core.catalog.may(session.identity, "admin", "")
                self.admission.admit(session.ticket, privileged=privileged)
            except NotAuthorized as exc:
                log.warning("refused %s %s at the handshake: %s", who, peer, exc.message)
                await conn.send_last(Refused(code=exc.code, message=exc.message))
                return None
            except Overloaded as exc:  # logged by the admission, at most once a minute
                await conn.send_last(Refused(code=exc.code, message=exc.message))
                return None
            conn.send_frame(
                Welcome(
                    version=PROTOCOL_VERSION,
                    broker_instance=self.core.broker_instance,
                    info={
                        "server": f"aiobroker {__version__}",
                        "max_message_size": self.config.max_message_size,
                        "max_frame_size": self.config.max_frame_size,
                        "identity": session.identity,
                    },
                )
            )
            return frame.role
        log.warning("client %s did not finish the handshake within %gs; closed", peer, HANDSHAKE_TIMEOUT)
        with anyio.move_on_after(FAREWELL_TIMEOUT):  # say why, unless it does not even read
            await conn.send_last(
                Refused(code="timeout", message=f"no HELLO within {HANDSHAKE_TIMEOUT:g} s of connecting; closed")
            )
        return None

    def _authenticate(self, info: Any, certificate: bytes | None) -> str:
        """The identity a client's HELLO names: its ``token``, else its TLS client certificate, else ``public``.

        With authorization on, a token or certificate that matches no identity raises NotAuthorized (the client
        is refused). With it off, tokens and certificates are accepted as they are; a match is still recorded
        (for the log and the client's WELCOME).
        """
        catalog = self.core.catalog
        enforce = self.core.authorization
        token = info.get("token") if isinstance(info, dict) else None
        if token is not None:
            if not isinstance(token, str) or not token:
                if enforce:
                    raise NotAuthorized("the token must be a non-empty string")
                return PUBLIC
            ident = catalog.identity_by_token_digest(token_digest(token))
            if ident is not None:
                log.debug("client authenticated by token as identity %r", ident.name)
                return ident.name
            if enforce:
                raise NotAuthorized(
                    "the token given matches no identity on this node; check it (aiobroker.connect(url, token=...),"
                    " --token or $AIOBROKER_TOKEN), or ask an administrator to add it to an identity"
                    " (aiobroker create identity NAME --token ...); connect without a token to be 'public'"
                )
            return PUBLIC
        if certificate:
            fingerprint = hashlib.sha256(certificate).hexdigest()
            ident = catalog.identity_by_fingerprint(fingerprint)
            if ident is not None:
                log.debug("client authenticated by TLS certificate as identity %r", ident.name)
                return ident.name
            if enforce:
                raise NotAuthorized(
                    f"the TLS client certificate (SHA-256 fingerprint {fingerprint}) matches no identity on this"
                    " node; ask an administrator to create an identity with this certificate"
                    " (aiobroker create identity NAME --certificate FILE), or authenticate with a token"
                )
        return PUBLIC

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
            log.info("client %s went away holding %d lease(s); their messages are back in the queue", session.peer, released)
            self.writer.kick()
            for name in queues:
                self.serve_waiters(name)

    # ------------------------------------------------------------------------------------------------- receive

    def receive(
        self, session: Session, rid: int, queue: str, max_messages: int, timeout: float | None, lease_seconds: float | None
    ) -> None:
        lease = self.core.receive(queue, max_messages, session, self.clock(), lease_seconds)
        if lease is not None:
            session.reply_now(rid, self._batch(lease))
            self._maybe_wake_ticker()
            return
        if timeout == 0:
            session.reply_now(rid, _EMPTY_BATCH)
            return
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        waiter = _Waiter(session, rid, queue, max_messages, lease_seconds, deadline)
        self.waiters.setdefault(queue, deque()).append(waiter)
        if deadline != math.inf:
            heapq.heappush(self._waiter_deadlines, (deadline, next(self._waiter_seq), waiter))
            self._maybe_wake_ticker()

    def _batch(self, lease: Lease) -> dict[str, Any]:
        rows = lease.messages
        return {
            "lease": lease.id,
            "queue": lease.queue.name,
            "lease_expires_at": lease.expires_at,
            "messages": rows,  # stored rows as they are: no per-message work on the way out
            "conversations": self.core.conversations_of(rows),
        }

    def serve_waiters(self, queue_name: str) -> None:
        """Hand ready groups of a queue to the receives waiting on it, oldest waiter first."""
        waiting = self.waiters.get(queue_name)
        if not waiting:
            return
        queue = self.core.queues.get(queue_name)
        if queue is None:
            self.fail_waiters(queue_name)
            return
        if not queue.definition.status:
            try:
                self.core.check_receivable(queue)
            except QueueDisabled as exc:
                self.fail_waiters(queue_name, exc)
            return
        now = self.clock()
        while waiting and queue.ready:
            w = waiting.popleft()
            if w.done or w.session.closed:
                continue
            w.done = True
            lease = self.core.receive(queue_name, w.max_messages, w.session, now, w.lease_seconds)
            if lease is not None:
                w.session.reply_now(w.rid, self._batch(lease))
        if not waiting:
            del self.waiters[queue_name]
        self._maybe_wake_ticker()

    def fail_waiters(self, queue_name: str, exc: BrokerError | None = None) -> None:
        err = exc or UnknownObject(f"queue {queue_name!r} was dropped while this receive waited")
        for w in self.waiters.pop(queue_name, ()):
            if not w.done and not w.session.closed:
                w.done = True
                w.session.fail(w.rid, err)

    def _on_published(self, queues: set[str]) -> None:
        for name in queues:
            self.serve_waiters(name)

    # ------------------------------------------------------------------------------------------ dynamic routing

    def after_core(self) -> None:
        """After any call into the core: store what changed, keep the ticker's deadline, start what it asked."""
        self.writer.kick()
        self._maybe_wake_ticker()
        self.start_resolves()

    def start_resolves(self) -> None:
        """Run the resolver for each request the dispatcher decided to make (one per service at most)."""
        requests = self.core.resolve_requests
        if not requests or self._tg is None or self.resolver is None:
            return
        self.core.resolve_requests = []
        for kind, service in requests:
            self._tg.start_soon(self._resolve, service, kind, name=f"resolve {kind} {service}")

    async def _resolve(self, service: str, kind: str = ROUTE) -> None:
        assert self.resolver is not None
        timeout = self.config.resolve_timeout
        started = time.monotonic()
        what = "route" if kind == ROUTE else "remote service binding"
        try:
            with anyio.fail_after(timeout if timeout is not None else math.inf):
                if kind == BINDING:
                    binding = await self.resolver.resolve_binding(service)
                else:
                    answer = await self.resolver.resolve_route(service)
        except NotFound as exc:
            moved = self.core.resolve_failed(service, f"not found: {exc.message}", self.clock(), exc.retry_after, kind)
            log.info("%s: no %s for service %r (%s)%s", self.resolver.name, what, service, exc.message, _plain(moved))
        except ResolverError as exc:
            moved = self.core.resolve_failed(service, exc.message, self.clock(), exc.retry_after, kind)
            log.warning(
                "%s could not resolve the %s of service %r: %s%s", self.resolver.name, what, service, exc.message,
                _plain(moved),
            )
        except TimeoutError:
            text = f"no answer within resolve_timeout ({duration(timeout or math.inf)})"
            log.warning("%s gave no %s for service %r: %s", self.resolver.name, what, service, text)
            self.core.resolve_failed(service, text, self.clock(), None, kind)
        except Exception as exc:  # a resolver that breaks its contract must not take the node down
            log.exception("resolver %s failed on the %s of service %r", self.resolver.name, what, service)
            self.core.resolve_failed(service, f"the resolver failed: {type(exc).__name__}: {exc}", self.clock(), None, kind)
        else:
            if kind == BINDING:
                moved = self.core.binding_resolved(service, binding, self.clock())
                log.info(
                    "%s gave a remote service binding for %r in %.0f ms; %d delayed message(s) released",
                    self.resolver.name, service, (time.monotonic() - started) * 1000, moved,
                )
                self.after_core()
                return
            moved = self.core.resolved(service, answer, self.clock())
            log.info(
                "%s resolved service %r in %.0f ms: %s; %d delayed message(s) released",
                self.resolver.name,
                service,
                (time.monotonic() - started) * 1000,
                ", ".join(t.address for t in answer.preferred()),
                moved,
            )
        self.after_core()

    def diagnose(self, service: str, broker_instance: str | None) -> dict[str, Any]:
        """Why messages to a service go where they go, or wait: the routing steps in words, and dynamic routing."""
        now = self.clock()
        core = self.core
        asks = self.resolver.asks(service) if self.resolver is not None else core.asks  # what is really asked
        lines, decision = explain(
            core.catalog.routes.values(),
            service=service,
            broker_instance=broker_instance,
            now=now,
            local_services=core.catalog.services,
            local_instance=core.broker_instance,
            dynamic=core.resolver_name is not None or BCN_SERVICE in core.catalog.services,
            asks=asks,
        )
        handles = core.tx.delayed.get(service, {})
        return {
            "service": service,
            "steps": lines,
            "decision": decision.kind,  # local, remote, resolve or delayed (nothing applies)
            "routes": [r.to_def() for r in core.catalog.routes.values() if r.service_name in (service, None)],
            "local": service in core.catalog.services,
            "dynamic_routing": core.dynamic_routing,
            "resolver": core.resolver_name or ("BCN service" if core.dynamic_routing else None),
            "asks": asks if core.dynamic_routing else None,
            "delayed_conversations": len(handles),
            "delayed_messages": core.tx.delayed_count.get(service, 0),
            "delayed_reason": next((core.delayed_words(core.endpoints[h], now) for h in handles if h in core.endpoints), None),
            "request": core.dispatcher.describe(ROUTE, service, now),
        }

    # -------------------------------------------------------------------------------------------------- time

    def wake_ticker(self) -> None:
        self._tick_wake.set()

    def _maybe_wake_ticker(self) -> None:
        """Wake the ticker only when something is due before it would look anyway. Called after every request,
        so it must not wake it for nothing: a wake-up costs a task switch, a cancel scope and a writer cycle."""
        target = self._ticker_target
        if target == -math.inf:
            return  # awake: it reads every deadline again before it sleeps
        wd = self._waiter_deadlines[0][0] if self._waiter_deadlines else math.inf
        nxt = self.core.next_deadline()
        if nxt is not None:
            # core deadlines are wall-clock, the target is monotonic
            wd = min(wd, time.monotonic() + (nxt - self.clock()))
        # 1 ms of slack (the timers' resolution): the deadline the ticker already sleeps towards, converted between
        # the two clocks, may come out a rounding error earlier, and must not count as new
        if wd < target - 0.001:
            self._tick_wake.set()

    async def _ticker(self) -> None:
        heap = self._waiter_deadlines
        while True:
            # receives already served leave their time-outs in the heap (cleaned lazily): drop them from the front,
            # or the ticker wakes for each, half a second (the receive's time-out) after every receive
            while heap and heap[0][2].done:
                heapq.heappop(heap)
            nxt = self.core.next_deadline()
            delay = math.inf if nxt is None else max(0.0, nxt - self.clock())
            if heap:
                delay = min(delay, max(0.0, heap[0][0] - time.monotonic()))
            if heap or self.core.leases:
                delay = min(delay, TICKER_MAX_SLEEP)
            self._ticker_target = time.monotonic() + delay
            with anyio.move_on_after(delay):
                await self._tick_wake.wait()
            self._tick_wake = anyio.Event()
            self._ticker_target = -math.inf
            self._tick()

    def _tick(self) -> None:
        expired = self.core.advance(self.clock())
        if expired:
            for lease in expired:
                log.info(
                    "lease %d on queue %r ran out (client %s); %d message(s) back in the queue",
                    lease.id,
                    lease.queue.name,
                    getattr(lease.owner, "peer", "?"),
                    len(lease.messages),
                )
            for name in {lease.queue.name for lease in expired}:
                self.serve_waiters(name)
        self.start_resolves()
        mono = time.monotonic()
        heap = self._waiter_deadlines
        while heap and heap[0][0] <= mono:
            _, _, w = heapq.heappop(heap)
            if not w.done:
                w.done = True
                if not w.session.closed:
                    w.session.reply_now(w.rid, _EMPTY_BATCH)
                waiting = self.waiters.get(w.queue)
                if waiting is not None:
                    try:
                        waiting.remove(w)
                    except ValueError:
                        pass
                    if not waiting:
                        del self.waiters[w.queue]
        self.writer.kick()

    # ------------------------------------------------------------------------------------------------- status

    def log_change(self, what: str) -> None:
        log.info("%s", what)

    def status(self) -> dict[str, Any]:
        stats = self.core.statistics(self.clock())
        stats["node"] = {
            "version": __version__,
            "listen": self.url,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self._started_at, 1),
            "connections": len(self.sessions),
            # every connection counted: established (privileged: admins and peers), handshaking, refused, idle-closed
            "admission": self.admission.statistics(),
            "requests_served": self.requests_served,
            "waiting_receives": sum(len(w) for w in self.waiters.values()),
        }
        stats["store"] = {**self.store.describe(), **self.writer.statistics()}
        stats["peers"] = self.links.statistics()
        if self.resolver is not None:
            stats["dynamic_routing"]["resolver_details"] = self.resolver.describe()
        return stats

    def __repr__(self) -> str:
        return f"<Node {self.url} {self.core!r}>"


def _peer_certificate(stream: Any) -> bytes | None:
    """The DER certificate a TLS client presented (the listener asks for one when ``[tls] ca`` is set)."""
    try:
        der = stream.extra(TLSAttribute.peer_certificate_binary, None)
    except Exception:  # noqa: BLE001 - no certificate is the answer for any stream that cannot say
        return None
    return der if isinstance(der, bytes) and der else None


_EMPTY_BATCH: dict[str, Any] = {"lease": None, "queue": None, "messages": [], "conversations": {}}


def _onoff(switch: bool) -> str:
    return "on" if switch else "off"


def _plain(moved: int) -> str:
    """For the log after a failed binding request: the conversations that do not require encryption go on."""
    return f"; {moved} delayed message(s) go on unsecured" if moved else ""
