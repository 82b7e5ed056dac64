"""Reading a registry's answer for the ``http`` resolver: how long it holds and when to ask again (``Cache-Control``,
``Age``, ``Retry-After``), the JSON and the words an error quotes of it, and its two formats, read from the decoded
document: aiobroker's own (routes and bindings) and Consul's health endpoint (routes). A format's function returns
targets (or a binding's parts), or raises :class:`Shape` saying where the document departs from the format;
``http.py`` fetches, decodes, and turns a ``Shape`` into the resolver's error with the registry's address. Below the
formats: reading a body within a limit, telling a refused connection, and the URLs a question asks and shows.
"""

from __future__ import annotations

import base64
import email.utils
import errno
import json
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC
from typing import Any, NamedTuple, NoReturn, cast
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from aiobroker.resolver import InvalidArgument, ResolverError, Target, check_name


#: The shortest lifetime a header can give: below it, routes would expire before they are used.
MIN_LIFETIME = 1.0
#: How much of a body an error message quotes.
SNIPPET_CHARS = 200
DIGITS = re.compile(r"[0-9]+")


class Shape(Exception):
    """The body is JSON but not the format: says where and what."""


def retry_after(headers: httpx.Headers) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3); None if absent or
    unreadable."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    if DIGITS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def max_age(headers: httpx.Headers) -> float | None:
    """``Cache-Control: max-age`` less ``Age`` (time already spent in caches), at least MIN_LIFETIME; None if
    there is no max-age."""
    max_age: int | None = None
    for directive in headers.get_list("cache-control", split_commas=True):
        name, _, value = directive.strip().partition("=")
        value = value.strip().strip('"')
        if name.strip().lower() == "max-age" and DIGITS.fullmatch(value):
            max_age = int(value)
            break
    if max_age is None:
        return None
    age = headers.get("age", "").strip()
    if DIGITS.fullmatch(age):
        max_age -= int(age)
    return max(MIN_LIFETIME, float(max_age))


