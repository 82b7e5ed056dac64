"""The ``http`` resolver: asks an HTTP registry where a service is (and, in the aiobroker format, how to secure
conversations to it), one GET per question.

Config (the node's ``[resolver]`` table, ``kind = "http"``)::

    url = "http://127.0.0.1:8500/v1/health/service/{service}?passing=true"   # required
    format = "consul"            # "aiobroker" (default) or "consul"
    consul_include_warning = true   # consul format only: route to instances whose checks warn (default true)
    binding_url = "http://127.0.0.1:8080/v1/bindings/{service}"   # aiobroker format only; default: see below
    connect_timeout = 2          # seconds to get a TCP (and TLS) connection
    read_timeout = 5             # seconds the registry may stay silent while answering
    default_lifetime = 60        # seconds an answer holds when it says nothing about it
    headers = { "X-Consul-Token" = "..." }   # optional, sent with every request

``{service}`` in ``url`` is replaced by the service name, URL-quoted with nothing left safe (``//shop/Orders``
becomes ``%2F%2Fshop%2FOrders``), so a name can never change the URL's shape; the registry unquotes it.

The ``aiobroker`` format
------------------------
A 200 answer whose body is a JSON object::

    {"service": "//shop/Orders",            # required: the name asked for (a guard against a wrong template)
     "lifetime": 30,                        # optional: seconds the answer holds, a number > 0
     "targets": [                           # required: an empty list means "no such service" (NotFound)
         {"address": "tcp://10.0.0.2:4022", # required: tcp://host:port
          "weight": 2,                      # optional, default 1: whole number >= 1
          "priority": 0,                    # optional, default 0: whole number >= 0, lower is preferred
          "broker_instance": "..."}]}       # optional: a string or null

Keys not listed here are ignored, so a registry can add its own without breaking older nodes.

Remote service bindings (aiobroker format)
------------------------------------------
A binding request (MissingRemoteServiceBinding, see ``docs/security.md``) is a GET of ``binding_url``, a template
like ``url`` (``{service}`` quoted the same way). Without ``binding_url`` it is ``url`` with ``/binding`` appended
to its path, the query kept: ``http://reg/v1/services/{service}`` gives
``http://reg/v1/services/%2F%2Fshop%2FOrders/binding`` (the quoted name has no ``/``, so the suffix cannot be
mistaken for part of it). A 200 answer whose body is a JSON object::

    {"certificate": "-----BEGIN CERTIFICATE-----\\n...",  # required: the service owner's certificate, PEM
     "anonymous": false,                    # optional, default false: the target does not learn who initiated
     "identity": "shop-frontend",           # optional: the local identity that signs; null or absent: the node's
     "lifetime": 60,                        # optional: seconds the answer holds, a number > 0
     "service": "//shop/Orders"}            # optional: if present, must be the name asked for

404 means the registry has no binding for the service (NotFound); every other status, time-out and body problem is
a ResolverError, as for routes, and so is a ``certificate`` that :func:`aiobroker.resolver.load_certificate`
refuses (it does not parse, or its key is not one dialog security can use): the message names the URL and the
service. The answer carries the certificate alone, written out again as PEM. Keys not listed are ignored. The
answer's lifetime is found as for routes (below). The ``consul`` format answers routes only: a binding question
gets NotFound saying so, and ``binding_url`` is a configuration error with it.

The ``consul`` format
---------------------
Consul's ``/v1/health/service/<name>`` answer: a JSON array with one entry per instance. Each gives a target
``tcp://<Service.Address or, when that is empty, Node.Address>:<Service.Port>`` with weight ``Service.Weights.Passing``
(default 1), priority 0 and broker instance ``Service.Meta.broker_instance`` (if any). An empty array means
NotFound.

Health is read from each entry's ``Checks[].Status``, whether or not the URL asks Consul to filter: an answer may
come from a cache or a proxy that kept the unfiltered one, or from a registry that ignores ``?passing=true``, and
a route to a dead instance would hold messages on a link that cannot deliver them. An instance takes the worst
status among its checks (no checks: passing):

- ``passing``: a target, weight ``Weights.Passing``;
- ``warning``: a target with weight ``Weights.Warning`` (default 1; 0 leaves it out), unless
  ``consul_include_warning = false``. Included by default, as Consul's own DNS interface does; ``?passing=true``
  in the URL leaves warning instances out at the source, whatever this option says;
- ``critical``, and any status Consul may add later: never a target.

Instances left out are listed in the answer's ``extra["excluded"]`` with their status and the checks that gave it;
when none is left, the answer is NotFound naming them (kept as an empty answer is, below).

How long an answer holds
------------------------
The first of: the body's ``lifetime`` (aiobroker format only; routes and bindings alike), then
``Cache-Control: max-age`` minus ``Age``, then ``default_lifetime``. The body wins because the registry wrote it
for this answer, while a header may be set for every answer by a proxy in front of it. A header lifetime under
:data:`MIN_LIFETIME` (``max-age=0``) is raised to it: routes that expire at once would mean a question per message.
``no-cache``/``no-store`` are ignored: frameworks set them for HTTP caches, and they say nothing about how long a
service stays where it is. An empty answer (NotFound) is kept for at least the same lifetime before the service
is asked about again (longer when the node's back-off, doubling with each failure in a row, says so).

Errors
------
404 is :class:`~aiobroker.resolver.NotFound` (kept for at least ``Retry-After`` seconds, else ``default_lifetime``).
Any other status outside 2xx (redirects are not followed), a body that is not JSON or not the format, a body over
:data:`MAX_BODY_BYTES`, a time-out, a refused connection or a broken exchange is a
:class:`~aiobroker.resolver.ResolverError` that says which, names the URL, quotes at most ~200 characters of the body
where that helps, and carries ``Retry-After`` (seconds or an HTTP date) as ``retry_after``. The whole request is
bounded by ``connect_timeout + read_timeout``, so a registry that trickles its answer cannot hold a question longer.

The client does not read proxies, certificates or ``.netrc`` from the environment (``trust_env=False``): the node
talks to what its config names, wherever it was started from.
"""

