"""The ``chain`` resolver: several sources asked in turn, because the node has room for only one resolver.

A node asks exactly one resolver; a federation that keeps a few routes in a file and the rest in DNS puts both in a
chain::

    [resolver]
    kind = "chain"
    resolvers = [
      { kind = "static_file", path = "routes.toml" },
      { kind = "dns_srv", domain = "svc.example" },
    ]

Each member is built with :func:`~aiobroker.resolver.load_resolver` from its table (``kind`` picks the factory, the
rest are its options), and the members are asked in the order given:

- the first :class:`~aiobroker.resolver.RouteAnswer` wins, unchanged (its ``source`` says which member gave it); later
  members are not asked, so put the most specific source first;
- :class:`~aiobroker.resolver.NotFound` from a member means "not mine": the next one is asked;
- when every member says NotFound, so does the chain, with the smallest ``retry_after`` any of them gave (the
  soonest any source might know better);
- when no member answered and at least one could not be asked (a time-out, an unreadable file), the chain raises
  :class:`~aiobroker.resolver.ResolverError` listing every member's reason, so that ``status`` shows the real cause
  rather than a bare "not found" from a later member.

Binding requests (:meth:`~aiobroker.resolver.Resolver.resolve_binding`) go through the chain the same way: the first
:class:`~aiobroker.resolver.BindingAnswer` wins, a member's NotFound (including the default one of a member that
answers routes only) moves on to the next, and failures combine as above. The member that gave a service's route
need not be the one that gives its binding.

Members are asked one after another, never at the same time: a later member is only worth a question when the
earlier ones said no. Every member bounds its own waits, so the chain's wait is bounded by their sum.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from aiobroker.resolver import BindingAnswer, ConfigError, NotFound, Resolver, ResolverError, RouteAnswer, load_resolver

_Answer = TypeVar("_Answer", RouteAnswer, BindingAnswer)

log = logging.getLogger("aiobroker.resolvers.chain")

_OPTIONS = ("resolvers",)


class ChainResolver(Resolver):
    """Asks its members in order; see the module docstring for how their answers combine."""

    name = "chain"

    def __init__(self, members: Sequence[Resolver]) -> None:
        if not members:
            raise ValueError("a chain needs at least one resolver")
        self.members: tuple[Resolver, ...] = tuple(members)
        self.answers_bindings = any(m.answers_bindings for m in self.members)

    def _label(self, index: int) -> str:
        return f"#{index + 1} {self.members[index].name}"

    async def resolve_route(self, service_name: str) -> RouteAnswer:
        return await self._first(service_name, "route", lambda member: member.resolve_route(service_name))

    async def resolve_binding(self, service_name: str) -> BindingAnswer:
        return await self._first(service_name, "binding", lambda member: member.resolve_binding(service_name))

    async def _first(self, service_name: str, kind: str, ask: Callable[[Resolver], Awaitable[_Answer]]) -> _Answer:
        """The first member's answer to ``ask``; see the module docstring for NotFound and failures."""
        reasons: list[str] = []
        not_found_after: list[float] = []
        failed_after: list[float | None] = []
        for index, member in enumerate(self.members):
            try:
                return await ask(member)
            except NotFound as exc:
                reasons.append(f"{self._label(index)}: {exc.message}")
                if exc.retry_after is not None:
                    not_found_after.append(exc.retry_after)
            except ResolverError as exc:
                reasons.append(f"{self._label(index)}: {exc.message}")
                failed_after.append(exc.retry_after)
            except Exception as exc:
                # A member broke its contract (it may raise only ResolverError). One faulty plug-in must not take
                # the whole chain down, and the chain must keep its own contract; the traceback goes to the log.
                log.exception("resolver %s raised instead of answering a %s request for %r", self._label(index),
                              kind, service_name)
                reasons.append(f"{self._label(index)}: failed with {type(exc).__name__}: {exc}")
                failed_after.append(None)
        listing = "; ".join(reasons)
        if not failed_after:
            unknown = "knows service" if kind == "route" else "has a binding for service"
            raise NotFound(f"no resolver {unknown} {service_name!r} ({listing})",
                           retry_after=min(not_found_after, default=None))
        # Asking again is worth it once every member that failed said it might work (one that gave no time leaves
        # it to the node's own back-off); a "not found" that expires sooner is a reason to ask earlier still.
        retry_after: float | None = None
        if all(after is not None for after in failed_after):
            retry_after = min([a for a in failed_after if a is not None] + not_found_after)
        what = f"service {service_name!r}" if kind == "route" else f"a binding for service {service_name!r}"
        raise ResolverError(f"no resolver answered for {what}: {listing}", retry_after=retry_after)

    async def aclose(self) -> None:
        """Close every member, even when one fails to close; the first failure is raised at the end."""
        first: BaseException | None = None
        for index, member in enumerate(self.members):
            try:
                await member.aclose()
            except Exception as exc:
                if first is None:
                    first = exc
                else:
                    log.warning("resolver %s failed to close: %s: %s", self._label(index), type(exc).__name__, exc)
        if first is not None:
            raise first

    def asks(self, service_name: str) -> str:
        members = "; ".join(f"{self._label(i)}: {m.asks(service_name)}" for i, m in enumerate(self.members))
        return f"the {self.name} resolver (in turn, {members})"

    def describe(self) -> dict[str, Any]:
        return {"resolver": self.name, "resolvers": [member.describe() for member in self.members]}


def create(options: Mapping[str, Any]) -> ChainResolver:
    """The factory registered as ``chain``: builds every member now, so a bad member table fails at start-up."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(f"[resolver] unknown option(s) {', '.join(unknown)} for chain; allowed: resolvers")
    tables = options.get("resolvers")
    if not isinstance(tables, (list, tuple)) or not tables:
        raise ConfigError(
            "[resolver] resolvers is required for chain: a non-empty array of tables, each with a kind "
            f'(e.g. resolvers = [{{ kind = "static_file", path = "routes.toml" }}]), got {tables!r}'
        )
    members: list[Resolver] = []
    for index, table in enumerate(tables):
        where = f"[resolver] resolvers #{index + 1}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: must be a table with a kind, got {table!r}")
        kind = table.get("kind")
        if not isinstance(kind, str) or not kind:
            raise ConfigError(f"{where}: kind is required (the registered name of a resolver), got {kind!r}")
        rest = {key: value for key, value in table.items() if key != "kind"}
        try:
            members.append(load_resolver(kind, rest))
        except ConfigError as exc:
            # The member's message names its key as if it were the only [resolver]; say which member it is.
            raise ConfigError(f"{where} ({kind}): {exc.message.removeprefix('[resolver] ')}") from None
    return ChainResolver(members)
