"""The ``http`` resolver's settings: reading its ``[resolver]`` table (seconds, URL templates, headers, counts;
``http.py`` documents the options and builds the resolver from them), and the HTTP clients they configure."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from urllib.parse import urlsplit, urlunsplit

import httpx

from aiobroker.resolver import ConfigError

from .http_lean import LeanClient, lean_headers
from .options import max_open_questions

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


FORMATS = ("aiobroker", "consul")
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_READ_TIMEOUT = 5.0
DEFAULT_LIFETIME = 60.0
#: questions a resolver keeps open at once by default (``max_open_questions``), each on a connection of its own kept
#: alive for the next (``Clients``: a slot per question, so no pool is walked and the cost per question hardly grows
#: with their number: ~110 us with 8 or 16 open, ~130 with 64). Why 64 and not fewer: a node busy releasing what the
#: answers freed turns each answer round later, so the answers per second are the open questions over that turn.
#: Measured, the storm benchmark (1,000 services answered at once, 2 cores, registry on the same host; 3 runs each,
#: alternating; answers then settled in turns of 2 ms, since 1: node/resolving.py): SQLite 1,590-1,710 answers/s with 64 against 650-760 with 16, the user's wait 1.37-1.43 s against
#: 1.39-1.62; memory store 2,640-2,960 against 1,350-1,390, 0.99-1.06 s against 0.92-1.02. (Before a plain release
#: stopped writing a record of its own, 64 made the releases a burst that cost more than it saved.) A registry 10 ms
#: away gives 64 open at most 6,400 answers/s. Idle connections are reused last-in first-out, so a quiet node keeps
#: few of them busy and the registry closes the rest.
MAX_OPEN_QUESTIONS = 64
_OPTIONS = {"url", "binding_url", "format", "connect_timeout", "read_timeout", "default_lifetime", "headers",
            "max_open_questions", "consul_include_warning"}


def checked_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[resolver]`` table of kind ``http`` checked, as ``HttpResolver``'s keyword arguments; a ConfigError
    names what is wrong."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"[resolver] must be a table, got {type(options).__name__}")
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ConfigError(f"[resolver] unknown key(s) for kind 'http': {', '.join(unknown)} "
                          f"(allowed: {', '.join(sorted(_OPTIONS))})")
    fmt = options.get("format", "aiobroker")
    if fmt not in FORMATS:
        raise ConfigError(f"[resolver] format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    url = _config_url(options)
    binding_url: str | None = None
    if "binding_url" in options:
        if fmt == "consul":
            raise ConfigError("[resolver] binding_url is for the aiobroker format: the consul format answers routes "
                              "only")
        binding_url = _config_url(options, "binding_url")
    include_warning = options.get("consul_include_warning", True)
    if "consul_include_warning" in options:
        if fmt != "consul":
            raise ConfigError("[resolver] consul_include_warning is for the consul format (format = \"consul\"); "
                              f"this resolver's format is {fmt!r}")
        if not isinstance(include_warning, bool):
            raise ConfigError(f"[resolver] consul_include_warning must be true or false, got {include_warning!r}")
    return {
        "url": url,
        "binding_url": binding_url,
        "format": fmt,
        "connect_timeout": _config_seconds(options, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        "read_timeout": _config_seconds(options, "read_timeout", DEFAULT_READ_TIMEOUT),
        "default_lifetime": _config_seconds(options, "default_lifetime", DEFAULT_LIFETIME),
        "headers": _config_headers(options),
        "consul_include_warning": include_warning,
        "max_open_questions": max_open_questions(options, MAX_OPEN_QUESTIONS),
    }


def _config_seconds(options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"[resolver] {key} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _config_url(options: Mapping[str, Any], key: str = "url") -> str:
    if key not in options:
        raise ConfigError(f"[resolver] {key} is required for kind 'http' (a template with {{service}}, e.g. "
                          "'http://127.0.0.1:8500/v1/health/service/{service}?passing=true')")
    url = options[key]
    if not isinstance(url, str) or "{service}" not in url:
        raise ConfigError(f"[resolver] {key} must be a string containing {{service}}, got {url!r}")
    try:
        sample = httpx.URL(url.replace("{service}", "x"))
    except httpx.InvalidURL as exc:
        raise ConfigError(f"[resolver] {key} {url!r} is not a valid URL: {exc}") from exc
    if sample.scheme not in ("http", "https") or not sample.host:
        raise ConfigError(f"[resolver] {key} {url!r} must be http:// or https:// with a host")
    return url


def default_binding_url(url: str) -> str:
    """``url`` with ``/binding`` appended to its path (the query and fragment kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/binding"))


def _config_headers(options: Mapping[str, Any]) -> dict[str, str]:
    headers = options.get("headers", {})
    if not isinstance(headers, Mapping):
        raise ConfigError(f"[resolver] headers must be a table of header names to strings, got {headers!r}")
    for k, v in headers.items():
        if not isinstance(k, str) or not _TOKEN.fullmatch(k):
            raise ConfigError(f"[resolver] headers: {k!r} is not a valid header name")
        if not isinstance(v, str) or not _HEADER_VALUE.fullmatch(v):
            raise ConfigError(f"[resolver] headers.{k} must be a string of printable Latin-1 characters (no line "
                              f"breaks), got {v!r}")
    return dict(headers)


class Slot:
    """An open question's clients, kept from one question to the next: the lean one (plain http) and httpx's (for
    the rest, made when first needed). Each keeps one connection alive."""

    def __init__(self, lean: LeanClient) -> None:
        self.lean = lean
        self.httpx: httpx.AsyncClient | None = None


class Clients:
    """At most ``size`` questions open at once; those beyond wait here, cheaply, and the wait does not count against
    a question's own time-outs. Each open question has a :class:`Slot` of its own, its connection kept alive for the
    next question that takes that slot. Not one client with a pool of ``size``: httpx's pool walks all its
    connections (and their sockets' attributes) on every request and response, which with 16 took more of the node's
    time than the rest of a question (the storm benchmark, py-spy); and its queue, re-scanned likewise, grew
    quadratic with 1,000 services waiting. Plain ``http://`` questions take the slot's lean client
    (``http_lean.py``), the rest httpx's, unless a user's header needs httpx's handling."""

    def __init__(self, size: int, headers: dict[str, str], *, connect_timeout: float, read_timeout: float) -> None:
        self._slots = anyio.Semaphore(size)
        self._headers = headers
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        #: whether plain http questions may go through the lean client (see http_lean.HTTPX_ONLY_HEADERS)
        self.lean = lean_headers(headers)
        self._timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout,
                                      pool=connect_timeout)
        self.made: list[Slot] = []  #: every slot made (closed by aclose)
        self._idle: list[Slot] = []  #: those no question is using
        self._tls: Any = None  #: one TLS context for all of them, made with the first (building one takes ~20 ms)

    @asynccontextmanager
    async def take(self) -> AsyncIterator[Slot]:
        """A slot: an idle one (its connection kept from an earlier question), or a new one while fewer than
        ``size`` exist (the slots mean no more are ever needed)."""
        try:  # a free slot taken without anyio's two checkpoints (a turn of the loop): the question awaits soon enough
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            await self._slots.acquire()
        try:
            if self._idle:
                slot = self._idle.pop()
            else:
                slot = Slot(LeanClient(self._headers, connect_timeout=self.connect_timeout,
                                       read_timeout=self.read_timeout))
                self.made.append(slot)
            try:
                yield slot
            finally:
                self._idle.append(slot)
        finally:
            self._slots.release()

    def httpx_client(self, slot: Slot) -> httpx.AsyncClient:
        """The slot's httpx client, made on its first use."""
        if slot.httpx is None:
            if self._tls is None:
                self._tls = httpx.create_ssl_context(trust_env=False)
            slot.httpx = httpx.AsyncClient(
                headers=self._headers, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                timeout=self._timeout, verify=self._tls, follow_redirects=False, trust_env=False,
            )
        return slot.httpx

    async def aclose(self) -> None:
        for slot in self.made:
            await slot.lean.aclose()
            if slot.httpx is not None:
                await slot.httpx.aclose()
