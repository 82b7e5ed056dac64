"""The ``http`` resolver: asks an HTTP registry where a service is (and, in the aiobroker format, how to secure
conversations to it), one GET per question.

Config (the node's ``[resolver]`` table, ``kind = "http"``)::

    url = "http://127.0.0.1:8500/v1/health/service/{service}?passing=true"   # required
    format = "consul"            # "aiobroker" (default) or "consul"
    consul_include_warning = true   # consul format only: route to instances whose checks warn (default true)
    binding_url = "http://127.0.0.1:8080/v1/bindings/{service}"   # aiobroker format only; default: see below
    max_open_questions = 64      # questions open at once, each on a connection kept alive for the next (at
                                 # 10 ms from the registry, 64 open give at most 6,400 answers/s)
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

Route and binding in one round trip (aiobroker format)
------------------------------------------------------
When a service's route and binding are both unknown, the node asks both at once (``resolve_together``): one GET of
``url`` with the header ``Aiobroker-Ask: route, binding`` (a route question alone says ``Aiobroker-Ask: route``). A
registry that knows the header adds a ``binding`` member to its route answer: the binding answer's object (as
above; its ``lifetime``, else the route answer's, else the headers') or ``null`` for "no binding" (NotFound). The
member is read independently of the targets: a bad binding fails the binding question alone. A route answer
without the member is how the resolver tells an older registry, which answers routes only: that service's binding
is asked on its own once its route is known, and from then on the binding URL is asked at the same time as the
route's (two GETs, one wait); the route's GET keeps the header, so an upgraded registry is noticed at its first
answer with the member. When the route question fails (a non-2xx status, a time-out), the binding is left
unanswered, not failed: the node asks for it once the route is known.

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

A redirect's error gives its ``Location``, so the user can point ``url`` there.

The client does not read proxies, certificates or ``.netrc`` from the environment (``trust_env=False``): the node
talks to what its config names, wherever it was started from. Plain ``http://`` questions go through a lean
HTTP/1.1 client (``http_lean.py``; ~105 us of CPU a question against httpx's ~410 us), ``https://`` ones and any
``headers`` it leaves to httpx (``Accept-Encoding``, ``Connection``, ...) through httpx: the same errors either way.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import anyio
import httpx
from cryptography.hazmat.primitives.serialization import Encoding

from aiobroker.resolver import (
    Answers,
    BindingAnswer,
    NotFound,
    Resolver,
    ResolverError,
    RouteAnswer,
    SecurityError,
    duration,
    load_certificate,
)

from .http_config import MAX_OPEN_QUESTIONS as MAX_OPEN_QUESTIONS  # the benchmarks name it here
from .http_config import Clients, Slot, checked_options
from .http_config import default_binding_url as default_binding_url  # tests and docs name it here
from .http_formats import (
    MIN_LIFETIME as MIN_LIFETIME,  # the shortest lifetime a header can give (tests and docs name it here)
    Asked,
    Shape,
    UrlTemplate,
    aiobroker_binding,
    aiobroker_targets,
    consul_targets,
    json_reason,
    max_age,
    no_constant,
    read_body,
    read_limited,
    redact,
    redact_template,
    refused,
    url_for,
    retry_after,
    snippet,
)
from .http_lean import AnswerTimeout

#: A bigger answer is refused (a registry gone wrong must not fill the node's memory). Consul's answer is ~2 KB an
#: instance, so this is thousands of instances.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: How much of an error answer's body is read: enough for the snippet quoted in the message.
ERROR_BODY_BYTES = 4096

#: the request header that names the questions a GET asks (an aiobroker-format registry that knows it answers the
#: binding in the route's answer; any other ignores it)
ASK_HEADER = "Aiobroker-Ask"
ASK_ROUTE = "route"
ASK_BOTH = "route, binding"
#: the route answer's member that carries the binding (an object, or null: no binding)
BINDING_MEMBER = "binding"

log = logging.getLogger("aiobroker.resolvers.http")


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def create(options: Mapping[str, Any]) -> HttpResolver:
    """The entry point ``http``: checks the ``[resolver]`` table (``http_config.checked_options``) and builds the
    resolver."""
    return HttpResolver(**checked_options(options))


class HttpResolver(Resolver):
    """One :class:`httpx.AsyncClient` for the resolver's life: connections to the registry are kept and shared by
    concurrent questions about different services."""

    name = "http"

    def __init__(self, *, url: str, format: str, connect_timeout: float, read_timeout: float,
                 default_lifetime: float, headers: Mapping[str, str], binding_url: str | None = None,
                 consul_include_warning: bool = True, max_open_questions: int = MAX_OPEN_QUESTIONS) -> None:
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
        #: the URL templates, each parsed once (see UrlTemplate)
        self._templates: dict[str, UrlTemplate] = {}
        self.max_open_questions = max_open_questions
        self._clients = Clients(max_open_questions, {"Accept": "application/json", **headers},
                                connect_timeout=connect_timeout, read_timeout=read_timeout)
        #: whether the registry answers a route question with the binding in it (None: not known yet)
        self.answers_together: bool | None = None

    def describe(self) -> dict[str, Any]:
        """Header values are left out: they are often credentials."""
        return {
            "resolver": self.name,
            "url": redact_template(self.url_template),
            "binding_url": None if self.binding_url_template is None else redact_template(self.binding_url_template),
            "format": self.format,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "max_open_questions": self.max_open_questions,
            "default_lifetime": self.default_lifetime,
            "headers": list(self._header_names),
            **({"consul_include_warning": self.consul_include_warning} if self.format == "consul" else {}),
        }

    def asks(self, service_name: str) -> str:
        try:
            url = redact(url_for(self.url_template, service_name))
        except httpx.InvalidURL:
            url = redact_template(self.url_template)
        return f"the {self.name} resolver at {url} ({self.format} format)"

    async def aclose(self) -> None:
        self._closed = True
        await self._clients.aclose()

    async def resolve_route(self, service_name: str) -> RouteAnswer:
        shown, status, headers, body = await self._ask(service_name, self.url_template)
        return self._answer(service_name, shown, status, headers, body)

    async def resolve_together(self, service_name: str) -> Answers:
        """The route and the binding in one GET of ``url``: the request says ``Aiobroker-Ask: route, binding`` and
        the aiobroker format's answer carries the binding as its ``binding`` member. A registry whose answer lacks
        that member answers routes only (an older one): this answer's binding is left to the node (asked on its
        own once the route is known), and from then on the binding URL is asked at the same time as the route's,
        so a service still waits for the slower of the two answers; the route's GET keeps asking for both, and the
        first answer that carries the member again makes one GET do for both once more."""
        if self.binding_url_template is None:
            return await super().resolve_together(service_name)  # routes only: the default says so
        if self.answers_together is not False:
            return await self._together(service_name)
        separate: dict[str, BindingAnswer | Exception] = {}

        async def binding() -> None:
            try:
                separate["binding"] = await self.resolve_binding(service_name)
            except Exception as exc:  # kept as the answer, as Resolver.resolve_together does  # noqa: BLE001
                separate["binding"] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(binding)
            answers = await self._together(service_name)
        if answers.binding is not None:
            return answers
        return Answers(route=answers.route, binding=separate["binding"])

    async def _together(self, service_name: str) -> Answers:
        """One GET asking both questions; the binding None if the answer does not say (see resolve_together)."""
        assert self.binding_url_template is not None
        try:
            shown, status, headers, body = await self._ask(service_name, self.url_template, ASK_BOTH)
            doc = self._document(shown, status, headers, body, f"the registry knows no service {service_name!r}")
        except ResolverError as exc:
            return Answers(route=exc, binding=None)  # nothing said about the binding: the node asks it later
        route: RouteAnswer | Exception
        try:
            route = self._route_answer(service_name, shown, headers, body, doc)
        except ResolverError as exc:
            route = exc
        if not isinstance(doc, dict) or BINDING_MEMBER not in doc:
            if self.answers_together is not False:
                log.info("%s answers routes only (no %r member in its answer): binding questions go to %s, at the "
                         "same time as the route's", redact_template(self.url_template), BINDING_MEMBER,
                         redact_template(self.binding_url_template))
            self.answers_together = False
            return Answers(route=route, binding=None)
        self.answers_together = True
        binding: BindingAnswer | Exception
        try:
            binding = self._inline_binding(service_name, shown, headers, body, doc)
        except ResolverError as exc:
            binding = exc
        return Answers(route=route, binding=binding)

    async def resolve_binding(self, service_name: str) -> BindingAnswer:
        if self.binding_url_template is None:
            raise NotFound(f"the http resolver's {self.format} format answers routes only, not remote service "
                           f"bindings (asked about {service_name!r})", retry_after=self.default_lifetime)
        shown, status, headers, body = await self._ask(service_name, self.binding_url_template)
        return self._binding_answer(service_name, shown, status, headers, body)

    async def _ask(self, service_name: str, template: str, ask: str = ASK_ROUTE
                   ) -> tuple[str, int, httpx.Headers, bytes]:
        """GET ``template`` for ``service_name`` (``ask``: the questions, in the ``Aiobroker-Ask`` header), in one of
        the resolver's question slots, within the overall bound: (the URL as shown in messages, status, headers,
        body)."""
        if self._closed:
            raise ResolverError("the http resolver is closed")
        parsed = self._templates.get(template)
        if parsed is None:
            parsed = self._templates[template] = UrlTemplate(template)
        try:
            asked = parsed.asked(service_name)
        except httpx.InvalidURL as exc:
            raise ResolverError(f"no valid URL for {service_name!r} from {redact_template(template)}: "
                                f"{exc}") from exc
        shown = asked.shown
        overall = self.connect_timeout + self.read_timeout
        async with self._clients.take() as slot:
            try:
                if asked.scheme == "http" and self._clients.lean:  # the lean client keeps the bound with its timers
                    status, headers, body = await self._fetch(slot, parsed, service_name, asked, ask, overall)
                else:
                    with anyio.fail_after(overall):
                        status, headers, body = await self._fetch(slot, parsed, service_name, asked, ask, overall)
            except (TimeoutError, AnswerTimeout) as exc:
                raise ResolverError(
                    f"read time-out: {shown} did not answer in full within connect_timeout + read_timeout = "
                    f"{duration(overall)}") from exc
        return shown, status, headers, body

    async def _fetch(self, slot: Slot, template: UrlTemplate, service_name: str, asked: Asked, ask: str,
                     overall: float) -> tuple[int, httpx.Headers, bytes]:
        """GET the URL ``asked``, through the slot's lean client for plain http (see ``http_lean.py``; it raises
        AnswerTimeout past ``overall`` seconds), else httpx's (the URL parsed whole); every other error of either
        (the lean client raises httpx's types) and of the socket becomes a ResolverError here, chained."""
        shown = asked.shown
        where = f"{asked.host}:{asked.port or (443 if asked.scheme == 'https' else 80)}"
        try:
            headers = {ASK_HEADER: ask} if self.format == "aiobroker" else {}
            if asked.scheme == "http" and self._clients.lean:
                status, answer_headers, chunks = await slot.lean.get(asked, headers, overall)
                success = 200 <= status < 300
                body = await read_limited(answer_headers, chunks, MAX_BODY_BYTES if success else ERROR_BODY_BYTES,
                                          shown, truncate=not success)
                return status, answer_headers, body
            url = template.url(service_name)
            async with self._clients.httpx_client(slot).stream("GET", url, headers=headers) as response:
                if response.is_success:
                    body = await read_body(response, MAX_BODY_BYTES, shown, truncate=False)
                else:
                    body = await read_body(response, ERROR_BODY_BYTES, shown, truncate=True)
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
            if refused(exc):
                raise ResolverError(f"connection refused by {where}: nothing listens there (is the registry "
                                    f"running?) (GET {shown})") from exc
            raise ResolverError(f"cannot connect to {where}: {exc} (GET {shown})") from exc
        except httpx.RemoteProtocolError as exc:
            raise ResolverError(f"{shown}: the registry broke off or garbled the HTTP exchange: {exc}") from exc
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError) as exc:
            raise ResolverError(f"{shown}: {type(exc).__name__}: {exc}") from exc
        except RuntimeError as exc:
            if self._closed:  # aclose() while this question was in flight: the closed client refuses it
                raise ResolverError(f"the http resolver was closed while asking {shown}") from exc
            raise

    def _document(self, shown: str, status: int, headers: httpx.Headers, body: bytes, not_found: str) -> Any:
        """The parsed JSON of a 2xx answer; NotFound (saying ``not_found``) for 404; ResolverError otherwise."""
        if status == 404:
            wait = retry_after(headers)
            raise NotFound(f"{shown} answered 404: {not_found}",
                           retry_after=self.default_lifetime if wait is None else wait)
        if not 200 <= status < 300:
            status_line = f"HTTP {status} {httpx.codes.get_reason_phrase(status)}".rstrip()
            text = f": {snippet(body)}" if body.strip() else ""
            location = headers.get("location", "") if 300 <= status < 400 else ""
            if location:
                text += (" (redirects are not followed: set the resolver's url to where it points, "
                         f"Location: {location[:200]})")
            raise ResolverError(f"{shown} answered {status_line}{text}", retry_after=retry_after(headers))
        try:
            return json.loads(body, parse_constant=no_constant)
        except (ValueError, RecursionError) as exc:
            raise ResolverError(f"{shown}: the answer is not JSON ({json_reason(exc)}): {snippet(body)}") from exc

    def _lifetime(self, body_lifetime: float | None, headers: httpx.Headers) -> tuple[float, str]:
        """How long an answer holds, and what said so: the body, else Cache-Control, else default_lifetime."""
        header_lifetime = max_age(headers)
        if body_lifetime is not None:
            return body_lifetime, "body"
        if header_lifetime is not None:
            return header_lifetime, "cache-control"
        return self.default_lifetime, "default_lifetime"

    def _answer(self, service_name: str, shown: str, status: int, headers: httpx.Headers, body: bytes
                ) -> RouteAnswer:
        doc = self._document(shown, status, headers, body, f"the registry knows no service {service_name!r}")
        return self._route_answer(service_name, shown, headers, body, doc)

    def _route_answer(self, service_name: str, shown: str, headers: httpx.Headers, body: bytes, doc: Any
                      ) -> RouteAnswer:
        excluded: list[str] = []
        try:
            if self.format == "consul":
                targets, excluded = consul_targets(doc, self.consul_include_warning)
                body_lifetime = None
            else:
                targets, body_lifetime = aiobroker_targets(doc, service_name)
        except Shape as exc:
            raise ResolverError(f"{shown}: the answer is not in the {self.format} format: {exc}; body: "
                                f"{snippet(body)}") from None
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
        return self._binding_from(service_name, shown, headers, body, doc, "the binding answer", None)

    def _inline_binding(self, service_name: str, shown: str, headers: httpx.Headers, body: bytes,
                        doc: dict[str, Any]) -> BindingAnswer:
        """The ``binding`` member of a route answer: null is NotFound, an object is read as a binding answer."""
        member = doc[BINDING_MEMBER]
        if member is None:
            raise NotFound(f"{shown} answered: the registry has no binding for service {service_name!r}",
                           retry_after=self.default_lifetime)
        lifetime: Any = doc.get("lifetime")
        fallback = float(lifetime) if _seconds(lifetime) else None
        return self._binding_from(service_name, shown, headers, body, member, f"the {BINDING_MEMBER!r} member",
                                  fallback)

    def _binding_from(self, service_name: str, shown: str, headers: httpx.Headers, body: bytes, doc: Any,
                      what: str, fallback_lifetime: float | None) -> BindingAnswer:
        try:
            pem, anonymous, identity, body_lifetime = aiobroker_binding(doc, service_name)
        except Shape as exc:
            raise ResolverError(f"{shown}: {what} for {service_name!r} is not in the aiobroker format: "
                                f"{exc}; body: {snippet(body)}") from None
        if body_lifetime is None:
            body_lifetime = fallback_lifetime
        try:
            # checked as an identity's certificate is: it parses, and its key is one dialog security can use
            certificate = load_certificate(pem, what=f"{shown}: {what} for service {service_name!r}")
        except SecurityError as exc:
            raise ResolverError(exc.message) from None
        lifetime, _ = self._lifetime(body_lifetime, headers)
        pem_out = certificate.public_bytes(Encoding.PEM).decode("ascii")  # the certificate alone, nothing around it
        return BindingAnswer(service_name=service_name, certificate=pem_out, anonymous=anonymous, identity=identity,
                             lifetime=lifetime, source=shown)


