"""The ``dns_srv`` resolver: where services are, published as DNS SRV records (RFC 2782).

DNS is what most sites already run and replicate, and SRV records carry exactly what a route needs: host, port,
priority, weight, and (through the TTL) how long the answer holds. The node's config names it::

    [resolver]
    kind = "dns_srv"
    domain = "brokers.example.com"                   # for the template below
    srv_name = "_aiobroker._tcp.{service}.{domain}"  # optional; this is the default
    nameservers = ["10.0.0.53", "10.0.0.54:5353"]    # optional; default: the ones in /etc/resolv.conf
    timeout = 2                                      # optional: seconds one DNS query may take
    max_open_questions = 64                          # optional: services asked about at once (the rest wait)
    lifetime_floor = 1                               # optional: the shortest lifetime an answer gets
    lifetime_cap = 3600                              # optional: the longest

    [resolver.names]                                 # optional: explicit service name → SRV name
    "//shop/Orders" = "_orders._tcp.shop.example.com"

**Which SRV name.** A service name such as ``//shop/Orders`` is not a DNS name, so it is mapped to one:

1. an entry in ``[resolver.names]`` wins (the way out of collisions and of names the template mangles);
2. otherwise ``srv_name`` with ``{service}`` replaced by a DNS label made from the service name (see
   :func:`service_label`: lowercase, every run of characters other than ``a-z0-9-`` becomes one ``-``, leading and
   trailing ``-`` removed, at most 63 characters) and ``{domain}`` by ``domain``. ``//shop/Orders`` becomes
   ``_aiobroker._tcp.shop-orders.brokers.example.com.``. The label is lossy (``//shop/Orders`` and ``shop.orders``
   share it): publish names that map one to one, or list the exceptions in ``[resolver.names]``.

The template is off when it needs ``{domain}`` and none is given; then only ``[resolver.names]`` is used (a config
with neither is refused). A service name that cannot be mapped (not in the table with the template off, or without a
single letter or digit) gets :class:`~aiobroker.resolver.NotFound`: no DNS answer could ever name it.

**From SRV records to targets.**

- *Priority* is copied: lower is preferred, and the node uses only the lowest priority present
  (:meth:`~aiobroker.resolver.RouteAnswer.preferred`), as RFC 2782 says.
- *Weight*: RFC 2782 weights are 0..65535 and a 0 means "a very small chance when others have weight > 0"; ours are
  whole numbers >= 1. A weight ``w > 0`` becomes ``100 * w`` and a weight 0 becomes ``1``: ratios between non-zero
  weights are kept exactly, a weight 0 record gets 1/100 of the share of a weight 1 record, and a group of only
  weight 0 records shares the load evenly.
- *Target host*: resolved here, through the same nameservers, to its A and AAAA addresses (queried in parallel);
  each address becomes a :class:`~aiobroker.resolver.Target` ``tcp://address:port`` (``tcp://[v6]:port``) with the
  record's port. Why not leave the host name to the node: the node would look it up with the system resolver, which
  may not be the DNS that published the record (a split horizon, a test server on a private port), and its answer's
  TTL would not be part of the route's lifetime. A host with several addresses shares its record's weight among them
  (all weights of the priority are scaled by the least common multiple of the address counts, so the shares stay
  exact). The same address and port named twice at one priority becomes one target with the weights added.
- A host with no address (NXDOMAIN or no A/AAAA records) is left out and listed in ``extra["unresolved"]``; if that
  leaves nothing, the answer is :class:`~aiobroker.resolver.NotFound`. If the lookup of a host *failed* (time-out,
  SERVFAIL) and gave no address, the whole question fails with :class:`~aiobroker.resolver.ResolverError`: an answer
  without that host would shift its load onto the others for a whole lifetime. An AAAA lookup that fails while the
  A lookup gave addresses (old middleboxes do that) is not held against the host.
- A record with target ``.`` is dropped; when that leaves no record (the RFC 2782 "service decidedly not available
  at this domain", normally one record), the answer is :class:`~aiobroker.resolver.NotFound` for the SRV RRset's TTL.

**Lifetime.** The smallest TTL among the RRsets the answer was built from (the SRV RRset, with any CNAMEs on the way,
and every A/AAAA RRset that gave an address), clamped to ``[lifetime_floor, lifetime_cap]``: the floor keeps a TTL
of 0 from turning every message into a DNS query, the cap bounds how long a stale answer can live.

**Negative answers.** NXDOMAIN and "no SRV records" (NODATA) are :class:`~aiobroker.resolver.NotFound` with
``retry_after`` the negative-caching TTL of RFC 2308: ``min(SOA TTL, SOA minimum)`` of the SOA in the authority
section, or 60 s when there is none; clamped like a lifetime. The node does not ask again sooner; it may ask
later, since its back-off doubles with each failure in a row whatever the TTL (a target ``.`` with a 2 s TTL is
asked again after 2, 4, 8, ... s).

**Failures.** A time-out (no nameserver answered within ``timeout``), SERVFAIL, REFUSED, a malformed reply, no
nameserver configured: :class:`~aiobroker.resolver.ResolverError` with the reason in words, naming the query and the
nameservers, e.g. ``DNS query for _x._tcp.example. SRV timed out after 2s (nameserver 127.0.0.1:5353)``. Nothing
else leaves :meth:`DnsSrvResolver.resolve_route`: dnspython's exceptions are translated there, chained.

**Waiting.** ``timeout`` bounds one DNS query, every nameserver and retransmission included (each attempt gets an
equal share of it, and a lone nameserver gets two attempts, so one lost UDP packet is not a failure). A question is
the SRV query and then the address queries in parallel, so it takes at most ``2 * timeout``; the address queries
go first to the nameserver that answered the SRV query, so a dead nameserver early in the list costs a question one
attempt rather than one per query. Nothing is cached
here: the node keeps the answer for its lifetime and asks one question per service at a time.

dnspython's async resolver runs on the node's asyncio loop (uvloop included); it is given the asyncio backend
explicitly rather than left to sniff the running library.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.SRV
import dns.resolver

from aiobroker.resolver import (
    BrokerError,
    ConfigError,
    InvalidArgument,
    NotFound,
    Resolver,
    ResolverError,
    RouteAnswer,
    Target,
    check_name,
    duration,
)

from . import dns_srv_config
from .dns_srv_config import (DEFAULT_SRV_NAME, MAX_OPEN_QUESTIONS, Nameserver, check_template, dns_name,
                             parse_nameserver, seconds, system_nameservers)
from .options import max_open_questions

DEFAULT_TIMEOUT = 2.0
DEFAULT_LIFETIME_FLOOR = 1.0
DEFAULT_LIFETIME_CAP = 3600.0
#: retry_after for a negative answer without an SOA to say (RFC 2308 has no default; 60 s is a common choice).
NEGATIVE_TTL_WITHOUT_SOA = 60.0
#: what a non-zero SRV weight is multiplied by, so that a weight 0 (→ 1) stays "a very small chance"
WEIGHT_SCALE = 100

_OPTIONS = ("nameservers", "domain", "srv_name", "names", "timeout", "lifetime_floor", "lifetime_cap",
            "max_open_questions")
_MAX_LABEL = 63
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")
_ASYNCIO = "asyncio"


def service_label(service_name: str) -> str:
    """The DNS label ``{service}`` stands for: ``//shop/Orders`` → ``shop-orders``.

    Only ASCII letters are lowercased and kept (a non-ASCII letter is a run of "other" characters), so the label
    does not depend on Unicode case tables; runs of anything but ``a-z0-9-`` become one ``-``; ``-`` is stripped
    from both ends (a label may not start or end with one); at most 63 characters (the DNS limit). May be empty.
    """
    ascii_text = service_name.encode("ascii", "replace").decode("ascii").lower()
    return _NOT_LABEL.sub("-", ascii_text).strip("-")[:_MAX_LABEL].rstrip("-")


# --- the resolver -----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Lookup:
    """What the A and AAAA queries for one target host gave."""

    addresses: list[str] = field(default_factory=list)
    ttl: float = math.inf  #: the smallest TTL of the address RRsets that gave addresses
    errors: list[str] = field(default_factory=list)  #: lookups that failed (not "no such host")
    negative_ttl: float = math.inf  #: for "no such host": when to ask again


class DnsSrvResolver(Resolver):
    """Answers from DNS SRV records and the A/AAAA records of their targets. See the module's docstring."""

    name = "dns_srv"

    def __init__(
        self,
        *,
        nameservers: Sequence[Nameserver],
        nameservers_from: str,
        no_nameservers_reason: str | None = None,
        names: Mapping[str, dns.name.Name],
        template: str | None,
        domain: str | None,
        timeout: float = DEFAULT_TIMEOUT,
        lifetime_floor: float = DEFAULT_LIFETIME_FLOOR,
        lifetime_cap: float = DEFAULT_LIFETIME_CAP,
        max_open_questions: int = MAX_OPEN_QUESTIONS,
    ) -> None:
        self.nameservers = tuple(nameservers)
        self.nameservers_from = nameservers_from
        self._no_nameservers_reason = no_nameservers_reason
        self.names = dict(names)
        self.template = template  #: None: only ``names`` is used
        self.domain = domain
        self.timeout = timeout
        self.lifetime_floor = lifetime_floor
        self.lifetime_cap = lifetime_cap
        self.max_open_questions = max_open_questions
        self._open = anyio.Semaphore(max_open_questions)  #: a question's slot: see MAX_OPEN_QUESTIONS
        #: one dnspython resolver per nameserver, asking that one first and the others after it in the configured
        #: order: the address queries start with the nameserver that answered the SRV query, so a dead nameserver
        #: costs a question one attempt, not one per query. The first nameserver's is the one for SRV queries.
        self._resolvers = {
            ns: self._make_resolver([ns, *(other for other in self.nameservers if other != ns)])
            for ns in self.nameservers
        }
        self._backend = dns.asyncbackend.get_backend(_ASYNCIO)
        self._ns_text = ", ".join(str(ns) for ns in self.nameservers)

    def _make_resolver(self, order: Sequence[Nameserver]) -> dns.asyncresolver.Resolver:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(ns.address, ns.port) for ns in order]
        # Bounded by ``timeout`` per query; dnspython can overshoot its lifetime by a back-off step, so _query also
        # puts a deadline of its own around each query.
        resolver.lifetime = self.timeout
        resolver.timeout = self.timeout / max(2, len(order))
        resolver.cache = None
        return resolver

    # --- the mapping --------------------------------------------------------------------------------------------

    def srv_name(self, service_name: str) -> dns.name.Name:
        """The SRV name asked for ``service_name``: its ``[resolver.names]`` entry, else the template.

        Raises :class:`NotFound` when neither gives a name (no DNS answer could ever name this service).
        """
        explicit = self.names.get(service_name)
        if explicit is not None:
            return explicit
        if self.template is None:
            raise NotFound(
                f"service {service_name!r} is not in [resolver.names], and the srv_name template is off "
                "(it needs a [resolver] domain)",
                retry_after=self._clamp(NEGATIVE_TTL_WITHOUT_SOA),
            )
        label = service_label(service_name)
        if not label:
            raise NotFound(
                f"service name {service_name!r} has no letter or digit to make a DNS label of; "
                "give it an entry in [resolver.names]",
                retry_after=self._clamp(NEGATIVE_TTL_WITHOUT_SOA),
            )
        text = self.template.format(service=label, domain=self.domain or "")
        try:
            return dns.name.from_text(text)
        except dns.exception.DNSException as exc:
            raise NotFound(
                f"service {service_name!r} maps to {text!r}, which is not a valid DNS name ({exc}); "
                "give it an entry in [resolver.names]",
                retry_after=self._clamp(NEGATIVE_TTL_WITHOUT_SOA),
            ) from exc

    # --- the question -------------------------------------------------------------------------------------------

    async def resolve_route(self, service_name: str) -> RouteAnswer:
        qname = self.srv_name(service_name)
        try:
            async with self._open:
                return await self._resolve(service_name, qname)
        except ResolverError:
            raise
        except Exception as exc:  # the contract: nothing but NotFound/ResolverError leaves here
            # e.g. InvalidArgument from Target for an SRV record with port 0
            detail = exc.message if isinstance(exc, BrokerError) else repr(exc)
            raise ResolverError(f"DNS lookup of {qname} for service {service_name!r} failed: {detail}") from exc

    async def _resolve(self, service_name: str, qname: dns.name.Name) -> RouteAnswer:
        answer = await self._query(qname, dns.rdatatype.SRV)
        if answer.rrset is None:  # NODATA: the name exists, with no SRV records
            raise NotFound(
                f"DNS has no SRV records at {qname} (service {service_name!r})",
                retry_after=self._negative_ttl(answer.response),
            )
        srv_ttl = float(answer.chaining_result.minimum_ttl)
        records = [rd for rd in answer.rrset if isinstance(rd, dns.rdtypes.IN.SRV.SRV)]
        records = [rd for rd in records if rd.target != dns.name.root]
        if not records:
            raise NotFound(
                f"DNS says service {service_name!r} is decidedly not available: {qname} has only the SRV target '.'",
                retry_after=self._clamp(srv_ttl),
            )

        hosts = sorted({rd.target for rd in records})
        lookups: dict[dns.name.Name, _Lookup] = {host: _Lookup() for host in hosts}
        first = Nameserver(answer.nameserver, answer.port) if answer.nameserver and answer.port else None
        async with anyio.create_task_group() as tg:
            for host in hosts:
                for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    tg.start_soon(self._lookup_address, host, rdtype, lookups[host], first)

        failed = [f"{host}: {'; '.join(lk.errors)}" for host, lk in lookups.items() if lk.errors and not lk.addresses]
        if failed:
            raise ResolverError(
                f"SRV {qname} (service {service_name!r}) names target host(s) whose addresses could not be looked "
                f"up: {' | '.join(failed)}"
            )
        unresolved = [host for host, lk in lookups.items() if not lk.addresses]
        usable = [rd for rd in records if lookups[rd.target].addresses]
        if not usable:
            retry = min(lookups[host].negative_ttl for host in unresolved)
            raise NotFound(
                f"SRV {qname} (service {service_name!r}) names only target host(s) without an A or AAAA record: "
                f"{', '.join(str(h) for h in unresolved)}",
                retry_after=self._clamp(min(retry, srv_ttl)),
            )

        ttl = min([srv_ttl] + [lookups[rd.target].ttl for rd in usable])
        extra: dict[str, Any] = {"srv_name": str(qname), "ttl": ttl}
        if unresolved:
            extra["unresolved"] = [str(h) for h in unresolved]
        return RouteAnswer(
            service_name=service_name,
            targets=self._targets(usable, lookups),
            lifetime=self._clamp(ttl),
            source=f"DNS {first}" if first is not None else "DNS",
            extra=extra,
        )

    @staticmethod
    def _targets(records: list[dns.rdtypes.IN.SRV.SRV], lookups: Mapping[dns.name.Name, _Lookup]) -> tuple[Target, ...]:
        """SRV records (with resolved hosts) → targets, with the weight mapping of the module's docstring."""
        by_priority: dict[int, list[dns.rdtypes.IN.SRV.SRV]] = {}
        for rd in records:
            by_priority.setdefault(rd.priority, []).append(rd)
        weights: dict[tuple[int, str], int] = {}
        for priority, group in by_priority.items():
            scale = math.lcm(*(len(lookups[rd.target].addresses) for rd in group))
            for rd in group:
                addresses = lookups[rd.target].addresses
                share = (WEIGHT_SCALE * rd.weight or 1) * scale // len(addresses)
                for address in addresses:
                    host = f"[{address}]" if ":" in address else address
                    key = (priority, f"tcp://{host}:{rd.port}")
                    weights[key] = weights.get(key, 0) + share
        ordered = sorted(weights.items(), key=lambda item: (item[0][0], -item[1], item[0][1]))
        return tuple(Target(address=address, weight=weight, priority=priority) for (priority, address), weight in ordered)

    async def _lookup_address(
        self, host: dns.name.Name, rdtype: dns.rdatatype.RdataType, into: _Lookup, first: Nameserver | None
    ) -> None:
        """One A or AAAA query for a target host, to ``first`` first; results and failures go into ``into`` (never
        raises a DNS or resolver error, so one failure does not cancel the sibling queries)."""
        try:
            answer = await self._query(host, rdtype, first)
        except NotFound as exc:
            into.negative_ttl = min(into.negative_ttl, exc.retry_after or NEGATIVE_TTL_WITHOUT_SOA)
            return
        except ResolverError as exc:
            into.errors.append(f"{dns.rdatatype.to_text(rdtype)}: {exc}")
            return
        if answer.rrset is None:
            into.negative_ttl = min(into.negative_ttl, self._negative_ttl(answer.response))
            return
        into.addresses.extend(sorted(rd.to_text() for rd in answer.rrset))
        into.ttl = min(into.ttl, float(answer.chaining_result.minimum_ttl))

    async def _query(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, first: Nameserver | None = None
    ) -> dns.resolver.Answer:
        """One DNS query, bounded by ``timeout``, asking ``first`` first (when it is one of ours); dnspython's
        failures → our errors. NODATA returns an answer without an rrset (the caller decides what "no records"
        means); NXDOMAIN raises :class:`NotFound`."""
        what = f"DNS query for {qname} {dns.rdatatype.to_text(rdtype)}"
        if not self.nameservers:
            raise ResolverError(f"{what}: no nameserver to ask ({self._no_nameservers_reason or 'none configured'})")
        resolver = self._resolvers.get(first) if first is not None else None
        if resolver is None:
            resolver = self._resolvers[self.nameservers[0]]
        try:
            with anyio.fail_after(self.timeout):
                return await resolver.resolve(
                    qname, rdtype, raise_on_no_answer=False, search=False, backend=self._backend
                )
        except (TimeoutError, dns.exception.Timeout) as exc:
            raise ResolverError(f"{what} timed out after {duration(self.timeout)} ({self._nameservers_phrase()})") from exc
        except dns.resolver.NXDOMAIN as exc:
            responses: list[dns.message.Message] = list((exc.kwargs.get("responses") or {}).values())
            retry = self._negative_ttl(responses[0]) if responses else self._clamp(NEGATIVE_TTL_WITHOUT_SOA)
            raise NotFound(f"{what}: no such name (NXDOMAIN)", retry_after=retry) from exc
        except dns.resolver.NoNameservers as exc:
            raise ResolverError(f"{what} failed: {self._errors_text(exc.kwargs.get('errors') or [])}") from exc
        except dns.resolver.YXDOMAIN as exc:
            raise ResolverError(f"{what} failed: the name is too long after DNAME substitution (YXDOMAIN)") from exc
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            raise ResolverError(f"{what} failed ({self._nameservers_phrase()}): {exc}") from exc

    # --- helpers ------------------------------------------------------------------------------------------------

    def _nameservers_phrase(self) -> str:
        return f"nameserver{'s' if len(self.nameservers) > 1 else ''} {self._ns_text}"

    def _errors_text(self, errors: Sequence[Any]) -> str:
        """dnspython's per-attempt error list ``(server, tcp, port, error or rcode text, response)`` in words."""
        texts: list[str] = []
        for err in errors:
            server, tcp, port, problem = str(err[0]), bool(err[1]), err[2], err[3]
            address = server.split(":", 1)[-1].rsplit("@", 1)[0]
            where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            via = " over TCP" if tcp else ""
            if isinstance(problem, str):
                texts.append(f"{where}{via} answered {problem}")
            else:
                texts.append(f"{where}{via}: {problem}")
        return "; ".join(dict.fromkeys(texts)) or f"no nameserver gave an answer ({self._nameservers_phrase()})"

    def _negative_ttl(self, response: dns.message.Message) -> float:
        """RFC 2308: min(SOA TTL, SOA minimum) of the SOA in the authority section; else 60 s; clamped."""
        ttls = [
            min(rrset.ttl, rd.minimum)
            for rrset in response.authority
            if rrset.rdtype == dns.rdatatype.SOA
            for rd in rrset
            if isinstance(rd, dns.rdtypes.ANY.SOA.SOA)
        ]
        return self._clamp(float(min(ttls)) if ttls else NEGATIVE_TTL_WITHOUT_SOA)

    def _clamp(self, seconds: float) -> float:
        return min(max(seconds, self.lifetime_floor), self.lifetime_cap)

    def asks(self, service_name: str) -> str:
        try:
            qname = self.srv_name(service_name)
        except NotFound as exc:
            return f"the {self.name} resolver (which has no SRV name for it: {exc.message})"
        where = f" at {self._nameservers_phrase()}" if self.nameservers else " (no nameserver to ask)"
        return f"the {self.name} resolver (SRV {qname}{where})"

    def describe(self) -> dict[str, Any]:
        return {
            "resolver": self.name,
            "nameservers": [str(ns) for ns in self.nameservers],
            "nameservers_from": self.nameservers_from,
            **({"nameservers_problem": self._no_nameservers_reason} if self._no_nameservers_reason else {}),
            "srv_name": self.template if self.template is not None else "off (no domain: only [resolver.names])",
            "domain": self.domain,
            "names": {service: str(name) for service, name in sorted(self.names.items())},
            "timeout": self.timeout,
            "lifetime_floor": self.lifetime_floor,
            "lifetime_cap": self.lifetime_cap,
            "max_open_questions": self.max_open_questions,
        }


