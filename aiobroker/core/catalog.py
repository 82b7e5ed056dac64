"""The catalog: message types, contracts, queues and services, checked when created.

Definitions are frozen classes built from plain dicts (what a client, the CLI or a config file sends) by
``from_def`` and turned back by ``to_def`` (what the store keeps and ``list`` shows). Every check raises a
:class:`~aiobroker.errors.BrokerError` that names the object and the rule, and a failed create changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import DuplicateObject, InvalidArgument, ObjectInUse, UnknownObject
from .identities import Binding, Identity, require_signer
from ..names import MAX_NAME_BYTES, check_name  # noqa: F401 - check_name is part of this module's interface
from .records import DIALOG_TIMER as DIALOG_TIMER, ERROR as ERROR, URGENT_TYPES as URGENT_TYPES  # re-exported
from .routing import AUTO_CREATED_LOCAL, Route

# System message types, allowed on every contract (SEMANTICS.md, Objects). Their names are the seeds' own.
# ERROR and DIALOG_TIMER, the URGENT_TYPES (handed out before the rest of their group, and put back in front on a
# rollback: they change what the application should do with the other messages), are named in records.py, since a
# store that pages must know them too (it never leaves them in itself only).
END_DIALOG = "http://schemas.microsoft.com/SQL/ServiceBroker/EndDialog"
SYSTEM_MESSAGE_TYPES = frozenset({END_DIALOG, ERROR, DIALOG_TIMER})

#: Built in, as in the seeds' system: a message type with no validation and a contract that lets either side
#: send it, so a first conversation needs no set-up beyond a queue and a service.
DEFAULT = "DEFAULT"

# Dynamic routing (the seeds): the Broker Configuration Notice service, its contract and its requests, in both
# spellings of the schema address (the seeds themselves use both).
BCN_SERVICE = "SQL/ServiceBroker/BrokerConfiguration"
BCN_CONTRACT = "http://schemas.microsoft.com/SQL/ServiceBroker/BrokerConfigurationNotice"
BCN_CONTRACT_HTTPS = "https://schemas.microsoft.com/SQL/ServiceBroker/BrokerConfigurationNotice"
MISSING_ROUTE = BCN_CONTRACT + "/MissingRoute"
MISSING_BINDING = BCN_CONTRACT + "/MissingRemoteServiceBinding"
BCN_MESSAGE_TYPES = {
    BCN_CONTRACT: (MISSING_ROUTE, MISSING_BINDING),
    BCN_CONTRACT_HTTPS: (BCN_CONTRACT_HTTPS + "/MissingRoute", BCN_CONTRACT_HTTPS + "/MissingRemoteServiceBinding"),
}
#: The node's own service that asks the BCN service, and its queue; what arrives there (the BCN service ending
#: a request, with or without an error) is consumed by the dispatcher, never by an application.
DISPATCHER_SERVICE = "aiobroker/DynamicRouting"
DISPATCHER_QUEUE = "aiobroker/dynamic-routing"

VALIDATIONS = ("none", "empty", "msgpack", "json", "xml")
SENT_BY = ("initiator", "target", "any")
KINDS = ("message_type", "contract", "queue", "service", "route", "identity", "binding")


def _only_keys(kind: str, d: dict[str, Any], allowed: set[str]) -> None:
    extra = set(d) - allowed
    if extra:
        raise InvalidArgument(
            f"{kind} {d.get('name')!r}: unknown field(s) {', '.join(sorted(extra))};"
            f" allowed: {', '.join(sorted(allowed))}"
        )


def _on_off(kind: str, name: str, key: str, value: Any) -> bool:
    """A queue's switch: spelled "on" or "off" (as Service Broker's STATUS = ON), true or false accepted too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("on", "off"):
        return value.strip().lower() == "on"
    raise InvalidArgument(f'{kind} {name!r}: {key} must be "on" or "off" (true and false are accepted too), got {value!r}')


