"""The names and addresses that the node and a resolver plug-in both check: an object's name, and a peer's
``tcp://host:port``. Pure (no I/O), importing nothing of aiobroker but its errors, so that the core and the plug-in
interface (:mod:`aiobroker.resolver`) can share them without the one importing the other."""

from __future__ import annotations

from typing import Any

from .errors import InvalidArgument

MAX_NAME_BYTES = 256


def check_name(kind: str, name: Any) -> str:
    """A name is a non-empty string of at most 256 UTF-8 bytes with no control characters."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{kind} name must be a non-empty string, got {name!r}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidArgument(f"{kind} name {name[:40]!r}... is over {MAX_NAME_BYTES} UTF-8 bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidArgument(f"{kind} name {name!r} contains a control character")
    return name


def parse_tcp_address(address: str) -> tuple[str, int]:
    """``tcp://host:port`` (IPv6 as ``tcp://[::1]:port``) → (host, port); anything else is InvalidArgument.
    ``tls://host:port``, what a node with ``[tls]`` calls itself, is the same: a node's links all use TLS or none
    do (its ``[tls]`` decides), so the scheme only has to agree with that, which the link checks."""
    if not isinstance(address, str) or not address.startswith(("tcp://", "tls://")):
        raise InvalidArgument(
            f"address {address!r} must be tcp://host:port, LOCAL or TRANSPORT (or tls://host:port: a node with [tls])"
        )
    rest = address[len("tcp://") :].split("/", 1)[0]
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
        ok = bool(sep)
    else:
        host, _, port_text = rest.rpartition(":")
        ok = True
    if not ok or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidArgument(f"address {address!r} must be {address[:3]}://host:port with a port from 1 to 65535")
    return host, int(port_text)


def parse_tcp_addresses(address: str) -> list[tuple[str, str, int]]:
    """A route's address: one node's ``tcp://host:port``, or several nodes' with commas, an owner and its standbys
    (``tcp://a:4022,b:4022``; each may repeat the scheme, which must be the first one's) → ``[(url, host, port)]``
    in the order given. Anything else is InvalidArgument."""
    if not isinstance(address, str) or "," not in address:
        host, port = parse_tcp_address(address)
        return [(address, host, port)]
    scheme = address[: len("tcp://")]
    parts = [part.strip() for part in address.split(",")]
    found = []
    for part in parts:
        url = part if "://" in part else scheme + part
        if not part or not url.startswith(scheme):
            raise InvalidArgument(
                f"address {address!r}: each of several addresses is host:port or {scheme}host:port, with commas"
                f" between them and one scheme for all (got {part!r})"
            )
        found.append((url, *parse_tcp_address(url)))
    return found
