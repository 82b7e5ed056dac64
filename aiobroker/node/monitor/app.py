"""The HTTP application: the probes, ``/metrics`` and the API's routes, as one Starlette app.

``/healthz`` answers 200 while the process serves HTTP at all (a liveness probe: restart the process if it stops
answering). ``/readyz`` answers 200 when the node serves clients (its store open, its broker port listening, not
stopping), else 503 with the reason (a readiness probe: send no traffic meanwhile). Both are open to anyone,
authorization or not, as probes and load balancers carry no token. ``/metrics`` is open unless authorization is on
and ``[http] metrics_open`` is false; then it needs an identity like ``status`` does.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import console, console_api
from .access import Denied, check
from .actions import Actions, Operated
from .api import Api, error_response, json_response
from .metrics import exposition, metrics_registry

#: what Prometheus' text format is served as
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def build_app(node: Operated) -> Starlette:
    registry = metrics_registry(node)

    async def healthz(request: Request) -> Response:
        return json_response({"status": "serving"})

    async def readyz(request: Request) -> Response:
        reason = node.not_ready()
        if reason is None:
            return json_response({"ready": True})
        return json_response({"ready": False, "reason": reason}, 503)

    async def metrics(request: Request) -> Response:
        if node.core is not None and node.core.authorization and not node.config.http_metrics_open:
            try:
                check(node.core, request, "status")
            except Denied as exc:
                return error_response(exc.status, "not_authorized", f"{exc.message} ([http] metrics_open = true"
                                      " opens /metrics to anyone)")
        return Response(exposition(registry), media_type=METRICS_TYPE)

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *Api(node).routes(),
        *Actions(node).routes(),  # the operator's actions (POST), the web console's reads and its page at /
        *console_api.routes(node),
        *console.routes(),
    ]
    return Starlette(routes=routes)