def no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def json_reason(exc: ValueError | RecursionError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at character {exc.pos}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def snippet(body: bytes) -> str:
    text = body[: SNIPPET_CHARS * 4].decode("utf-8", errors="replace")
    cut = len(text) > SNIPPET_CHARS or len(body) > SNIPPET_CHARS * 4
    return repr(text[:SNIPPET_CHARS]) + (" (cut)" if cut else "")


def kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def aiobroker_targets(doc: Any, service_name: str) -> tuple[list[Target], float | None]:
    if not isinstance(doc, dict):
        raise Shape(f"the answer must be an object with 'service' and 'targets', got {kind(doc)}")
    for key in ("service", "targets"):
        if key not in doc:
            raise Shape(f"the key {key!r} is missing")
    if doc["service"] != service_name:
        raise Shape(f"'service' is {doc['service']!r}, but {service_name!r} was asked for")
    lifetime = doc.get("lifetime")
    if lifetime is not None and (isinstance(lifetime, bool) or not isinstance(lifetime, (int, float))
                                 or not 0 < lifetime < math.inf):
        raise Shape(f"'lifetime' must be a number of seconds > 0, got {lifetime!r}")
    raw_targets = doc["targets"]
    if not isinstance(raw_targets, list):
        raise Shape(f"'targets' must be an array, got {kind(raw_targets)}")
    targets = []
    for i, t in enumerate(raw_targets):
        where = f"targets[{i}]"
        if not isinstance(t, dict):
            raise Shape(f"{where} must be an object, got {kind(t)}")
        if "address" not in t:
            raise Shape(f"{where}: the key 'address' is missing")
        instance = t.get("broker_instance")
        if instance is not None and not isinstance(instance, str):
            raise Shape(f"{where}.broker_instance must be a string or null, got {kind(instance)}")
        targets.append(target(where, t["address"], t.get("weight", 1), t.get("priority", 0), instance))
    return targets, None if lifetime is None else float(lifetime)


def aiobroker_binding(doc: Any, service_name: str) -> tuple[str, bool, str | None, float | None]:
    """(certificate PEM text, anonymous, identity, lifetime) from a binding answer; the certificate not yet parsed."""
    if not isinstance(doc, dict):
        raise Shape(f"the answer must be an object with 'certificate', got {kind(doc)}")
    if "service" in doc and doc["service"] != service_name:
        raise Shape(f"'service' is {doc['service']!r}, but {service_name!r} was asked for")
    if "certificate" not in doc:
        raise Shape("the key 'certificate' is missing")
    certificate = doc["certificate"]
    if not isinstance(certificate, str):
        raise Shape(f"'certificate' must be a string (PEM), got {kind(certificate)}")
    anonymous = doc.get("anonymous", False)
    if not isinstance(anonymous, bool):
        raise Shape(f"'anonymous' must be true or false, got {kind(anonymous)}")
    identity = doc.get("identity")
    if identity is not None:
        try:
            check_name("identity", identity)
        except InvalidArgument as exc:
            raise Shape(f"'identity': {exc.message}") from None
    lifetime = doc.get("lifetime")
    if lifetime is not None and (isinstance(lifetime, bool) or not isinstance(lifetime, (int, float))
                                 or not 0 < lifetime < math.inf):
        raise Shape(f"'lifetime' must be a number of seconds > 0, got {lifetime!r}")
    return certificate, anonymous, identity, None if lifetime is None else float(lifetime)


#: Consul's check statuses, least to most serious; any other status counts as the most serious
CONSUL_STATUS_RANK = {"passing": 0, "warning": 1, "critical": 2}


def consul_health(where: str, entry: dict[str, Any]) -> tuple[str, list[str]]:
    """An instance's status as Consul aggregates it, the worst of its ``Checks`` (none: passing), and the checks
    that gave it (their CheckID, else Name)."""
    checks = entry.get("Checks")
    if checks is None:
        return "passing", []
    if not isinstance(checks, list):
        raise Shape(f"{where}.Checks must be an array, got {kind(checks)}")
    worst, worst_rank, culprits = "passing", 0, []
    for j, check in enumerate(checks):
        if not isinstance(check, dict):
            raise Shape(f"{where}.Checks[{j}] must be an object, got {kind(check)}")
        status = check.get("Status")
        if not isinstance(status, str):
            raise Shape(f"{where}.Checks[{j}].Status must be a string, got {kind(status)}")
        rank = CONSUL_STATUS_RANK.get(status, len(CONSUL_STATUS_RANK))
        name = str(check.get("CheckID") or check.get("Name") or f"Checks[{j}]")
        if rank > worst_rank:
            worst, worst_rank, culprits = status, rank, [name]
        elif rank == worst_rank and rank > 0:
            culprits.append(name)
    return worst, culprits


def consul_targets(doc: Any, include_warning: bool) -> tuple[list[Target], list[str]]:
    """The targets of a health answer, and the instances left out for their health, in words."""
    if not isinstance(doc, list):
        raise Shape(f"Consul's health answer is an array of entries, got {kind(doc)}")
    targets, excluded = [], []
    for i, entry in enumerate(doc):
        where = f"[{i}]"
        if not isinstance(entry, dict):
            raise Shape(f"{where} must be an object, got {kind(entry)}")
        service = entry.get("Service")
        if not isinstance(service, dict):
            raise Shape(f"{where}.Service must be an object, got {kind(service)}")
        node = entry.get("Node")
        host = service.get("Address")
        if host is None or host == "":
            if not isinstance(node, dict) or not node.get("Address"):
                raise Shape(f"{where}: no address (Service.Address is empty and there is no Node.Address)")
            host, host_key = node["Address"], "Node.Address"
        else:
            host_key = "Service.Address"
        if not isinstance(host, str):
            raise Shape(f"{where}.{host_key} must be a string, got {kind(host)}")
        port = service.get("Port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise Shape(f"{where}.Service.Port must be a port number from 1 to 65535, got {port!r}")
        weights = service.get("Weights")
        if weights is not None and not isinstance(weights, dict):
            raise Shape(f"{where}.Service.Weights must be an object, got {kind(weights)}")
        meta = service.get("Meta")
        if meta is not None and not isinstance(meta, dict):
            raise Shape(f"{where}.Service.Meta must be an object, got {kind(meta)}")
        instance = None if meta is None else meta.get("broker_instance")
        if instance is not None and not isinstance(instance, str):
            raise Shape(f"{where}.Service.Meta.broker_instance must be a string, got {kind(instance)}")
        address = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
        status, culprits = consul_health(where, entry)
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
            targets.append(target(where, address, weight, 0, instance))
    return targets, excluded


def target(where: str, address: Any, weight: Any, priority: Any, instance: str | None) -> Target:
    """A Target, its own checks (address, weight >= 1, priority >= 0) reported as a shape error at ``where``."""
    try:
        return Target(address=address, weight=weight, priority=priority, broker_instance=instance)
    except InvalidArgument as exc:
        raise Shape(f"{where}: {exc.message}") from None


# --- reading the answer ---------------------------------------------------------------------------------------


async def read_body(response: httpx.Response, limit: int, shown: str, *, truncate: bool) -> bytes:
    """At most ``limit`` bytes of an httpx response, decoded (see :func:`read_limited`)."""
    return await read_limited(response.headers, response.aiter_bytes(), limit, shown, truncate=truncate)


async def read_limited(headers: httpx.Headers, chunks: AsyncIterator[bytes], limit: int, shown: str, *,
                       truncate: bool) -> bytes:
    """At most ``limit`` bytes of an answer's body from ``chunks``: beyond it, an error answer is cut (only a snippet
    is wanted) and a success answer is refused. The iterator is closed explicitly so an early exit leaves nothing
    for the GC (and the lean client closes a connection whose answer was not read to its end)."""
    declared = headers.get("content-length", "")
    if not truncate and DIGITS.fullmatch(declared) and int(declared) > limit:
        await cast(AsyncGenerator[bytes, None], chunks).aclose()
        raise ResolverError(f"{shown}: the answer is {declared} bytes, over the limit of {limit}")
    generator = cast(AsyncGenerator[bytes, None], chunks)
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in generator:
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                if truncate:
                    break
                raise ResolverError(f"{shown}: the answer is over the limit of {limit} bytes")
    finally:
        await generator.aclose()
    return b"".join(parts)[:limit]


def refused(exc: BaseException) -> bool:
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


def url_for(template: str, service_name: str) -> httpx.URL:
    """``template`` with ``{service}`` replaced by the name, quoted with nothing left safe."""
    return httpx.URL(template.replace("{service}", quote(service_name, safe="")))


class Asked(NamedTuple):
    """What a question's GET needs: where to connect, the request target, the Host and Authorization lines, and the
    URL as messages show it."""

    scheme: str
    host: str
    port: int | None
    raw_path: bytes
    origin_lines: bytes  #: ``Host: ...`` and, with credentials in the URL, ``Authorization: Basic ...`` (CRLF each)
    shown: str


class UrlTemplate:
    """A URL template parsed once by httpx, with a marker where ``{service}`` goes; a question's URL is then the
    parts around the marker joined by the quoted name, which is what httpx would make of the whole URL: the quoted
    name is unreserved characters and ``%XX`` only, which httpx keeps as they are in a path or query. Parsing the
    whole URL per question was a fifth of the resolver's CPU. Templates the marker cannot stand in for (``{service}``
    in the host or the fragment), and names that httpx would change (all dots: a ``.`` or ``..`` path segment) or
    refuse (too long), take httpx's parse of the whole URL, as before."""

    MARK = "aiobroker-service-8e1f0c"  #: letters and dashes: kept as is wherever it stands
    #: a longer quoted name takes httpx's parse, which enforces httpx's own limit on a URL's length
    FAST_NAME_CHARS = 4096

    def __init__(self, template: str) -> None:
        self.template = template
        self._fast = False
        marks = template.count("{service}")
        try:
            parsed = httpx.URL(template.replace("{service}", self.MARK))
        except httpx.InvalidURL:
            return  # said per question, by httpx's parse of the whole URL
        text = str(parsed)
        if self.MARK in template or parsed.raw_path.decode("ascii").count(self.MARK) != marks or \
                text.count(self.MARK) != marks:
            return
        self._fast = True
        self._path_parts = parsed.raw_path.decode("ascii").split(self.MARK)
        self._shown_parts = redact_template(text).split(self.MARK)
        self._origin = (parsed.scheme, parsed.host, parsed.port, origin_lines(parsed))

    def url(self, service_name: str) -> httpx.URL:
        """httpx's URL for ``service_name`` (raises httpx.InvalidURL)."""
        return url_for(self.template, service_name)

    def asked(self, service_name: str) -> Asked:
        """The question's parts for ``service_name`` (raises httpx.InvalidURL)."""
        quoted = quote(service_name, safe="")
        if not self._fast or len(quoted) > self.FAST_NAME_CHARS or not quoted.strip("."):
            url = self.url(service_name)
            return Asked(url.scheme, url.host, url.port, url.raw_path, origin_lines(url), redact(url))
        scheme, host, port, lines = self._origin
        return Asked(scheme, host, port, quoted.join(self._path_parts).encode("ascii"), lines,
                     quoted.join(self._shown_parts))


def origin_lines(url: httpx.URL) -> bytes:
    """The Host line and, as httpx does with credentials in the URL, the Basic Authorization line."""
    lines = b"Host: " + url.netloc + b"\r\n"
    if url.userinfo:
        credentials = f"{url.username}:{url.password}".encode()
        lines += b"Authorization: Basic " + base64.b64encode(credentials) + b"\r\n"
    return lines


def redact(url: httpx.URL) -> str:
    """The URL for messages, without a password in it."""
    return redact_template(str(url))


def redact_template(template: str) -> str:
    """The template for messages and status, without a password, ``{service}`` left as written."""
    parts = urlsplit(template)
    if not parts.password:
        return template
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