from __future__ import annotations

import email.utils
import errno
import json
import math
import re
import time
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC
from typing import Any, NoReturn, cast
from urllib.parse import quote, urlsplit, urlunsplit

import anyio
import httpx
from cryptography.hazmat.primitives.serialization import Encoding

from aiobroker.resolver import (
    BindingAnswer,
    ConfigError,
    InvalidArgument,
    NotFound,
    Resolver,
    ResolverError,
    RouteAnswer,
    SecurityError,
    Target,
    check_name,
    duration,
    load_certificate,
)

FORMATS = ("aiobroker", "consul")
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_READ_TIMEOUT = 5.0
DEFAULT_LIFETIME = 60.0
#: The shortest lifetime a header can give: below it, routes would expire before they are used.
MIN_LIFETIME = 1.0
#: A bigger answer is refused (a registry gone wrong must not fill the node's memory). Consul's answer is ~2 KB an
#: instance, so this is thousands of instances.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: How much of an error answer's body is read: enough for the snippet quoted in the message.
ERROR_BODY_BYTES = 4096
#: How much of a body an error message quotes.
SNIPPET_CHARS = 200

_OPTIONS = {"url", "binding_url", "format", "connect_timeout", "read_timeout", "default_lifetime", "headers",
            "consul_include_warning"}
