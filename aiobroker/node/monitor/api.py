"""``/api/...``: the node's state as JSON, the same that the wire's ``status``, ``diagnose``, ``list``,
``get_conversation`` and ``list_conversations`` give, plus what a console needs besides: conversations a page at a
time with filters, queues with their oldest message's age, links, and dynamic routing's questions in flight.

=========================================  ===========================================  ============================
path                                       answer                                       rule (the wire's op)
=========================================  ===========================================  ============================
GET /api                                   the endpoints, and the node's identity       status
GET /api/status                            as ``aiobroker status --json``               status
GET /api/queues                            each queue: depth, locked, oldest age        status
GET /api/diagnose/{service}                as ``aiobroker diagnose --json``             diagnose
GET /api/list/{kind}                       as ``aiobroker list KIND --json``            list
GET /api/conversations                     a page: ``conversations``, ``next``,         list_conversations
  ?service=&state=&delayed=&after=&limit=  ``total``
GET /api/conversations/{handle}            one conversation                             get_conversation
GET /api/links                             each link: state, errors, next attempt       status
GET /api/resolving                         questions in flight, per-resolver counts     status
=========================================  ===========================================  ============================

A service name has slashes: give it as it is (``/api/diagnose///shop/Orders``) or percent-encoded. Errors answer
``{"error": code, "message": words}``: 400 for a bad argument, 404 for an unknown object, 401/403 for a refusal
(:mod:`aiobroker.node.monitor.access`), 503 while the node cannot serve (starting, opening its store, stopping).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...core.catalog import check_kind
from ...errors import BrokerError, InvalidArgument, UnknownObject
from . import readings
from .access import Denied, check
from .host import Monitored

Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(content, default=str, separators=(",", ":")).encode()
    return Response(body, status, headers, media_type="application/json")


def error_response(status: int, code: str, message: str) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="aiobroker"'} if status == 401 else None
    return json_response({"error": code, "message": message}, status, headers)


class Api:
    def __init__(self, node: Monitored) -> None:
        self.node = node

    def routes(self) -> list[Route]:
        return [
            Route("/api", self._wrap(self.index, "status")),
            Route("/api/status", self._wrap(self.status, "status")),
            Route("/api/queues", self._wrap(self.queues, "status")),
            Route("/api/diagnose/{service:path}", self._wrap(self.diagnose, "diagnose")),
            Route("/api/list/{kind}", self._wrap(self.list_objects, "list")),
            Route("/api/conversations", self._wrap(self.conversations, "list_conversations")),
            Route("/api/conversations/{handle}", self._wrap(self.conversation, "get_conversation")),
            Route("/api/links", self._wrap(self.links, "status")),
            Route("/api/resolving", self._wrap(self.resolving, "status")),
        ]

    def _wrap(self, handler: Callable[[Request], Any], op: str) -> Endpoint:
        """Check readiness and rights, run ``handler`` (synchronous, on the event loop: it reads the core), and
        answer its result as JSON; a BrokerError becomes its status and words."""

        async def endpoint(request: Request) -> Response:
            reason = self.node.not_ready()
            if reason is not None:
                return error_response(503, "not_ready", f"the node is not ready: {reason}")
            try:
                check(self.node.core, request, op, dict(request.path_params))
                return json_response(handler(request))
            except Denied as exc:
                return error_response(exc.status, "not_authorized", exc.message)
            except UnknownObject as exc:
                return error_response(404, exc.code, exc.message)
            except BrokerError as exc:
                return error_response(400, exc.code, exc.message)

        endpoint.__name__ = handler.__name__
        return endpoint

    # --------------------------------------------------------------------------------------------- endpoints

    def index(self, request: Request) -> dict[str, Any]:
        core = self.node.core
        return {
            "broker_instance": core.broker_instance,
            "listen": self.node.url,
            "authorization": core.authorization,
            "endpoints": [
                "/healthz", "/readyz", "/metrics", "/api/status", "/api/queues", "/api/diagnose/{service}",
                "/api/list/{kind}", "/api/conversations", "/api/conversations/{handle}", "/api/links", "/api/resolving",
            ],
        }  # fmt: skip

    def status(self, request: Request) -> dict[str, Any]:
        return self.node.status()

    def queues(self, request: Request) -> list[dict[str, Any]]:
        node = self.node
        return [
            {**q.statistics, "oldest_age_seconds": round(q.oldest_age, 3)} for q in readings.queues(node.core, node.clock())
        ]

    def diagnose(self, request: Request) -> dict[str, Any]:
        service = request.path_params["service"]
        return self.node.diagnose(service, request.query_params.get("broker_instance") or None)

    def list_objects(self, request: Request) -> list[dict[str, Any]]:
        return self.node.core.list_objects(check_kind(request.path_params["kind"]))

    def conversations(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        unknown = sorted(set(q) - {"service", "state", "delayed", "after", "limit"})
        if unknown:
            raise InvalidArgument(
                f"unknown parameter {unknown[0]!r}; this endpoint takes service, state, delayed, after and limit"
            )
        filters = readings.Filters(service=q.get("service") or None, state=q.get("state") or None,
                                   delayed=_flag(q.get("delayed"), "delayed"))  # fmt: skip
        limit = _int(q.get("limit"), "limit", readings.PAGE_SIZE)
        return readings.conversation_page(self.node.core, filters, q.get("after") or None, limit, self.node.clock())

    def conversation(self, request: Request) -> dict[str, Any]:
        node = self.node
        return readings.describe(node.core, node.core.endpoint(request.path_params["handle"]), node.clock())

    def links(self, request: Request) -> dict[str, Any]:
        node = self.node
        c = node.counters
        out = []
        for link in readings.link_details(node.core):
            address = link["address"]
            out.append({**link, "failures": c.link_failures.get(address, 0),
                        "last_ack_seconds": c.link_ack_seconds.get(address)})  # fmt: skip
        return {"links": out, "inbound_peers": c.inbound_peers, "forwarding": node.links.statistics()}

    def resolving(self, request: Request) -> dict[str, Any]:
        node = self.node
        core = node.core
        return {
            "resolver": readings.resolver_words(core),
            "in_flight": readings.resolving(core, node.clock()),
            "resolvers": {
                name: {"requests": c.requests, "answers": c.answers, "failures": dict(c.failures)}
                for name, c in node.counters.resolvers.items()
            },
            "delayed": [
                {"service": service, "reason": kind, "messages": messages, "conversations": conversations}
                for (service, kind), (messages, conversations) in readings.delayed(core).items()
            ],
        }


def _flag(text: str | None, name: str) -> bool | None:
    if text is None or text == "":
        return None
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise InvalidArgument(f"{name} must be true or false; got {text!r}")


def _int(text: str | None, name: str, default: int) -> int:
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{name} must be a whole number; got {text!r}") from None
