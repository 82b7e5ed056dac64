"""What the web console reads that ``/api`` does not give: how a page of conversations' unacknowledged messages
fare on their links, so that a conversation whose link is retrying shows why and when the node tries again, as a
DELAYED one shows its resolver's last answer and next attempt.

==============================================  ========================================================  ==========
path                                            answer                                                    rule
==============================================  ========================================================  ==========
GET /api/console/sending?handle=H&handle=...    ``{H: {"state": words, "address", "attempts",              status
                                                "last_error", "next_attempt_in"} or null}``
==============================================  ========================================================  ==========

``state`` is the words ``status`` shows for the conversation in the transmission queue (``retrying tcp://...:
connection refused (attempt 3)``); null when it has nothing waiting to be acknowledged. At most
:data:`MAX_HANDLES` a request (a page's worth): it reads only the conversations asked for. Which link a
conversation is on is read from the transmission queue's ``route_of`` (no public method of the core gives it), as
:mod:`aiobroker.node.monitor.readings` reads what it needs of the core.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...core.broker import BrokerCore
from ...errors import InvalidArgument
from .access import Denied, check
from .api import error_response, json_response
from .host import Monitored

MAX_HANDLES = 100


def sending(core: BrokerCore, handles: list[str], now: float) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {}
    tx = core.tx
    for handle in handles:
        words = core.link_status(handle, now)
        if words is None:
            out[handle] = None
            continue
        address = tx.route_of.get(handle)
        link = tx.links.get(address) if address is not None else None
        out[handle] = {
            "state": words,
            "address": address,
            "attempts": link.attempts if link is not None else 0,
            "last_error": link.last_error if link is not None else None,
            "next_attempt_in": (
                round(max(0.0, link.next_attempt - now), 3)
                if link is not None and link.next_attempt is not None and not link.connected
                else None
            ),
        }
    return out


def routes(node: Monitored) -> list[Route]:
    async def sending_endpoint(request: Request) -> Response:
        reason = node.not_ready()
        if reason is not None:
            return error_response(503, "not_ready", f"the node is not ready: {reason}")
        try:
            check(node.core, request, "status")
            handles = request.query_params.getlist("handle")
            if not 1 <= len(handles) <= MAX_HANDLES:
                raise InvalidArgument(f"give from 1 to {MAX_HANDLES} conversations as handle=H; got {len(handles)}")
            return json_response(sending(node.core, handles, node.clock()))
        except Denied as exc:
            return error_response(exc.status, "not_authorized", exc.message)
        except InvalidArgument as exc:
            return error_response(400, exc.code, exc.message)

    return [Route("/api/console/sending", sending_endpoint)]
