"""The client operations a node serves: one small function per ``op`` of a REQUEST frame.

Each handler checks its arguments, calls the core, and answers through ``session``: ``reply_durable`` when the
answer promises something is stored (a send, a commit, a create), ``reply_now`` when it promises nothing (a read,
a receive). A :class:`~aiobroker.errors.BrokerError` raised here becomes a FAILED frame for that request alone.

=================  ==========================================================  =====================================
op                 args                                                        result
=================  ==========================================================  =====================================
create             kind, definition (map)                                      the definition as stored
alter_queue        name, changes (map of status/retention/poison_message_...)  the new definition
alter_route        name, changes (map of address/service_name/broker_...)     the new definition
drop               kind, name                                                  null
list               kind                                                        list of definitions
begin_dialog       from_service, to_service, contract, [broker_instance,       handle, conversation_id, group_id
                   lifetime, encryption, related_group]
send               handle, messages: [[message_type, body(, trace)], ...]      count
                   or handle, type, bodies: [body, ...] (one type, no trace)
end                handle, [error: [code, description]], [cleanup]             null
begin_timer        handle, seconds                                             null
get_conversation   handle                                                      the endpoint's description
list_conversations [limit]                                                     list of endpoint descriptions
receive            queue, [max_messages=1], [timeout=0], [lease_seconds],       lease, messages, conversations
                   [max_groups=1], [facts="map"]                               (or facts)
commit             lease                                                       count
rollback           lease                                                       null
diagnose           service, [broker_instance]                                  the routing steps in words, dynamic routing
status             (none)                                                      node, store, queues, conversations
=================  ==========================================================  =====================================

With the node's ``[security] authorization`` on, each handler runs behind its rule in :mod:`aiobroker.node.rights`
(admin for the catalog, send or receive rights for conversations and queues, an authenticated identity for
reads), so a refused request raises :class:`~aiobroker.errors.NotAuthorized` before it changes anything; the
handlers here do not check rights themselves.

``receive`` with ``timeout`` > 0 (or null: no limit) waits for messages without holding up anything else on the
connection; each received message is the stored row ``[message_id, location, handle, sequence_number,
message_type, body, enqueued_at, state]`` (see :class:`aiobroker.core.records.MessageRow`), with a ninth element,
``trace``, when it carries W3C trace context (``aiobroker/tracecontext.py``); ``conversations`` maps each handle
in the batch to ``[service, far_service, contract, group_id, is_initiator, conversation_id]``, and ``traced``
(present only then) says that some row may have the ninth element. With ``facts="compact"`` the answer has
``facts``, a flat list, instead of ``conversations`` (``Status.compact_facts``; docs/protocol.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import tracing
from ..core.catalog import check_kind
from ..errors import InvalidArgument

from .logs import object_fields
from .sessions import Session
from .shell import Shell

if TYPE_CHECKING:
    from ..core.conversation import Endpoint

#: one operation: (the node, the client's session, the request id, the request's args); answers through the session
Handler = Callable[[Shell, Session, int, dict[str, Any]], None]
OPS: dict[str, Handler] = {}

_MISSING = object()


def op(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        OPS[name] = fn
        return fn

    return register


def arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    """One argument of the request, type-checked; a missing or mistyped one is an InvalidArgument naming it."""
    value = args.get(name, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise InvalidArgument(f"missing argument {name!r}")
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise InvalidArgument(f"argument {name!r} must be {names}, got {type(value).__name__}")
    return value


def number(args: dict[str, Any], name: str, default: Any = _MISSING) -> float | None:
    value = arg(args, name, (int, float, type(None)), default)
    if value is not None and not math.isfinite(value):
        raise InvalidArgument(f"argument {name!r} must be a finite number")
    return value  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------------------ catalog


@op("create")
def create(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    kind = check_kind(arg(args, "kind", str))
    obj = node.core.create_object(kind, arg(args, "definition", dict), node.clock())
    session.reply_durable(rid, obj.public_def() if hasattr(obj, "public_def") else obj.to_def())
    node.log_change(f"created {kind.replace('_', ' ')} {obj.name!r}", object_fields(kind, obj.name))


@op("alter_queue")
def alter_queue(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    name = arg(args, "name", str)
    new = node.core.alter_queue(name, arg(args, "changes", dict))
    session.reply_durable(rid, new.public_def())
    node.log_change(f"altered queue {name!r}: {new.public_def()}", {"queue": name})
    node.waiters.serve(name)


@op("alter_route")
def alter_route(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    name = arg(args, "name", str)
    new = node.core.alter_route(name, arg(args, "changes", dict), node.clock())
    session.reply_durable(rid, new.to_def())
    node.log_change(f"altered route {name!r}: {new.to_def()}")


@op("drop")
def drop(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    kind = check_kind(arg(args, "kind", str))
    name = arg(args, "name", str)
    node.core.drop_object(kind, name, node.clock())
    session.reply_durable(rid, None)
    node.log_change(f"dropped {kind.replace('_', ' ')} {name!r}", object_fields(kind, name))
    if kind == "queue":
        node.waiters.fail(name)


@op("list")
def list_objects(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    session.reply_now(rid, node.core.list_objects(check_kind(arg(args, "kind", str))))


# ------------------------------------------------------------------------------------------------- conversations


@op("begin_dialog")
def begin_dialog(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    ep = node.core.begin_dialog(
        from_service=arg(args, "from_service", str),
        to_service=arg(args, "to_service", str),
        contract=arg(args, "contract", str, "DEFAULT"),
        broker_instance=arg(args, "broker_instance", (str, type(None)), None),
        lifetime=number(args, "lifetime", None),
        encryption=arg(args, "encryption", bool, False),
        related_group=arg(args, "related_group", (str, type(None)), None),
        now=node.clock(),
    )
    session.reply_durable(rid, {"handle": ep.handle, "conversation_id": ep.conversation_id, "group_id": ep.group_id})


@op("send")
def send(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    handle = arg(args, "handle", str)
    if "bodies" in args:  # one message type for the whole batch, no trace context: no list per message
        count = node.core.send_bodies(handle, arg(args, "type", str), arg(args, "bodies", list), node.clock())
        node.counters.sent += count
        session.reply_durable(rid, count)
        return
    messages = arg(args, "messages", list)
    count = node.core.send(handle, messages, node.clock())
    node.counters.sent += count
    session.reply_durable(rid, count)
    if len(messages[0]) > 2 and tracing.recording():  # a batch with trace context: the core made it all triples
        ep = node.core.endpoint(handle)
        tracing.node_spans(
            "send",
            ep.far_service,
            ((m[2], None) for m in messages),
            instance=node.core.broker_instance,
            conversation_id=ep.conversation_id,
        )


@op("end")
def end(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    error = arg(args, "error", list, None)
    if error is not None and len(error) != 2:
        raise InvalidArgument("argument 'error' is [code, description]")
    handle, cleanup = arg(args, "handle", str), arg(args, "cleanup", bool, False)
    dropped = node.core.end(
        handle, node.clock(), error=(error[0], error[1]) if error is not None else None, cleanup=cleanup
    )
    session.reply_durable(rid, {"dropped_delayed": dropped})
    if cleanup:  # an administrator's tool, which the far side never hears of: the log keeps it, as it keeps changes
        node.log_change(
            f"ended conversation {handle} (cleanup: nothing sent); {dropped} delayed message(s) dropped",
            {"conversation": handle},
        )


@op("begin_timer")
def begin_timer(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    node.core.begin_timer(arg(args, "handle", str), number(args, "seconds"), node.clock())  # type: ignore[arg-type]
    session.reply_durable(rid, None)
    node.waiters.wake_ticker()


@op("get_conversation")
def get_conversation(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    session.reply_now(rid, _described(node, node.core.endpoint(arg(args, "handle", str))))


@op("list_conversations")
def list_conversations(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    limit = arg(args, "limit", int, 1000)
    out: list[dict[str, Any]] = []
    for ep in node.core.endpoints.values():
        if len(out) >= limit:
            break
        out.append(_described(node, ep))
    session.reply_now(rid, out)


def _described(node: Shell, ep: Endpoint) -> dict[str, Any]:
    """A conversation as ``get_conversation`` shows it: why it waits says when the node asks again, from now."""
    described = ep.describe()
    if ep.delayed is not None:
        described["delayed"] = node.core.delayed_words(ep, node.clock())
    return described


# -------------------------------------------------------------------------------------------------------- receive


@op("receive")
def receive(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    queue = arg(args, "queue", str)
    max_messages = arg(args, "max_messages", int, 1)
    max_groups = arg(args, "max_groups", int, 1)  # > 1: several conversation groups under one lease
    facts = arg(args, "facts", str, "map")  # how the conversations' facts travel (docs/protocol.md)
    if facts not in ("map", "compact"):
        raise InvalidArgument(f"argument 'facts' must be 'map' or 'compact', got {facts!r}")
    # absent: 0 (do not wait); null: wait without limit (number() with a default would read null as absent)
    timeout = number(args, "timeout") if "timeout" in args else 0.0
    lease_seconds = number(args, "lease_seconds", None)
    if timeout is not None and timeout < 0:
        raise InvalidArgument("argument 'timeout' must be >= 0 (or null to wait without limit)")
    if lease_seconds is not None and lease_seconds <= 0:
        raise InvalidArgument("argument 'lease_seconds' must be > 0")
    node.waiters.receive(session, rid, queue, max_messages, timeout, lease_seconds, max_groups, facts == "compact")


@op("commit")
def commit(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    node.counters.committed += _end_lease(node, session, rid, arg(args, "lease", int), node.core.commit)


@op("rollback")
def rollback(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    node.counters.rolled_back += _end_lease(node, session, rid, arg(args, "lease", int), node.core.rollback)


def _end_lease(node: Shell, session: Session, rid: int, lease_id: int, end: Callable[[int, Any], Any]) -> int:
    """Commit or roll back a lease, answer once that is stored, and serve the receives waiting on its queue (a
    rollback puts messages back; a commit may free the group for the next receiver). Returns how many messages
    the lease held (for the counters)."""
    lease = node.core.leases.get(lease_id)
    session.reply_durable(rid, end(lease_id, session))
    if lease is None:
        return 0
    node.waiters.serve(lease.queue.name)
    return len(lease.messages)


@op("diagnose")
def diagnose(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    service = arg(args, "service", str)
    session.reply_now(rid, node.diagnose(service, arg(args, "broker_instance", (str, type(None)), None)))


@op("status")
def status(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
    session.reply_now(rid, node.status())