_DIGITS = re.compile(r"[0-9]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


#: questions a resolver keeps open at once (below httpx's 100 pooled connections, so its queue stays empty)
MAX_OPEN_QUESTIONS = 64

class _Shape(Exception):
    """The body is JSON but not the format: says where and what (caught inside this module only)."""


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


def create(options: Mapping[str, Any]) -> HttpResolver:
    """The entry point ``http``: checks the ``[resolver]`` table and builds the resolver."""
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
    return HttpResolver(
        url=url,
        binding_url=binding_url,
        format=fmt,
        connect_timeout=_config_seconds(options, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
        read_timeout=_config_seconds(options, "read_timeout", DEFAULT_READ_TIMEOUT),
        default_lifetime=_config_seconds(options, "default_lifetime", DEFAULT_LIFETIME),
        headers=_config_headers(options),
        consul_include_warning=include_warning,
    )


class HttpResolver(Resolver):
    """One :class:`httpx.AsyncClient` for the resolver's life: connections to the registry are kept and shared by
    concurrent questions about different services."""

    name = "http"

    def __init__(self, *, url: str, format: str, connect_timeout: float, read_timeout: float,
                 default_lifetime: float, headers: Mapping[str, str], binding_url: str | None = None,
                 consul_include_warning: bool = True) -> None:
        self.url_template = url
        self.format = format
        #: the consul format: whether an instance whose worst check is ``warning`` is a target
        self.consul_include_warning = consul_include_warning
        #: where binding questions go (None: this format answers routes only)
        self.binding_url_template: str | None = None
        if format == "aiobroker":
            self.binding_url_template = binding_url if binding_url is not None else default_binding_url(url)
        self.answers_bindings = self.binding_url_template is not None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.default_lifetime = default_lifetime
        self._header_names = sorted(headers)
        self._closed = False
        # At most this many questions open at once. httpx's pool keeps 100 connections; questions beyond that wait
        # in its queue, which it re-scans on every request and response (quadratic: with 1,000 services waiting
        # it took most of the node's time, measured in the storm benchmark). They wait here instead, cheaply,
        # and the wait does not count against a question's own time-outs.
        self._slots = anyio.Semaphore(MAX_OPEN_QUESTIONS)
        self._client = httpx.AsyncClient(
            headers={"Accept": "application/json", **headers},
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout,
                                  pool=connect_timeout),
            follow_redirects=False,
            trust_env=False,
        )

    def describe(self) -> dict[str, Any]:
        """Header values are left out: they are often credentials."""
        return {
            "resolver": self.name,
            "url": _redact_template(self.url_template),
            "binding_url": None if self.binding_url_template is None else _redact_template(self.binding_url_template),
            "format": self.format,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "default_lifetime": self.default_lifetime,
            "headers": list(self._header_names),
            **({"consul_include_warning": self.consul_include_warning} if self.format == "consul" else {}),
        }

    def asks(self, service_name: str) -> str:
        try:
            url = _redact(_url_for(self.url_template, service_name))
        except httpx.InvalidURL:
            url = _redact_template(self.url_template)
        return f"the {self.name} resolver at {url} ({self.format} format)"

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()

    async def resolve_route(self, service_name: str) -> RouteAnswer:
        shown, status, headers, body = await self._ask(service_name, self.url_template)
        return self._answer(service_name, shown, status, headers, body)

    async def resolve_binding(self, service_name: str) -> BindingAnswer:
        if self.binding_url_template is None:
            raise NotFound(f"the http resolver's {self.format} format answers routes only, not remote service "
                           f"bindings (asked about {service_name!r})", retry_after=self.default_lifetime)
        shown, status, headers, body = await self._ask(service_name, self.binding_url_template)
        return self._binding_answer(service_name, shown, status, headers, body)

    async def _ask(self, service_name: str, template: str) -> tuple[str, int, httpx.Headers, bytes]:
        """GET ``template`` for ``service_name``, in one of the resolver's question slots, within the overall
        bound: (the URL as shown in messages, status, headers, body)."""
        if self._closed:
            raise ResolverError("the http resolver is closed")
        try:
            url = _url_for(template, service_name)
        except httpx.InvalidURL as exc:
            raise ResolverError(f"no valid URL for {service_name!r} from {_redact_template(template)}: "
                                f"{exc}") from exc
        shown = _redact(url)
        overall = self.connect_timeout + self.read_timeout
        async with self._slots:
            try:
                with anyio.fail_after(overall):
                    status, headers, body = await self._fetch(url, shown)
            except TimeoutError as exc:
                raise ResolverError(
                    f"read time-out: {shown} did not answer in full within connect_timeout + read_timeout = "
                    f"{duration(overall)}") from exc
        return shown, status, headers, body

    async def _fetch(self, url: httpx.URL, shown: str) -> tuple[int, httpx.Headers, bytes]:
        """GET ``url``; every httpx and socket error becomes a ResolverError here, chained."""
        where = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
        try:
            async with self._client.stream("GET", url) as response:
                if response.is_success:
                    body = await _read_body(response, MAX_BODY_BYTES, shown, truncate=False)
                else:
                    body = await _read_body(response, ERROR_BODY_BYTES, shown, truncate=True)
                return response.status_code, response.headers, body
        except httpx.ConnectTimeout as exc:
            raise ResolverError(f"connect time-out: no connection to {where} within connect_timeout = "
                                f"{duration(self.connect_timeout)} (GET {shown})") from exc
        except httpx.ReadTimeout as exc:
            raise ResolverError(f"read time-out: {shown} sent nothing for read_timeout = {duration(self.read_timeout)}"
                                ) from exc
        except httpx.WriteTimeout as exc:
            raise ResolverError(f"write time-out: could not send the request to {where} within read_timeout = "
                                f"{duration(self.read_timeout)} (GET {shown})") from exc
        except httpx.PoolTimeout as exc:
            raise ResolverError(f"pool time-out: no free connection to {where} within connect_timeout = "
                                f"{duration(self.connect_timeout)} (too many questions at once?)") from exc
        except httpx.ConnectError as exc:
            if _refused(exc):
                raise ResolverError(f"connection refused by {where}: nothing listens there (is the registry "
                                    f"running?) (GET {shown})") from exc
            raise ResolverError(f"cannot connect to {where}: {exc} (GET {shown})") from exc
        except httpx.RemoteProtocolError as exc:
            raise ResolverError(f"{shown}: the registry broke off or garbled the HTTP exchange: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError) as exc:
            raise ResolverError(f"{shown}: {type(exc).__name__}: {exc}") from exc
        except RuntimeError as exc:
            if self._closed:  # aclose() while this question was in flight: httpx refuses the closed client
                raise ResolverError(f"the http resolver was closed while asking {shown}") from exc
            raise

    def _document(self, shown: str, status: int, headers: httpx.Headers, body: bytes, not_found: str) -> Any:
        """The parsed JSON of a 2xx answer; NotFound (saying ``not_found``) for 404; ResolverError otherwise."""
        if status == 404:
            retry_after = _retry_after(headers)
            raise NotFound(f"{shown} answered 404: {not_found}",
                           retry_after=self.default_lifetime if retry_after is None else retry_after)
        if not 200 <= status < 300:
            status_line = f"HTTP {status} {httpx.codes.get_reason_phrase(status)}".rstrip()
            text = f": {_snippet(body)}" if body.strip() else ""
            raise ResolverError(f"{shown} answered {status_line}{text}", retry_after=_retry_after(headers))
        try:
            return json.loads(body, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise ResolverError(f"{shown}: the answer is not JSON ({_json_reason(exc)}): {_snippet(body)}") from exc

    def _lifetime(self, body_lifetime: float | None, headers: httpx.Headers) -> tuple[float, str]:
        """How long an answer holds, and what said so: the body, else Cache-Control, else default_lifetime."""
        header_lifetime = _max_age(headers)
        if body_lifetime is not None:
            return body_lifetime, "body"
        if header_lifetime is not None:
            return header_lifetime, "cache-control"
        return self.default_lifetime, "default_lifetime"

    def _answer(self, service_name: str, shown: str, status: int, headers: httpx.Headers, body: bytes
                ) -> RouteAnswer:
        doc = self._document(shown, status, headers, body, f"the registry knows no service {service_name!r}")
        excluded: list[str] = []
        try:
            if self.format == "consul":
                targets, excluded = _consul_targets(doc, self.consul_include_warning)
                body_lifetime = None
            else:
                targets, body_lifetime = _aiobroker_targets(doc, service_name)
        except _Shape as exc:
            raise ResolverError(f"{shown}: the answer is not in the {self.format} format: {exc}; body: "
                                f"{_snippet(body)}") from None
        lifetime, lifetime_from = self._lifetime(body_lifetime, headers)
        if not targets:
            if excluded:
                raise NotFound(f"{shown} lists {len(excluded)} instance(s) of {service_name!r}, none of them a "
                               f"target: {'; '.join(excluded)}", retry_after=lifetime)
            raise NotFound(f"{shown} lists no targets for {service_name!r}", retry_after=lifetime)
        extra: dict[str, Any] = {"format": self.format, "lifetime_from": lifetime_from}
        if excluded:
            extra["excluded"] = excluded
        return RouteAnswer(service_name=service_name, targets=tuple(targets), lifetime=lifetime, source=shown,
                           extra=extra)

    def _binding_answer(self, service_name: str, shown: str, status: int, headers: httpx.Headers, body: bytes
                        ) -> BindingAnswer:
        doc = self._document(shown, status, headers, body, f"the registry has no binding for service {service_name!r}")
        try:
            pem, anonymous, identity, body_lifetime = _aiobroker_binding(doc, service_name)
        except _Shape as exc:
            raise ResolverError(f"{shown}: the binding answer for {service_name!r} is not in the aiobroker format: "
                                f"{exc}; body: {_snippet(body)}") from None
        try:
            # checked as an identity's certificate is: it parses, and its key is one dialog security can use
            certificate = load_certificate(pem, what=f"{shown}: the binding answer for service {service_name!r}")
        except SecurityError as exc:
            raise ResolverError(exc.message) from None
        lifetime, _ = self._lifetime(body_lifetime, headers)
        pem_out = certificate.public_bytes(Encoding.PEM).decode("ascii")  # the certificate alone, nothing around it
        return BindingAnswer(service_name=service_name, certificate=pem_out, anonymous=anonymous, identity=identity,
                             lifetime=lifetime, source=shown)


# --- reading the answer ---------------------------------------------------------------------------------------


async def _read_body(response: httpx.Response, limit: int, shown: str, *, truncate: bool) -> bytes:
    """At most ``limit`` bytes (decoded): beyond it, an error answer is cut (only a snippet is wanted) and a
    success answer is refused. The iterator is closed explicitly so an early exit leaves nothing for the GC."""
    declared = response.headers.get("content-length", "")
    if not truncate and _DIGITS.fullmatch(declared) and int(declared) > limit:
        raise ResolverError(f"{shown}: the answer is {declared} bytes, over the limit of {limit}")
    chunks = cast(AsyncGenerator[bytes, None], response.aiter_bytes())
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                if truncate:
                    break
                raise ResolverError(f"{shown}: the answer is over the limit of {limit} bytes")
    finally:
        await chunks.aclose()
    return b"".join(parts)[:limit]


def _refused(exc: BaseException) -> bool:
    """Whether a ConnectionRefusedError is anywhere in the chain (httpx → httpcore → anyio's OSError → the
    attempts, possibly an ExceptionGroup of them)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError) or (isinstance(e, OSError) and e.errno == errno.ECONNREFUSED):
            return True
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return False


def _retry_after(headers: httpx.Headers) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3); None if absent or
    unreadable."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    if _DIGITS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _max_age(headers: httpx.Headers) -> float | None:
    """``Cache-Control: max-age`` less ``Age`` (time already spent in caches), at least MIN_LIFETIME; None if
    there is no max-age."""
    max_age: int | None = None
    for directive in headers.get_list("cache-control", split_commas=True):
        name, _, value = directive.strip().partition("=")
        value = value.strip().strip('"')
        if name.strip().lower() == "max-age" and _DIGITS.fullmatch(value):
            max_age = int(value)
            break
    if max_age is None:
        return None
    age = headers.get("age", "").strip()
    if _DIGITS.fullmatch(age):
        max_age -= int(age)
    return max(MIN_LIFETIME, float(max_age))


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _json_reason(exc: ValueError | RecursionError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at character {exc.pos}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def _snippet(body: bytes) -> str:
    text = body[: SNIPPET_CHARS * 4].decode("utf-8", errors="replace")
    cut = len(text) > SNIPPET_CHARS or len(body) > SNIPPET_CHARS * 4
    return repr(text[:SNIPPET_CHARS]) + (" (cut)" if cut else "")


def _url_for(template: str, service_name: str) -> httpx.URL:
    """``template`` with ``{service}`` replaced by the name, quoted with nothing left safe."""
    return httpx.URL(template.replace("{service}", quote(service_name, safe="")))


def _redact(url: httpx.URL) -> str:
    """The URL for messages, without a password in it."""
    return _redact_template(str(url))


def _redact_template(template: str) -> str:
    """The template for messages and status, without a password, ``{service}`` left as written."""
    parts = urlsplit(template)
    if not parts.password:
        return template
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


# --- the formats ----------------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _aiobroker_targets(doc: Any, service_name: str) -> tuple[list[Target], float | None]:
    if not isinstance(doc, dict):
        raise _Shape(f"the answer must be an object with 'service' and 'targets', got {_kind(doc)}")
    for key in ("service", "targets"):
        if key not in doc:
            raise _Shape(f"the key {key!r} is missing")
    if doc["service"] != service_name:
        raise _Shape(f"'service' is {doc['service']!r}, but {service_name!r} was asked for")
    lifetime = doc.get("lifetime")
    if lifetime is not None and (isinstance(lifetime, bool) or not isinstance(lifetime, (int, float))
                                 or not 0 < lifetime < math.inf):
        raise _Shape(f"'lifetime' must be a number of seconds > 0, got {lifetime!r}")
    raw_targets = doc["targets"]
    if not isinstance(raw_targets, list):
        raise _Shape(f"'targets' must be an array, got {_kind(raw_targets)}")
    targets = []
    for i, t in enumerate(raw_targets):
        where = f"targets[{i}]"
        if not isinstance(t, dict):
            raise _Shape(f"{where} must be an object, got {_kind(t)}")
        if "address" not in t:
            raise _Shape(f"{where}: the key 'address' is missing")
        instance = t.get("broker_instance")
        if instance is not None and not isinstance(instance, str):
            raise _Shape(f"{where}.broker_instance must be a string or null, got {_kind(instance)}")
        targets.append(_target(where, t["address"], t.get("weight", 1), t.get("priority", 0), instance))
    return targets, None if lifetime is None else float(lifetime)


def _aiobroker_binding(doc: Any, service_name: str) -> tuple[str, bool, str | None, float | None]:
    """(certificate PEM text, anonymous, identity, lifetime) from a binding answer; the certificate not yet parsed."""
    if not isinstance(doc, dict):
        raise _Shape(f"the answer must be an object with 'certificate', got {_kind(doc)}")
    if "service" in doc and doc["service"] != service_name:
        raise _Shape(f"'service' is {doc['service']!r}, but {service_name!r} was asked for")
    if "certificate" not in doc:
        raise _Shape("the key 'certificate' is missing")
    certificate = doc["certificate"]
    if not isinstance(certificate, str):
        raise _Shape(f"'certificate' must be a string (PEM), got {_kind(certificate)}")
    anonymous = doc.get("anonymous", False)
    if not isinstance(anonymous, bool):
        raise _Shape(f"'anonymous' must be true or false, got {_kind(anonymous)}")
    identity = doc.get("identity")
    if identity is not None:
        try:
            check_name("identity", identity)
        except InvalidArgument as exc:
            raise _Shape(f"'identity': {exc.message}") from None
    lifetime = doc.get("lifetime")
    if lifetime is not None and (isinstance(lifetime, bool) or not isinstance(lifetime, (int, float))
                                 or not 0 < lifetime < math.inf):
        raise _Shape(f"'lifetime' must be a number of seconds > 0, got {lifetime!r}")
    return certificate, anonymous, identity, None if lifetime is None else float(lifetime)


#: Consul's check statuses, least to most serious; any other status counts as the most serious
_CONSUL_STATUS_RANK = {"passing": 0, "warning": 1, "critical": 2}


def _consul_health(where: str, entry: dict[str, Any]) -> tuple[str, list[str]]:
    """An instance's status as Consul aggregates it, the worst of its ``Checks`` (none: passing), and the checks
    that gave it (their CheckID, else Name)."""
    checks = entry.get("Checks")
    if checks is None:
        return "passing", []
    if not isinstance(checks, list):
        raise _Shape(f"{where}.Checks must be an array, got {_kind(checks)}")
    worst, worst_rank, culprits = "passing", 0, []
    for j, check in enumerate(checks):
        if not isinstance(check, dict):
            raise _Shape(f"{where}.Checks[{j}] must be an object, got {_kind(check)}")
        status = check.get("Status")
        if not isinstance(status, str):
            raise _Shape(f"{where}.Checks[{j}].Status must be a string, got {_kind(status)}")
        rank = _CONSUL_STATUS_RANK.get(status, len(_CONSUL_STATUS_RANK))
        name = str(check.get("CheckID") or check.get("Name") or f"Checks[{j}]")
        if rank > worst_rank:
            worst, worst_rank, culprits = status, rank, [name]
        elif rank == worst_rank and rank > 0:
            culprits.append(name)
    return worst, culprits


def _consul_targets(doc: Any, include_warning: bool) -> tuple[list[Target], list[str]]:
    """The targets of a health answer, and the instances left out for their health, in words."""
    if not isinstance(doc, list):
        raise _Shape(f"Consul's health answer is an array of entries, got {_kind(doc)}")
    targets, excluded = [], []
    for i, entry in enumerate(doc):
        where = f"[{i}]"
        if not isinstance(entry, dict):
            raise _Shape(f"{where} must be an object, got {_kind(entry)}")
        service = entry.get("Service")
        if not isinstance(service, dict):
            raise _Shape(f"{where}.Service must be an object, got {_kind(service)}")
        node = entry.get("Node")
        host = service.get("Address")
        if host is None or host == "":
            if not isinstance(node, dict) or not node.get("Address"):
                raise _Shape(f"{where}: no address (Service.Address is empty and there is no Node.Address)")
            host, host_key = node["Address"], "Node.Address"
        else:
            host_key = "Service.Address"
        if not isinstance(host, str):
            raise _Shape(f"{where}.{host_key} must be a string, got {_kind(host)}")
        port = service.get("Port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise _Shape(f"{where}.Service.Port must be a port number from 1 to 65535, got {port!r}")
        weights = service.get("Weights")
        if weights is not None and not isinstance(weights, dict):
            raise _Shape(f"{where}.Service.Weights must be an object, got {_kind(weights)}")
        meta = service.get("Meta")
        if meta is not None and not isinstance(meta, dict):
            raise _Shape(f"{where}.Service.Meta must be an object, got {_kind(meta)}")
        instance = None if meta is None else meta.get("broker_instance")
        if instance is not None and not isinstance(instance, str):
            raise _Shape(f"{where}.Service.Meta.broker_instance must be a string, got {_kind(instance)}")
        address = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
        status, culprits = _consul_health(where, entry)
        health = f"{address} ({status}: {', '.join(culprits)}"
        weight_key = "Warning" if status == "warning" else "Passing"
        weight = 1 if weights is None or weights.get(weight_key) is None else weights[weight_key]
        if status not in ("passing", "warning"):
            excluded.append(health + ")")
        elif status == "warning" and not include_warning:
            excluded.append(health + "; consul_include_warning is false)")
        elif status == "warning" and weight == 0 and not isinstance(weight, bool):
            excluded.append(health + "; its Weights.Warning is 0)")
        else:
            targets.append(_target(where, address, weight, 0, instance))
    return targets, excluded


def _target(where: str, address: Any, weight: Any, priority: Any, instance: str | None) -> Target:
    """A Target, its own checks (address, weight >= 1, priority >= 0) reported as a shape error at ``where``."""
    try:
        return Target(address=address, weight=weight, priority=priority, broker_instance=instance)
    except InvalidArgument as exc:
        raise _Shape(f"{where}: {exc.message}") from None