def create(options: Mapping[str, Any]) -> DnsSrvResolver:
    """The factory registered as ``dns_srv``: checks every option (a misspelt key is an error, not a default)."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(
            f"[resolver] unknown option(s) {', '.join(unknown)} for dns_srv; allowed: {', '.join(_OPTIONS)}"
        )

    no_nameservers: str | None = None
    if "nameservers" in options:
        given = options["nameservers"]
        if not isinstance(given, list) or not given:
            raise ConfigError(
                "[resolver] nameservers must be a non-empty list of 'ip' or 'ip:port' strings "
                f"(leave it out to use {dns_srv_config.RESOLV_CONF}), got {given!r}"
            )
        nameservers = [parse_nameserver(f"[resolver] nameservers[{i}]", ns) for i, ns in enumerate(given)]
        source = "config"
    else:
        nameservers, no_nameservers = system_nameservers()
        source = dns_srv_config.RESOLV_CONF

    domain: str | None = None
    if "domain" in options:
        domain = dns_name("[resolver] domain", options["domain"]).to_text(omit_final_dot=True)

    raw_names = options.get("names", {})
    if not isinstance(raw_names, Mapping):
        raise ConfigError(f"[resolver.names] must be a table of service name = SRV name, got {raw_names!r}")
    names: dict[str, dns.name.Name] = {}
    for service, srv in raw_names.items():
        try:
            check_name("service", service)
        except InvalidArgument as exc:
            raise ConfigError(f"[resolver.names] {exc.message}") from None
        names[service] = dns_name(f"[resolver.names] {service!r}", srv)

    template: str | None
    template, needs_domain = check_template(options.get("srv_name", DEFAULT_SRV_NAME))
    if needs_domain and domain is None:
        if not names:
            raise ConfigError(
                f"[resolver] domain is required for dns_srv: the srv_name template {template!r} uses {{domain}} "
                "(or list every service in [resolver.names])"
            )
        template = None
    if template is not None:
        sample = template.format(service="x" * _MAX_LABEL, domain=domain or "")
        try:
            dns.name.from_text(sample)
        except dns.exception.DNSException as exc:
            raise ConfigError(f"[resolver] srv_name {template!r} does not make a valid DNS name: {exc}") from exc

    timeout = seconds(options, "timeout", DEFAULT_TIMEOUT)
    floor = seconds(options, "lifetime_floor", DEFAULT_LIFETIME_FLOOR)
    cap = seconds(options, "lifetime_cap", DEFAULT_LIFETIME_CAP)
    open_questions = max_open_questions(options, MAX_OPEN_QUESTIONS)
    if floor > cap:
        raise ConfigError(f"[resolver] lifetime_floor ({duration(floor)}) must not be above lifetime_cap ({duration(cap)})")

    return DnsSrvResolver(
        nameservers=nameservers,
        nameservers_from=source,
        no_nameservers_reason=no_nameservers,
        names=names,
        template=template,
        domain=domain,
        timeout=timeout,
        lifetime_floor=floor,
        lifetime_cap=cap,
        max_open_questions=open_questions,
    )
