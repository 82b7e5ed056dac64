"""Identities and remote service bindings: the catalog objects of dialog security and authorization.

An :class:`Identity` is who someone is (a certificate, perhaps its private key, perhaps bearer tokens) and what
it may do (send to services, receive from queues, administer). A :class:`Binding` says how to secure conversations
to one remote service: the remote owner's certificate, and the local identity that signs (see docs/security.md).

Both parse their certificates once, when built, and keep the parsed form beside the definition, so the core never
parses PEM on a message path. Creating checks dates against ``now``; loading from the store does not (a stored
object whose certificate has since expired still loads, and says so when used).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgument, SecurityError, UnknownObject
from ..security.certs import Credentials, check_current, credentials
from ..names import check_name
from .expiry import expiry_from_def

#: the identity of whoever did not authenticate, and of the initiator of an anonymous or unsecured dialog
PUBLIC = "public"
ANY = "*"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _names(kind: str, name: str, key: str, value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise InvalidArgument(f"{kind} {name!r}: {key} must be a list of {what} names (or \"*\" for all)")
    return tuple(dict.fromkeys(v if v == ANY else check_name(what, v) for v in value))


def _only(kind: str, d: dict[str, Any], allowed: set[str]) -> None:
    extra = set(d) - allowed
    if extra:
        raise InvalidArgument(
            f"{kind} {d.get('name')!r}: unknown field(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(allowed))}"
        )


def _pem(kind: str, name: str, key: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) or "-----BEGIN" not in value:
        raise InvalidArgument(f"{kind} {name!r}: {key} must be PEM text (-----BEGIN ...), got {str(value)[:40]!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    name: str
    certificate: str | None = None  #: PEM
    private_key: str | None = None  #: PEM; only local identities (service owners, the node) have one
    token_sha256: tuple[str, ...] = ()
    send: tuple[str, ...] = ()  #: services it may send to ("*": any)
    receive: tuple[str, ...] = ()  #: queues it may receive from ("*": any)
    admin: bool = False
    peer: bool = False  #: may link to this node as a peer node (when authorization is on)
    creds: Credentials | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_def(cls, d: dict[str, Any], now: float | None = None) -> Identity:
        _only(
            "identity", d,
            {"name", "certificate", "private_key", "tokens", "token_sha256", "send", "receive", "admin", "peer"},
        )  # fmt: skip
        name = check_name("identity", d.get("name"))
        what = f"identity {name!r}"
        certificate = _pem("identity", name, "certificate", d.get("certificate"))
        private_key = _pem("identity", name, "private_key", d.get("private_key"))
        if private_key is not None and certificate is None:
            raise InvalidArgument(f"{what}: a private_key needs its certificate")
        creds = credentials(certificate, private_key, what=what) if certificate is not None else None
        if creds is not None and now is not None:
            check_current(creds, now, what=what)
        digests = list(d.get("token_sha256") or ())
        tokens = d.get("tokens") or ()
        if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) and len(t) >= 8 for t in tokens):
            raise InvalidArgument(f"{what}: tokens must be a list of strings of at least 8 characters")
        digests += [token_digest(t) for t in tokens]
        admin, peer = d.get("admin", False), d.get("peer", False)
        for key, value in (("admin", admin), ("peer", peer)):
            if not isinstance(value, bool):
                raise InvalidArgument(f"{what}: {key} must be true or false, got {value!r}")
        return cls(
            name=name,
            certificate=certificate,
            private_key=private_key,
            token_sha256=tuple(dict.fromkeys(digests)),
            send=_names("identity", name, "send", d.get("send"), "service"),
            receive=_names("identity", name, "receive", d.get("receive"), "queue"),
            admin=admin,
            peer=peer,
            creds=creds,
        )

    def to_def(self) -> dict[str, Any]:
        """What the store keeps (the private key included; tokens as digests only)."""
        return {
            "name": self.name,
            "certificate": self.certificate,
            "private_key": self.private_key,
            "token_sha256": list(self.token_sha256),
            "send": list(self.send),
            "receive": list(self.receive),
            "admin": self.admin,
            "peer": self.peer,
        }

    def public_def(self) -> dict[str, Any]:
        """What ``list identities`` shows: never a private key or a token."""
        c = self.creds
        return {
            "name": self.name,
            "subject": c.subject if c else None,
            "fingerprint": c.fingerprint if c else None,
            "not_after": c.not_after if c else None,
            "has_private_key": self.private_key is not None,
            "tokens": len(self.token_sha256),
            "send": list(self.send),
            "receive": list(self.receive),
            "admin": self.admin,
            "peer": self.peer,
        }

    def may(self, right: str, name: str) -> bool:
        """``right``: "send" (a service), "receive" (a queue), "admin" or "peer"."""
        if right == "admin":
            return self.admin
        if right == "peer":
            return self.peer
        granted = self.send if right == "send" else self.receive
        return ANY in granted or name in granted


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    name: str
    to_service: str
    certificate: str  #: the remote service owner's certificate, PEM
    identity: str | None = None  #: the local identity that signs; None: the node's identity
    anonymous: bool = False
    origin: str = "admin"
    expires_at: float | None = None
    creds: Credentials | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_def(cls, d: dict[str, Any], now: float | None = None) -> Binding:
        _only("binding", d, {"name", "to_service", "certificate", "identity", "anonymous", "origin", "expires_at", "lifetime"})
        name = check_name("binding", d.get("name"))
        what = f"binding {name!r}"
        to_service = check_name("service", d.get("to_service"))
        certificate = _pem("binding", name, "certificate", d.get("certificate"))
        if certificate is None:
            raise InvalidArgument(f"{what}: certificate (the remote service owner's, PEM) is required")
        creds = credentials(certificate, None, what=what)
        if now is not None:
            check_current(creds, now, what=what)
        identity = d.get("identity")
        if identity is not None:
            check_name("identity", identity)
        anonymous = d.get("anonymous", False)
        if not isinstance(anonymous, bool):
            raise InvalidArgument(f"{what}: anonymous must be true or false")
        origin = d.get("origin", "admin")
        if not isinstance(origin, str) or not origin:
            raise InvalidArgument(f"{what}: origin must be a non-empty string")
        expires_at = expiry_from_def(d, now, what)
        return cls(
            name=name,
            to_service=to_service,
            certificate=certificate,
            identity=identity,
            anonymous=anonymous,
            origin=origin,
            expires_at=expires_at,
            creds=creds,
        )

    def to_def(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "to_service": self.to_service,
            "certificate": self.certificate,
            "identity": self.identity,
            "anonymous": self.anonymous,
            "origin": self.origin,
            "expires_at": self.expires_at,
        }

    def public_def(self) -> dict[str, Any]:
        c = self.creds
        d = self.to_def()
        del d["certificate"]
        d.update(subject=c.subject if c else None, fingerprint=c.fingerprint if c else None,
                 not_after=c.not_after if c else None)
        return d

    def usable(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


def require_signer(identity: Identity | None, name: str | None, what: str) -> Identity:
    """The identity a binding or service names must exist and hold a private key."""
    if identity is None:
        raise UnknownObject(f"{what}: identity {name!r} does not exist; create it first (with its certificate and private key)")
    if identity.private_key is None or identity.creds is None or identity.creds.private_key is None:
        raise SecurityError(
            f"{what}: identity {identity.name!r} has no private key here, so it cannot sign or read session keys;"
            " give it one (aiobroker cert create makes a pair)"
        )
    return identity