def _bound(name: str, key: str, value: Any) -> int | None:
    """A queue's bound: a whole number >= 1, or None (or "none") for no bound."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise InvalidArgument(f'queue {name!r}: {key} must be a whole number >= 1, or "none" for no bound; got {value!r}')


def on_off_word(value: bool) -> str:
    return "on" if value else "off"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageType:
    name: str
    validation: str = "none"

    @classmethod
    def from_def(cls, d: dict[str, Any]) -> MessageType:
        _only_keys("message type", d, {"name", "validation"})
        name = check_name("message type", d.get("name"))
        validation = d.get("validation", "none")
        if validation not in VALIDATIONS:
            raise InvalidArgument(
                f"message type {name!r}: validation {validation!r} is not one of {', '.join(VALIDATIONS)}"
            )
        return cls(name=name, validation=validation)

    def to_def(self) -> dict[str, Any]:
        return {"name": self.name, "validation": self.validation}


@dataclass(frozen=True, slots=True, kw_only=True)
class Contract:
    name: str
    messages: dict[str, str]  #: message type → sent_by
    #: derived: the types each side may send (system types excluded; they are always allowed)
    initiator_may_send: frozenset[str] = field(default=frozenset(), compare=False)
    target_may_send: frozenset[str] = field(default=frozenset(), compare=False)

    @classmethod
    def from_def(cls, d: dict[str, Any]) -> Contract:
        _only_keys("contract", d, {"name", "messages"})
        name = check_name("contract", d.get("name"))
        messages = d.get("messages")
        if not isinstance(messages, dict) or not messages:
            raise InvalidArgument(f"contract {name!r}: messages must be a non-empty map of message type to sent_by")
        for mt, sent_by in messages.items():
            check_name("message type", mt)
            if sent_by not in SENT_BY:
                raise InvalidArgument(
                    f"contract {name!r}: message type {mt!r} has sent_by {sent_by!r}; use one of {', '.join(SENT_BY)}"
                )
            if mt in SYSTEM_MESSAGE_TYPES:
                raise InvalidArgument(f"contract {name!r}: {mt!r} is a system message type, allowed on every contract")
        init = frozenset(mt for mt, s in messages.items() if s in ("initiator", "any"))
        targ = frozenset(mt for mt, s in messages.items() if s in ("target", "any"))
        if not init:
            raise InvalidArgument(f"contract {name!r}: the initiator must be allowed to send at least one message type")
        return cls(name=name, messages=dict(messages), initiator_may_send=init, target_may_send=targ)

    def to_def(self) -> dict[str, Any]:
        return {"name": self.name, "messages": dict(self.messages)}

    def may_send(self, is_initiator: bool) -> frozenset[str]:
        return self.initiator_may_send if is_initiator else self.target_may_send


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueDef:
    name: str
    status: bool = True
    retention: bool = False
    poison_message_handling: bool = True
    #: the queue's bounds (None: none): messages it holds (waiting, locked, retained), and their bodies' bytes;
    #: a send that would go past either is refused whole (the policy "refuse new")
    max_messages: int | None = None
    max_bytes: int | None = None

    @property
    def bounded(self) -> bool:
        return self.max_messages is not None or self.max_bytes is not None

    @classmethod
    def from_def(cls, d: dict[str, Any]) -> QueueDef:
        _only_keys("queue", d, {"name", "status", "retention", "poison_message_handling", "max_messages", "max_bytes"})
        name = check_name("queue", d.get("name"))
        return cls(
            name=name,
            status=_on_off("queue", name, "status", d.get("status", True)),
            retention=_on_off("queue", name, "retention", d.get("retention", False)),
            poison_message_handling=_on_off(
                "queue", name, "poison_message_handling", d.get("poison_message_handling", True)
            ),
            max_messages=_bound(name, "max_messages", d.get("max_messages")),
            max_bytes=_bound(name, "max_bytes", d.get("max_bytes")),
        )

    def to_def(self) -> dict[str, Any]:
        """As stored (booleans; a bound only when there is one)."""
        d: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "retention": self.retention,
            "poison_message_handling": self.poison_message_handling,
        }
        if self.max_messages is not None:
            d["max_messages"] = self.max_messages
        if self.max_bytes is not None:
            d["max_bytes"] = self.max_bytes
        return d

    def public_def(self) -> dict[str, Any]:
        """As the node answers clients (``list``, ``create``, ``alter``): the switches spelled "on" or "off", as
        ``status`` reports a queue, the CLI's flags take them and a config file writes them."""
        d: dict[str, Any] = {
            "name": self.name,
            "status": on_off_word(self.status),
            "retention": on_off_word(self.retention),
            "poison_message_handling": on_off_word(self.poison_message_handling),
        }
        if self.max_messages is not None:
            d["max_messages"] = self.max_messages
        if self.max_bytes is not None:
            d["max_bytes"] = self.max_bytes
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    name: str
    queue: str
    contracts: tuple[str, ...] = ()
    #: the identity whose private key reads the session keys of secured conversations to this service (None: the
    #: node's identity)
    owner: str | None = None

    @classmethod
    def from_def(cls, d: dict[str, Any]) -> Service:
        _only_keys("service", d, {"name", "queue", "contracts", "owner"})
        name = check_name("service", d.get("name"))
        queue = check_name("queue", d.get("queue"))
        contracts = d.get("contracts", [])
        if not isinstance(contracts, (list, tuple)):
            raise InvalidArgument(f"service {name!r}: contracts must be a list of contract names")
        for c in contracts:
            check_name("contract", c)
        owner = d.get("owner")
        if owner is not None:
            check_name("identity", owner)
        return cls(name=name, queue=queue, contracts=tuple(dict.fromkeys(contracts)), owner=owner)

    def to_def(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "queue": self.queue, "contracts": list(self.contracts)}
        if self.owner is not None:
            d["owner"] = self.owner
        return d


