"""The ``dns_srv`` resolver's options, checked one by one as the node reads its config: durations, DNS names,
nameserver addresses and the ``srv_name`` template. Each check raises ``ConfigError`` naming the option, what it
got and what it takes; ``dns_srv.create`` runs them.
"""

from __future__ import annotations

import ipaddress
import math
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from aiobroker.resolver import ConfigError

#: where the nameservers come from when ``nameservers`` is not given (a module attribute, so tests can point it
#: at a file of their own)
RESOLV_CONF = "/etc/resolv.conf"
#: the SRV name asked for a service unless ``srv_name`` says otherwise
DEFAULT_SRV_NAME = "_aiobroker._tcp.{service}.{domain}"
TEMPLATE_FIELDS = ("service", "domain")


#: services asked about at once by default (``max_open_questions``); the rest wait for a slot, cheaply. Each open
#: question is a few UDP queries (the SRV record, then its targets' A and AAAA) with dnspython's state for each:
#: ~13 KB while it waits. Unbounded, a storm of 1,000 services held 1,000 of them (13 MB: 1,108 bytes a DELAYED
#: message in the storm benchmark, 977 bounded to 16) and sent 3,000 queries at once at the nameserver, where a
#: forwarder such as dnsmasq handles 150 at a time by default (``dns-forward-max``) and rate limits drop bursts.
MAX_OPEN_QUESTIONS = 64


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def seconds(options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if not (is_number(value) and 0 < value < math.inf):
        raise ConfigError(f"[resolver] {key} must be a number of seconds > 0, got {value!r}")
    return float(value)


def dns_name(where: str, text: Any) -> dns.name.Name:
    """A DNS name as written in the config; always taken as absolute (a trailing dot is optional)."""
    if not isinstance(text, str) or not text.strip("."):
        raise ConfigError(f"{where} must be a DNS name such as 'brokers.example.com', got {text!r}")
    try:
        return dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise ConfigError(f"{where} {text!r} is not a valid DNS name: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Nameserver:
    address: str
    port: int

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


def parse_nameserver(where: str, text: Any) -> Nameserver:
    """``ip``, ``ip:port``, ``v6``, ``[v6]:port``. Addresses only: a nameserver's name would need a resolver."""
    if not isinstance(text, str):
        raise ConfigError(f"{where} must be a string 'ip' or 'ip:port', got {text!r}")
    host, port_text = text, "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{where} {text!r} must be '[v6 address]' or '[v6 address]:port'")
        port_text = rest[1:] if rest else "53"
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(f"{where} {text!r}: {host!r} is not an IP address (nameservers are given by address)") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{where} {text!r}: the port must be a number from 1 to 65535")
    return Nameserver(address, int(port_text))


def check_template(template: Any) -> tuple[str, bool]:
    """The ``srv_name`` template → (template, whether it needs ``{domain}``)."""
    if not isinstance(template, str) or not template:
        raise ConfigError(f"[resolver] srv_name must be a template such as {DEFAULT_SRV_NAME!r}, got {template!r}")
    fields: set[str] = set()
    try:
        for _, name, spec, conversion in string.Formatter().parse(template):
            if name is None:
                continue
            if name not in TEMPLATE_FIELDS or spec or conversion:
                raise ConfigError(
                    f"[resolver] srv_name {template!r}: {{{name}}} is not allowed; "
                    "the template may only use {service} and {domain}"
                )
            fields.add(name)
    except ValueError as exc:
        raise ConfigError(f"[resolver] srv_name {template!r} is not a valid template: {exc}") from None
    if "service" not in fields:
        raise ConfigError(
            f"[resolver] srv_name {template!r} must contain {{service}}, else every service maps to the same name"
        )
    return template, "domain" in fields


def system_nameservers() -> tuple[list[Nameserver], str | None]:
    """The nameservers in :data:`RESOLV_CONF`, and why there are none if so (an error at question time, not at
    start: the file may be written later by DHCP, and the other resolvers of a chain may still answer)."""
    try:
        system = dns.resolver.Resolver(filename=RESOLV_CONF, configure=True)
    except dns.resolver.NoResolverConfiguration as exc:
        return [], f"{RESOLV_CONF} lists no nameserver or cannot be read ({exc}), and [resolver] nameservers is not set"
    found: list[Nameserver] = []
    for ns in system.nameservers:
        if isinstance(ns, dns.nameserver.AddressAndPortNameserver):
            found.append(Nameserver(ns.address, ns.port))
        elif isinstance(ns, str):
            found.append(Nameserver(ns, system.nameserver_ports.get(ns, system.port)))
    if not found:
        return [], f"{RESOLV_CONF} lists no nameserver, and [resolver] nameservers is not set"
    return found, None
