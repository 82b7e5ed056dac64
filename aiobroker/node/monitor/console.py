"""The web console: ``/`` serves one page (``static/index.html``) and ``/console/...`` its script and style sheet.

The files ship inside the package (no CDN, no build step) and are read once, when the app is built. The page holds
no data of the node's: it reads ``/api/...`` and posts ``/api/actions/...`` (:mod:`aiobroker.node.monitor.actions`)
with the token the user gives it, so serving the page itself needs no rights, authorization or not. Its headers
keep it to itself: scripts, styles and requests from this origin only (a Content-Security-Policy), and never shown
inside another site's frame, where a click on an action could be stolen.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .api import error_response

#: the files under static/ the page uses, and what each is served as
ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:;"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # the page is small and changes with the installed version: always ask, so an upgrade is seen at once
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def routes() -> list[Route]:
    page = _read("index.html")
    assets = {name: (_read(name), media) for name, media in ASSETS.items()}

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            return error_response(404, "unknown_object", f"no such file of the console: {request.url.path}")
        body, media = found
        return Response(body, media_type=media, headers=HEADERS)

    return [Route("/", index), Route("/console/{name}", asset)]
