"""A small HTTP registry for the http resolver's tests, run as its own process so the resolver talks to a real
server over real sockets::

    python tests/http_registry.py --port P --routes FILE [--log FILE] [--host ADDRESS]

It listens on ``ADDRESS:P``; ``--host`` defaults to 127.0.0.1 (across hosts, a test runs it inside a network
namespace, ``ip netns exec NS python ...``, on that namespace's address).

Every request re-reads ``FILE`` (JSON), so a test changes the answer while the server runs by rewriting it
(atomically: write a temporary file, then ``os.replace``). The file maps service names to what to answer::

    {"services": {"//shop/Orders": {
        "status": 200,                 # default 200
        "body": {...},                 # any JSON value, sent as JSON
        "raw": "not json {",           # or: these exact characters (UTF-8), for garbage bodies
        "raw_hex": "fffe00",           # or: these bytes, for bodies that are not even text
        "raw_size": 5000,              # or: this many bytes of "x", for answers over a size limit
        "headers": {"Cache-Control": "max-age=30"},
        "delay": 3.0,                  # seconds to wait before answering (read time-outs)
        "trickle": 0.3,                # seconds between the body's bytes, sent one at a time (overall bounds)
        "hang_up": true                # close the connection without answering
    }},
     "bindings": {"//shop/Orders": {   # optional: answers to binding requests, the same keys as above
        "body": {"certificate": "-----BEGIN CERTIFICATE-----\\n...", "anonymous": false, "lifetime": 60}
    }}}

A route question sent with ``Aiobroker-Ask: route, binding`` (the http resolver asking both questions in one round
trip) gets the service's 200 body with a ``binding`` member added: the ``body`` of the service's entry in
``bindings`` when that entry is a plain 200 answer, else null (no binding). ``"route_only": true`` at the top of
the file makes the registry an older one that ignores the header and answers the route alone.

Both ``/v1/services/<quoted name>`` (the aiobroker format's path in these tests) and ``/v1/health/service/<name>``
(Consul's) look the name up in the same table; which body a test puts there decides the format. Binding requests,
``/v1/services/<quoted name>/binding`` (the http resolver's default binding URL for the first path) and
``/v1/bindings/<quoted name>`` (for a test that sets its own ``binding_url``), look the name up in ``bindings``. An
unknown name is a plain 404. ``--log`` appends one JSON line per request (path, headers, and ``t``: when it arrived,
``time.monotonic()``) so a test can check what was sent, and when.

SIGTERM stops it: the handler raises SystemExit in the main thread, out of ``serve_forever``; answers still
sleeping in their threads are daemon threads and are not waited for.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

PREFIXES = ("/v1/services/", "/v1/health/service/")
BINDING_PREFIX = "/v1/bindings/"
BINDING_SUFFIX = "/binding"  # after /v1/services/<quoted name>: the quoted name has no "/", so this is unambiguous


ASK_HEADER = "Aiobroker-Ask"


def with_binding(spec: dict[str, Any], binding: dict[str, Any] | None) -> dict[str, Any]:
    """A route answer's spec with the binding's body as its ``binding`` member (a plain 200 object answer only)."""
    body = spec.get("body")
    if int(spec.get("status", 200)) != 200 or not isinstance(body, dict) or "raw" in spec:
        return spec
    plain = binding is not None and int(binding.get("status", 200)) == 200 and isinstance(binding.get("body"), dict)
    return {**spec, "body": {**body, "binding": binding["body"] if plain and binding else None}}


def lookup(path: str) -> tuple[str, str | None]:
    """Which table of the routes file a request path asks (``services`` or ``bindings``), and the name in it."""
    if path.startswith(BINDING_PREFIX):
        return "bindings", unquote(path[len(BINDING_PREFIX):])
    if path.startswith(PREFIXES[0]) and path.endswith(BINDING_SUFFIX):
        return "bindings", unquote(path[len(PREFIXES[0]) : -len(BINDING_SUFFIX)])
    return "services", next((unquote(path[len(p):]) for p in PREFIXES if path.startswith(p)), None)


class RegistryHandler(BaseHTTPRequestHandler):
    server: Registry
    protocol_version = "HTTP/1.1"  # keep-alive, as real registries do: the resolver's pool reuses connections

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = urlsplit(self.path).path
        self.server.log_request_line(self.path, dict(self.headers.items()))
        table, name = lookup(path)
        try:
            data = json.loads(self.server.routes_file.read_text())
            answers = data["services"] if table == "services" else data.get("bindings", {})
            spec: dict[str, Any] | None = answers.get(name) if name is not None else None
            both = {q.strip() for q in self.headers.get(ASK_HEADER, "").split(",")} >= {"route", "binding"}
            if table == "services" and spec is not None and both and not data.get("route_only"):
                spec = with_binding(spec, data.get("bindings", {}).get(name))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self._send(500, f"the routes file is unreadable: {exc}".encode(), {"Content-Type": "text/plain"})
            return
        if spec is None:
            error = b'{"error": "no such service"}' if table == "services" else b'{"error": "no such binding"}'
            self._send(404, error, {"Content-Type": "application/json"})
            return
        if spec.get("delay"):
            time.sleep(float(spec["delay"]))
        if spec.get("hang_up"):
            self.close_connection = True
            return
        if "raw" in spec:
            body = str(spec["raw"]).encode()
        elif "raw_hex" in spec:
            body = bytes.fromhex(spec["raw_hex"])
        elif "raw_size" in spec:
            body = b"x" * int(spec["raw_size"])
        else:
            body = json.dumps(spec.get("body")).encode()
        self._send(int(spec.get("status", 200)), body,
                   {"Content-Type": "application/json", **spec.get("headers", {})}, float(spec.get("trickle", 0)))

    def _send(self, status: int, body: bytes, headers: dict[str, str], trickle: float = 0.0) -> None:
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if trickle:
                for i in range(len(body)):
                    self.wfile.write(body[i : i + 1])
                    time.sleep(trickle)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (its read time-out): nothing to answer to

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the --log file says what was asked; stderr stays quiet


class Registry(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, port: int, routes_file: Path, log_file: Path | None, host: str = "127.0.0.1") -> None:
        self.routes_file = routes_file
        self.log_file = log_file
        self._log_lock = threading.Lock()
        super().__init__((host, port), RegistryHandler)

    def log_request_line(self, path: str, headers: dict[str, str]) -> None:
        if self.log_file is None:
            return
        with self._log_lock, self.log_file.open("a") as f:
            f.write(json.dumps({"path": path, "headers": headers, "t": time.monotonic()}) + "\n")

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--routes", type=Path, required=True)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    with Registry(args.port, args.routes, args.log, args.host) as server:
        try:
            server.serve_forever(poll_interval=0.1)
        except SystemExit:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
