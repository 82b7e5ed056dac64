"""Who may do what: the rule each client operation checks when the node's ``[security] authorization`` is on.

A client's identity is settled at its handshake (a token, a TLS client certificate, else ``public``; see
:func:`aiobroker.node.sessions.authenticate`). With authorization on, the node serves a session through
:func:`guarded_ops`: each operation's rule runs first and raises :class:`~aiobroker.errors.NotAuthorized`, naming
the identity, the right and the object, before the operation touches anything, so a refused request changes
nothing. With authorization off the node serves the plain :data:`aiobroker.node.handlers.OPS`, and this module costs
nothing.

=====================================================  ====================================================
op                                                     rule
=====================================================  ====================================================
create, alter_queue, alter_route, drop                 ``admin``
begin_dialog                                           ``send`` on ``to_service``
send, end, begin_timer                                 ``send`` on the conversation's far service, or
                                                       ``receive`` on its own service's queue (the reader
                                                       replying)
receive                                                ``receive`` on the queue
commit, rollback                                       none here: a lease is its receiver's alone
list, list_conversations, get_conversation, status,    an identity other than ``public``
diagnose
anything else                                          ``admin`` (an operation without a rule is not open)
=====================================================  ====================================================

Rights are looked up in the catalog on every request, so creating, changing or dropping an identity takes effect
at once, for sessions already connected too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.identities import PUBLIC
from ..errors import NotAuthorized
from .handlers import OPS, Handler, arg
from .sessions import Session
from .shell import Shell

if TYPE_CHECKING:
    from ..core.broker import BrokerCore

#: checks one request: (core, the session's identity, the request's args); raises NotAuthorized
Rule = Callable[["BrokerCore", str, dict[str, Any]], None]


def _refuse(identity: str, right: str, action: str, obj: str) -> NotAuthorized:
    if identity == PUBLIC:
        how = (
            "this client did not authenticate (it is 'public'); connect with the token of an identity that has the"
            " right (aiobroker.connect(url, token=...), --token or $AIOBROKER_TOKEN), or a TLS client certificate"
            " registered as an identity"
        )
    else:
        how = f"ask an administrator to grant it to identity {identity!r}"
    return NotAuthorized(f"identity {identity!r} may not {action}: it needs the {right} right on {obj}; {how}")


def _admin(action: Callable[[dict[str, Any]], str]) -> Rule:
    def rule(core: BrokerCore, identity: str, args: dict[str, Any]) -> None:
        if not core.catalog.may(identity, "admin", ""):
            raise _refuse(identity, "admin", action(args), "this node")

    return rule


def _object_words(args: dict[str, Any]) -> str:
    kind = args.get("kind")
    kind = kind.replace("_", " ") if isinstance(kind, str) else "an object"
    definition = args.get("definition")
    name = definition.get("name") if isinstance(definition, dict) else args.get("name")
    return f"{kind} {name!r}" if isinstance(name, str) else kind


def _begin_dialog(core: BrokerCore, identity: str, args: dict[str, Any]) -> None:
    to_service = arg(args, "to_service", str)
    if not core.catalog.may(identity, "send", to_service):
        raise _refuse(identity, "send", f"begin a conversation with service {to_service!r}", f"service {to_service!r}")


def _on_conversation(verb: str) -> Rule:
    def rule(core: BrokerCore, identity: str, args: dict[str, Any]) -> None:
        ep = core.endpoint(arg(args, "handle", str))
        catalog = core.catalog
        if catalog.may(identity, "send", ep.far_service):
            return
        service = catalog.services.get(ep.service)
        if service is not None and catalog.may(identity, "receive", service.queue):
            return
        own = f", or the receive right on queue {service.queue!r} (its own service's)" if service is not None else ""
        raise _refuse(
            identity,
            "send",
            f"{verb} conversation {ep.handle} ({ep.service!r} with {ep.far_service!r})",
            f"service {ep.far_service!r}{own}",
        )

    return rule


def _receive(core: BrokerCore, identity: str, args: dict[str, Any]) -> None:
    queue = arg(args, "queue", str)
    if not core.catalog.may(identity, "receive", queue):
        raise _refuse(identity, "receive", f"receive from queue {queue!r}", f"queue {queue!r}")


def _anyone(core: BrokerCore, identity: str, args: dict[str, Any]) -> None:
    """Lease owners are checked by the core (commit and rollback act on the caller's own leases only)."""


def _authenticated(what: str) -> Rule:
    def rule(core: BrokerCore, identity: str, args: dict[str, Any]) -> None:
        if identity == PUBLIC or identity not in core.catalog.identities:
            raise NotAuthorized(
                f"identity {identity!r} may not {what}: reading the node's state needs an authenticated identity"
                " (any but 'public'); connect with an identity's token (aiobroker.connect(url, token=...), --token"
                " or $AIOBROKER_TOKEN) or its TLS client certificate"
            )

    return rule


RULES: dict[str, Rule] = {
    "create": _admin(lambda a: f"create {_object_words(a)}"),
    "alter_queue": _admin(lambda a: f"alter queue {a.get('name')!r}"),
    "alter_route": _admin(lambda a: f"alter route {a.get('name')!r}"),
    "drop": _admin(lambda a: f"drop {_object_words(a)}"),
    "begin_dialog": _begin_dialog,
    "send": _on_conversation("send on"),
    "end": _on_conversation("end"),
    "begin_timer": _on_conversation("set a timer on"),
    "receive": _receive,
    "commit": _anyone,
    "rollback": _anyone,
    "list": _authenticated("list objects"),
    "list_conversations": _authenticated("list conversations"),
    "get_conversation": _authenticated("read a conversation"),
    "status": _authenticated("read the node's status"),
    "diagnose": _authenticated("diagnose routing"),
}


def rule_for(op: str) -> Rule:
    """The rule of ``op``; an operation without one needs ``admin``."""
    return RULES.get(op) or _admin(lambda a: f"use operation {op!r}")


def _guard(rule: Rule, handler: Handler) -> Handler:
    def guarded(node: Shell, session: Session, rid: int, args: dict[str, Any]) -> None:
        rule(node.core, session.identity, args)
        handler(node, session, rid, args)

    guarded.__name__ = guarded.__qualname__ = f"authorized_{handler.__name__}"
    return guarded


_GUARDED: dict[str, Handler] = {}


def guarded_ops() -> dict[str, Handler]:
    """:data:`aiobroker.node.handlers.OPS` with each handler's rule checked first (built once, on first use)."""
    if len(_GUARDED) != len(OPS):
        _GUARDED.clear()
        _GUARDED.update({name: _guard(rule_for(name), handler) for name, handler in OPS.items()})
    return _GUARDED
