"""The operator's actions, over HTTP: what the web console's buttons do (``POST /api/actions/...``, JSON in, JSON out).

==================================  =================================  ==============================================
path                                body                               does (under the wire's rule for it)
==================================  =================================  ==============================================
GET  /api/actions                   (none)                             who the request is, and whether it is admin
POST /api/actions/enable-queue      ``{"queue": NAME}``                ``alter_queue`` status on (admin)
POST /api/actions/ask-again         ``{"service": NAME}``              the next dynamic routing request now (admin)
POST /api/actions/end-conversation  ``{"handle": H, "cleanup": B}``    ``end`` (``send`` on the far service, or
                                                                       ``receive`` on its own queue)
POST /api/actions/drop-route        ``{"route": NAME}``                ``drop`` a route (admin)
==================================  =================================  ==============================================

Each action that the wire has runs the wire's own handler (:data:`aiobroker.node.handlers.OPS`), after the wire's
rule for it, and is answered once what it changed is stored, as a client's request is: the console can do nothing a
client with the same token could not. "Ask again" has no wire operation; like every operation without a rule, it
needs ``admin``. An answer is ``{"ok": true, "message": words, "result": ...}``, or ``{"error": code, "message":
words}`` with the status :mod:`aiobroker.node.monitor.api` uses (400, 401/403, 404, 409, 503).

Cross-site requests: a page on another site can make a browser POST here (a form), with the browser's own
credentials if it had any. Two checks stop that: the body must be sent as ``Content-Type: application/json``, which
a form cannot do and a script on another origin can do only after a CORS preflight that this listener never grants;
and a request whose ``Origin`` names another host than the one it was sent to is refused. Bearer tokens are not
sent by a browser on its own, which is the third reason a forged request carries no rights.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...core.dispatcher import BINDING, ROUTE
from ...errors import BrokerError, InvalidArgument, ObjectInUse, UnknownObject
from ..handlers import OPS
from ..sessions import Session
from ..shell import Shell
from .access import Denied, check
from .api import error_response, json_response
from .host import Monitored

log = logging.getLogger("aiobroker.http")

#: seconds an action waits for what it changed to be stored before it answers 503 (a store that stopped writing)
STORED_WITHIN = 30.0
JSON = "application/json"


class Operated(Monitored, Shell, Protocol):
    """What an action uses of the node: what the monitor reads, what a wire handler uses, and the step that
    follows every call into the core (store what changed, do what the core asked: a resolver's request)."""

    def after_core(self) -> None: ...


class Conflict(BrokerError):
    """The action makes no sense in the object's state (409): nothing waits on the service, say."""

    code = "conflict"


class _Reply(Session):
    """One action's answer, taken the way a wire request's is: ``reply_durable`` runs once what the handler
    changed is stored. Session's connection, peer and admission ticket belong to the wire; an action has none."""

    def __init__(self, identity: str, after_commit: Callable[[Callable[[], None]], None]) -> None:
        self.identity = identity
        self._after_commit = after_commit
        self.id = 0
        self.peer = "http"
        self.done = anyio.Event()
        self.result: Any = None

    def reply_now(self, rid: int, result: Any) -> None:
        self.result = result
        self.done.set()

    def reply_durable(self, rid: int, result: Any) -> None:
        self._after_commit(lambda: self.reply_now(rid, result))


class Actions:
    def __init__(self, node: Operated) -> None:
        self.node = node

    def routes(self) -> list[Route]:
        return [
            Route("/api/actions", self.whoami, methods=["GET"]),
            Route("/api/actions/enable-queue", self._post(self.enable_queue), methods=["POST"]),
            Route("/api/actions/ask-again", self._post(self.ask_again), methods=["POST"]),
            Route("/api/actions/end-conversation", self._post(self.end_conversation), methods=["POST"]),
            Route("/api/actions/drop-route", self._post(self.drop_route), methods=["POST"]),
        ]

    async def whoami(self, request: Request) -> Response:
        """Who the request is and whether it is admin, so that the console can say which buttons will work (the
        node decides on each click all the same)."""
        node = self.node
        if node.not_ready() is not None:
            return error_response(503, "not_ready", f"the node is not ready: {node.not_ready()}")
        try:
            identity = check(node.core, request, "status")
        except Denied as exc:
            return error_response(exc.status, "not_authorized", exc.message)
        core = node.core
        admin = not core.authorization or core.catalog.may(identity, "admin", "")
        return json_response({"identity": identity, "authorization": core.authorization, "admin": admin})

    def _post(
        self, action: Callable[[Request, dict[str, Any]], Awaitable[tuple[str, Any]]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Check where the request comes from, readiness and the body, run ``action`` (which checks the rights)
        → (words, result) and answer it as JSON; a refusal or a BrokerError becomes its status and words."""

        async def endpoint(request: Request) -> Response:
            refused = _cross_site(request)
            if refused is not None:
                return refused
            node = self.node
            reason = node.not_ready()
            if reason is not None:
                return error_response(503, "not_ready", f"the node is not ready: {reason}")
            try:
                message, result = await action(request, await _body(request))
            except Denied as exc:
                return error_response(exc.status, "not_authorized", exc.message)
            except UnknownObject as exc:
                return error_response(404, exc.code, exc.message)
            except (Conflict, ObjectInUse) as exc:
                return error_response(409, exc.code, exc.message)
            except TimeoutError:
                return error_response(503, "not_stored", f"the change was not stored within {STORED_WITHIN:g}s;"
                                      " the node's store may have failed: look at its log and /readyz")  # fmt: skip
            except BrokerError as exc:
                return error_response(400, exc.code, exc.message)
            # who did what from the console, beside the change the wire's handler logs itself
            log.info("web console, identity %r: %s", getattr(request.state, "identity", "?"), message)
            return json_response({"ok": True, "message": message, "result": result})

        endpoint.__name__ = action.__name__
        return endpoint

    async def _wire(self, request: Request, op: str, args: dict[str, Any]) -> Any:
        """Run the wire's handler for ``op`` as a client's request runs, after the wire's rule for it, and wait
        until what it changed is stored."""
        node = self.node
        identity = request.state.identity = check(node.core, request, op, args)
        reply = _Reply(identity, node.writer.after_commit)
        try:
            OPS[op](node, reply, 0, args)
        finally:
            node.after_core()  # as after every client request: store what changed, do what the core asked
        with anyio.fail_after(STORED_WITHIN):
            await reply.done.wait()
        return reply.result

    # ---------------------------------------------------------------------------------------------- the actions

    async def enable_queue(self, request: Request, body: dict[str, Any]) -> tuple[str, Any]:
        name = _text(body, "queue")
        new = await self._wire(request, "alter_queue", {"name": name, "changes": {"status": "on"}})
        return f"queue {name!r} is enabled: receivers get its messages again", new

    async def end_conversation(self, request: Request, body: dict[str, Any]) -> tuple[str, Any]:
        handle = _text(body, "handle")
        cleanup = body.get("cleanup", False)
        if not isinstance(cleanup, bool):
            raise InvalidArgument(f"'cleanup' must be true or false; got {cleanup!r}")
        result = await self._wire(request, "end", {"handle": handle, "cleanup": cleanup})
        if cleanup:
            return f"conversation {handle} is removed from this node (the far side was not told)", result
        return f"conversation {handle} is ended; the far side is told", result

    async def drop_route(self, request: Request, body: dict[str, Any]) -> tuple[str, Any]:
        name = _text(body, "route")
        await self._wire(request, "drop", {"kind": "route", "name": name})
        return f"route {name!r} is dropped; the conversations that used it are routed again", None

    async def ask_again(self, request: Request, body: dict[str, Any]) -> tuple[str, Any]:
        """The next dynamic routing request for a service now, not at its retry time (the core's
        :meth:`~aiobroker.core.dynamic.DynamicRouting.ask_again`)."""
        service = _text(body, "service")
        node = self.node
        core = node.core
        # no wire operation: admin, as any operation without a rule of its own
        request.state.identity = check(core, request, "ask_again", {"service": service})
        waiting = node.diagnose(service, None)["delayed_conversations"]
        if not waiting:
            raise Conflict(f"no conversation waits on service {service!r}; there is nothing to ask for")
        dispatcher = core.dispatcher
        for kind in (ROUTE, BINDING):
            asking = dispatcher.in_flight.get((kind, service))
            if asking is not None:
                raise Conflict(f"a request for service {service!r} is in flight already ({asking.via}, asked"
                               f" {node.clock() - asking.started_at:.1f}s ago); its answer is awaited")  # fmt: skip
        hurried, moved = core.ask_again(service, node.clock())
        node.after_core()  # the resolver's request goes out (or the BCN conversation's message is stored)
        asked = [kind for kind in (ROUTE, BINDING) if (kind, service) in dispatcher.in_flight]
        if asked:
            message = f"asked {core.asks} again about service {service!r}"
        elif moved:
            message = f"{moved} message(s) to service {service!r} moved on without asking (a route is known now)"
        else:
            after = node.diagnose(service, None)
            message = f"nothing to ask about service {service!r}: {after['delayed_reason'] or after['decision']}"
        return message, {"hurried": hurried, "asked": asked, "moved": moved}


def _cross_site(request: Request) -> Response | None:
    """A refusal for a request another site's page could have made the browser send, else None."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != JSON:
        return error_response(415, "unsupported_media_type", f"an action's body must be sent as Content-Type: {JSON}"
                              f" (got {media or 'none'}); see GET /api/actions")  # fmt: skip
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return error_response(403, "cross_origin", f"an action from a page of {origin} is refused: actions are taken"
                              " from the console this node serves")  # fmt: skip
    return None


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument('the body is not JSON; send an object such as {"queue": "NAME"}') from None
    if not isinstance(body, dict):
        raise InvalidArgument(f"the body must be a JSON object; got {type(body).__name__}")
    return body


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"the body needs {name!r}, a non-empty string")
    return value
