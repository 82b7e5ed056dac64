"""The ``serve`` command: run a node in the foreground (the one command that does not talk to a node)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from .. import tracing
from ..errors import BrokerError
from .arguments import add_command
from .common import EXIT_STATUS_SERVE


def run_serve(args: argparse.Namespace) -> int | None:
    from ..node import serve
    from ..config import DEFAULT_HTTP_PORT, load_config, parse_http, parse_listen

    overrides: dict[str, Any] = {
        "data_dir": args.data_dir,
        "store": args.store,
        "durability": args.durability,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "standby": True if args.standby else None,  # not given: the file's, else False
    }
    if args.listen is not None:
        try:
            overrides["listen_host"], overrides["listen_port"] = parse_listen(args.listen)
        except BrokerError as exc:
            exc.message = f"--listen: {exc.message}"
            raise
    http_off = False
    if args.http is not None:
        try:
            host, port = parse_http(args.http)
        except BrokerError as exc:
            exc.message = f"--http: {exc.message}"
            raise
        http_off = port is None
        if not http_off:
            overrides["http_host"], overrides["http_port"], overrides["http_optional"] = host, port, False
    # serve's own default: the HTTP monitoring listener on, on its port, and optional (taken: a warning, so a second
    # node on the machine starts); the file or --http may move it (then it is required) or stop it
    config = load_config(
        Path(args.config) if args.config is not None else None,
        overrides,
        {"http_port": DEFAULT_HTTP_PORT, "http_optional": True},
    )
    if http_off:  # an override of None means "not given", so "off" is applied here, over the file too
        config = dataclasses.replace(config, http_port=None)
    tracing.export_from_env()  # AIOBROKER_OTEL_SPANS_FILE: the node's spans as JSON lines (the otel extra)
    return serve.run(config)


def add_serve(commands: Any) -> None:
    p = add_command(
        commands,
        "serve",
        "run a node in the foreground until SIGINT or SIGTERM",
        [
            "aiobroker serve",
            "aiobroker serve --listen 0.0.0.0:4022 --data-dir /var/lib/aiobroker --durability full",
            "aiobroker serve --config aiobroker.toml",
            "aiobroker serve --log-format json 2>> aiobroker.log",
            "aiobroker serve --standby --listen 127.0.0.1:4023   # on the data directory of a running node",
        ],
        details="Flags override the config file, which overrides the built-in defaults.",
        exit_status=EXIT_STATUS_SERVE,
    )
    p.add_argument("--config", metavar="FILE", help="a TOML config file (see aiobroker.config)")
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:4022; port 0 picks one)",
    )
    p.add_argument(
        "--http",
        metavar="HOST:PORT|off",
        help="the HTTP monitoring listener: /healthz, /readyz, /metrics, /api (default 127.0.0.1:4080; port 0 picks"
        " one; off: none)",
    )
    p.add_argument(
        "--data-dir", metavar="DIR", help="where the sqlite store keeps its files (default ./aiobroker-data)"
    )
    p.add_argument(
        "--store",
        metavar="sqlite|memory|postgresql://USER@HOST/DB",
        help="sqlite (durable, in --data-dir; default sqlite), memory (keeps nothing), or a PostgreSQL database's URL"
        " (durable, shared with a standby; see docs/stores.md), or a plug-in store's name",
    )
    p.add_argument(
        "--durability",
        choices=("normal", "full"),
        help="normal (survives a process crash) or full (fsync per commit; survives power loss); default normal",
    )
    p.add_argument(
        "--standby",
        action="store_true",
        help="wait for the store for as long as another node holds it, listening meanwhile and sending clients and"
        " peers to that node; take over when it goes ([node] standby; docs/high-availability.md)",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="default info")
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text (a line of words, the default) or json (one object a line on stderr: time, level, logger,"
        " message, and node, conversation, service, queue, peer, peer_instance, resolver, exception where they apply)",
    )
    p.set_defaults(run=run_serve)
