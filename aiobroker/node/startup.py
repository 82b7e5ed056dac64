"""What a node decides in memory before it first writes: the core built from the store's snapshot, the config
file's objects created or checked against what is stored, and the security settings checked.

Everything that can refuse a start happens here, so a start that fails leaves the store as it found it (the
server abandons the store unwritten).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable

from ..config import NodeConfig
from ..config.memory import default_max_memory
from ..core.broker import BrokerCore
from ..core.catalog import QueueDef
from ..core.identities import require_signer
from ..core.records import Snapshot
from ..errors import BrokerError, ConfigError
from ..resolver import Resolver
from ..wire.codec import batch_bytes
from .logs import object_fields

log = logging.getLogger("aiobroker.node")


def broker_instance(snapshot: Snapshot) -> str:
    """The node's broker instance: the stored one, or a new one at the first start (stored by :func:`restore`)."""
    return snapshot.meta.get("broker_instance") or str(uuid.uuid4())


def restore(
    snapshot: Snapshot,
    instance: str,
    config: NodeConfig,
    durable: bool,
    resolver: Resolver | None,
    pages: bool,
    clock: Callable[[], float],
) -> BrokerCore:
    """Build the core of the node ``instance`` from the store's snapshot and apply the config's objects, in memory
    only."""
    cfg = config
    core = BrokerCore(
        broker_instance=instance,
        persist=durable,
        max_message_size=cfg.max_message_size,
        max_batch_bytes=batch_bytes(cfg.max_frame_size),
        receive_lease=cfg.receive_lease,
        poison_rollbacks=cfg.poison_rollbacks,
        forwarding=cfg.forwarding,
        max_hops=cfg.max_hops,
        closed_retention=cfg.closed_retention,
        resolver_name=str(cfg.resolver["kind"]) if cfg.resolver is not None else None,
        resolver_answers_bindings=bool(getattr(resolver, "answers_bindings", False)),
        resolve_timeout=cfg.resolve_timeout,
        max_delayed_per_service=cfg.max_delayed_per_service,
        max_delayed_messages=cfg.max_delayed_messages,
        max_memory=cfg.max_memory if cfg.max_memory is not None else default_max_memory(),
        page_window=cfg.queue_window if pages else None,
        node_identity=cfg.node_identity,
        authorization=cfg.authorization,
        binding_failure_cache=cfg.binding_failure_cache,
    )
    for warning in core.load(snapshot, clock()):
        log.warning("while restoring state: %s", warning)
    if "broker_instance" not in snapshot.meta:
        core.changes.meta["broker_instance"] = instance
    apply_config_objects(core, cfg, clock)
    check_security(core, cfg)
    return core


def apply_config_objects(core: BrokerCore, config: NodeConfig, clock: Callable[[], float]) -> None:
    """Create the config file's objects that do not exist; one that exists must match it. Identities come
    first (services name their owners, bindings their signers); the rest in the config's order."""
    objects = sorted(config.objects, key=lambda o: o[0] != "identity")
    for kind, definition in objects:
        name = str(definition.get("name"))
        try:
            existing = core.catalog.table(kind).get(name)
            if existing is None:
                core.create_object(kind, dict(definition), clock())
                log.info(
                    "created %s %r from the config file", kind.replace("_", " "), name, extra=object_fields(kind, name)
                )
                continue
            wanted = core.catalog.build(kind, dict(definition), clock())
            if isinstance(existing, QueueDef) and isinstance(wanted, QueueDef) and existing.status != wanted.status:
                # A queue's status is the node's to change at run time (poison-message handling turns it off)
                # as much as an operator's: the stored one stands, or a node whose queue was disabled could
                # never start again on its own config file.
                log.warning(
                    "queue %r is %s although the config file says %s; it stays %s (aiobroker alter queue %s"
                    " --status %s changes it)", name, _onoff(existing.status), _onoff(wanted.status),
                    _onoff(existing.status), name, _onoff(wanted.status), extra={"queue": name},
                )
                wanted = dataclasses.replace(wanted, status=existing.status)
            if isinstance(existing, QueueDef) and isinstance(wanted, QueueDef) and existing != wanted:
                bounds = {"max_messages": wanted.max_messages, "max_bytes": wanted.max_bytes}
                if dataclasses.replace(existing, max_messages=wanted.max_messages, max_bytes=wanted.max_bytes) == wanted:
                    # a queue's bounds follow the config file: raising one is how an operator makes room
                    existing = core.alter_queue(name, bounds)
                    log.info("queue %r: bounds from the config file: %s", name, bounds, extra={"queue": name})
            if existing != wanted:
                shown = existing.public_def() if hasattr(existing, "public_def") else existing.to_def()
                raise ConfigError(
                    f"it exists with another definition ({shown}); drop it first, or change the"
                    " config to match"
                )
        except BrokerError as exc:
            raise ConfigError(f"config {kind.replace('_', ' ')} {name!r}: {exc.message}") from exc

def check_security(core: BrokerCore, config: NodeConfig) -> None:
    """The node's identity must exist with a private key; say how authorization stands."""
    cfg, catalog = config, core.catalog
    if cfg.node_identity is not None:
        try:
            require_signer(catalog.identities.get(cfg.node_identity), cfg.node_identity, "[security] identity")
        except BrokerError as exc:
            raise ConfigError(
                f"config {exc.message}; add an [[identity]] named {cfg.node_identity!r} with certificate and"
                " private_key"
            ) from exc
    if cfg.authorization:
        admins = [i.name for i in catalog.identities.values() if i.admin]
        log.info(
            "authorization on: %d identit%s, admin: %s",
            len(catalog.identities),
            "y" if len(catalog.identities) == 1 else "ies",
            ", ".join(admins) or "none",
        )
        if not admins:
            log.warning(
                "authorization is on but no identity has admin, so no client can create, alter or drop objects;"
                " add an [[identity]] with admin = true and a token to the config file"
            )


def _onoff(switch: bool) -> str:
    return "on" if switch else "off"