CatalogObject = MessageType | Contract | QueueDef | Service | Route | Identity | Binding
_CLASSES: dict[str, Any] = {
    "message_type": MessageType,
    "contract": Contract,
    "queue": QueueDef,
    "service": Service,
    "route": Route,
    "identity": Identity,
    "binding": Binding,
}
#: kinds whose from_def takes ``now`` (a lifetime, a certificate's dates)
_TIMED = (Route, Identity, Binding)


def check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise InvalidArgument(f"unknown object kind {kind!r}; use one of {', '.join(KINDS)}")
    return str(kind)


class Catalog:
    """The node's named objects, with their cross-references checked both ways."""

    def __init__(self) -> None:
        self.message_types: dict[str, MessageType] = {DEFAULT: MessageType(name=DEFAULT)}
        self.contracts: dict[str, Contract] = {DEFAULT: Contract.from_def({"name": DEFAULT, "messages": {DEFAULT: "any"}})}
        self.queues: dict[str, QueueDef] = {DISPATCHER_QUEUE: QueueDef(name=DISPATCHER_QUEUE)}
        self.services: dict[str, Service] = {DISPATCHER_SERVICE: Service(name=DISPATCHER_SERVICE, queue=DISPATCHER_QUEUE)}
        for contract, types in BCN_MESSAGE_TYPES.items():
            for mt in types:
                self.message_types[mt] = MessageType(name=mt, validation="xml")
            self.contracts[contract] = Contract.from_def({"name": contract, "messages": dict.fromkeys(types, "initiator")})
        #: a fresh node has the seeds' wildcard LOCAL route; the core stores it at first start, so a drop lasts
        self.routes: dict[str, Route] = {AUTO_CREATED_LOCAL.name: AUTO_CREATED_LOCAL}
        self.identities: dict[str, Identity] = {}
        self.bindings: dict[str, Binding] = {}
        #: the node's identity: the owner of services that name none, the signer of bindings that name none
        self.node_identity: str | None = None
        #: lookups by token digest, by certificate fingerprint, and bindings by service; rebuilt after a change
        self._identity_index: tuple[dict[str, Identity], dict[str, Identity]] | None = None
        self._binding_index: dict[str, Binding] | None = None
        #: routes by the service they name (None: wildcards), in the order of ``routes``: routing decides per
        #: conversation, and must not scan every route each time (a resolver makes one per service). Kept up to
        #: date as a resolver adds or drops its routes (rebuilding it after each of 1,000 answers walked every
        #: route each time); rebuilt on first use after any other change
        self._route_index: dict[str | None, list[Route]] | None = None
        #: (kind, name) of the objects every node has; they cannot be dropped (routes can, as in the seeds)
        self.builtins = {(k, n) for k in ("message_type", "contract", "queue", "service") for n in self.table(k)}

    def table(self, kind: str) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = {
            "message_type": self.message_types,
            "contract": self.contracts,
            "queue": self.queues,
            "service": self.services,
            "route": self.routes,
            "identity": self.identities,
            "binding": self.bindings,
        }
        return tables[check_kind(kind)]

    def build(self, kind: str, definition: dict[str, Any], now: float | None = None) -> CatalogObject:
        """Check a definition against the rules and the catalog, without changing anything. ``now`` turns a
        route's ``lifetime`` into its expiry."""
        if not isinstance(definition, dict):
            raise InvalidArgument(f"a {kind} definition is a map of fields, got {type(definition).__name__}")
        cls = _CLASSES[check_kind(kind)]
        obj: CatalogObject = cls.from_def(definition, now) if cls in _TIMED else cls.from_def(definition)
        if isinstance(obj, Contract):
            for mt in obj.messages:
                if mt not in self.message_types:
                    raise UnknownObject(f"contract {obj.name!r}: message type {mt!r} does not exist; create it first")
        elif isinstance(obj, Service):
            if obj.queue not in self.queues:
                raise UnknownObject(f"service {obj.name!r}: queue {obj.queue!r} does not exist; create it first")
            for c in obj.contracts:
                if c not in self.contracts:
                    raise UnknownObject(f"service {obj.name!r}: contract {c!r} does not exist; create it first")
            if obj.owner is not None:
                require_signer(self.identities.get(obj.owner), obj.owner, f"service {obj.name!r}: owner")
        elif isinstance(obj, Binding):
            if not obj.anonymous:
                signer = obj.identity or self.node_identity
                if signer is None:
                    raise UnknownObject(
                        f"binding {obj.name!r}: name the local identity that signs for the initiator (identity),"
                        " set the node's [security] identity, or make the binding anonymous"
                    )
                require_signer(self.identities.get(signer), signer, f"binding {obj.name!r}")
            elif obj.identity is not None and obj.identity not in self.identities:
                raise UnknownObject(f"binding {obj.name!r}: identity {obj.identity!r} does not exist")
            other = self.binding_for(obj.to_service)
            if other is not None and other.name != obj.name and other.origin == obj.origin:
                raise DuplicateObject(
                    f"binding {obj.name!r}: service {obj.to_service!r} has binding {other.name!r} already;"
                    " drop it first"
                )
        return obj

    def create(self, kind: str, definition: dict[str, Any], now: float | None = None) -> CatalogObject:
        obj = self.build(kind, definition, now)
        table = self.table(kind)
        if obj.name in table:
            raise DuplicateObject(f"{kind.replace('_', ' ')} {obj.name!r} exists already; drop it first or pick another name")
        table[obj.name] = obj
        self._changed(kind)
        return obj

    def _changed(self, kind: str) -> None:
        if kind == "route":
            self._route_index = None
        elif kind == "identity":
            self._identity_index = None
        elif kind == "binding":
            self._binding_index = None

    def replace(self, kind: str, obj: CatalogObject) -> None:
        """Put an altered object in place (the caller built it with :meth:`build`)."""
        self.table(kind)[obj.name] = obj
        self._changed(kind)

    def get(self, kind: str, name: str) -> Any:
        obj = self.table(kind).get(name)
        if obj is None:
            raise UnknownObject(f"{kind.replace('_', ' ')} {name!r} does not exist")
        return obj

    def users_of(self, kind: str, name: str) -> list[str]:
        """Objects that refer to ``kind``/``name`` and so stop it from being dropped."""
        if kind == "message_type":
            return [f"contract {c.name!r}" for c in self.contracts.values() if name in c.messages]
        if kind == "contract":
            return [f"service {s.name!r}" for s in self.services.values() if name in s.contracts]
        if kind == "queue":
            return [f"service {s.name!r}" for s in self.services.values() if s.queue == name]
        if kind == "identity":
            return [f"service {s.name!r}" for s in self.services.values() if s.owner == name] + [
                f"binding {b.name!r}" for b in self.bindings.values() if b.identity == name
            ]
        return []

    def drop(self, kind: str, name: str) -> CatalogObject:
        obj: CatalogObject = self.get(kind, name)
        if (kind, name) in self.builtins:
            raise ObjectInUse(f"the built-in {kind.replace('_', ' ')} {name!r} cannot be dropped")
        users = self.users_of(kind, name)
        if users:
            raise ObjectInUse(
                f"{kind.replace('_', ' ')} {name!r} is used by {', '.join(users)}; drop or alter those first"
            )
        del self.table(kind)[name]
        self._changed(kind)
        return obj

    def load(self, kind: str, definition: dict[str, Any]) -> None:
        """Restore an object read back from the store (trusted: no cross-reference checks)."""
        obj: CatalogObject = _CLASSES[check_kind(kind)].from_def(definition)
        self.table(kind)[obj.name] = obj
        self._changed(kind)

    def put_route(self, route: Route) -> None:
        old = self.routes.get(route.name)
        self.routes[route.name] = route
        index = self._route_index
        if index is None:
            return
        if old is None:  # a new name goes last in ``routes``, so last among its service's routes too
            index.setdefault(route.service_name, []).append(route)
        elif old.service_name == route.service_name:  # renewed: it keeps its place, as in ``routes``
            same = index[route.service_name]
            same[next(i for i, r in enumerate(same) if r is old)] = route
        else:
            self._route_index = None

    def remove_route(self, name: str) -> None:
        old = self.routes.pop(name, None)
        index = self._route_index
        if old is not None and index is not None:
            same = index[old.service_name]
            del same[next(i for i, r in enumerate(same) if r is old)]
            if not same:
                del index[old.service_name]

    def clear_routes(self) -> None:
        self.routes.clear()
        self._route_index = None

    def routes_for(self, service: str) -> list[Route]:
        """The routes routing can use for ``service``: those naming it, the wildcards, and those naming the BCN
        service (whose existence turns step 4 on)."""
        index = self._route_index
        if index is None:
            index = self._route_index = {}
            for route in self.routes.values():
                index.setdefault(route.service_name, []).append(route)
        out = index.get(service, []) + index.get(None, [])
        if service != BCN_SERVICE:
            out += index.get(BCN_SERVICE, [])
        return out

    # ------------------------------------------------------------------------------------------- security

    def put_binding(self, binding: Binding) -> None:
        self.bindings[binding.name] = binding
        self._binding_index = None

    def remove_binding(self, name: str) -> None:
        if self.bindings.pop(name, None) is not None:
            self._binding_index = None

    def binding_for(self, service: str, now: float | None = None) -> Binding | None:
        """The binding for ``service`` (an administrator's before a resolver's), if any and, given ``now``, not
        expired."""
        index = self._binding_index
        if index is None:
            index = self._binding_index = {}
            for b in sorted(self.bindings.values(), key=lambda b: b.origin != "admin", reverse=True):
                index[b.to_service] = b  # the administrator's, written last, wins
        binding = index.get(service)
        if binding is not None and now is not None and not binding.usable(now):
            return None
        return binding

    def _identities(self) -> tuple[dict[str, Identity], dict[str, Identity]]:
        index = self._identity_index
        if index is None:
            by_token: dict[str, Identity] = {}
            by_fpr: dict[str, Identity] = {}
            for ident in self.identities.values():
                for digest in ident.token_sha256:
                    by_token[digest] = ident
                if ident.creds is not None:
                    by_fpr[ident.creds.fingerprint] = ident
            index = self._identity_index = (by_token, by_fpr)
        return index

    def identity_by_token_digest(self, digest: str) -> Identity | None:
        return self._identities()[0].get(digest)

    def identity_by_fingerprint(self, fingerprint: str) -> Identity | None:
        return self._identities()[1].get(fingerprint)

    def may(self, identity: str, right: str, name: str) -> bool:
        """Whether ``identity`` (a name; ``public`` for nobody in particular) has ``right`` on ``name``."""
        ident = self.identities.get(identity)
        return ident is not None and ident.may(right, name)

    def owner_of(self, service: str) -> Identity | None:
        """The identity whose key reads session keys for ``service`` (its owner, else the node's identity)."""
        svc = self.services.get(service)
        name = (svc.owner if svc is not None else None) or self.node_identity
        return self.identities.get(name) if name is not None else None

    def statistics(self) -> dict[str, int]:
        return {k: len(self.table(k)) for k in KINDS}

    def __repr__(self) -> str:
        s = self.statistics()
        return "<Catalog " + " ".join(f"{k}s={v}" for k, v in s.items()) + ">"
