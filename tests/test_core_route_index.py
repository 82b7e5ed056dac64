"""The catalog's routes by service (``Catalog.routes_for``), kept up to date as a resolver adds, renews and drops
its routes, must always equal the index built afresh from every route, in the same order (routing reads its order:
equal ranks share the load in it)."""

from __future__ import annotations

import random

from aiobroker.core.catalog import BCN_SERVICE, Catalog
from aiobroker.core.routing import Route


def fresh(catalog: Catalog, service: str) -> list[Route]:
    rebuilt = Catalog()
    rebuilt.clear_routes()
    for route in catalog.routes.values():
        rebuilt.put_route(route)
    return rebuilt.routes_for(service)


def route(name: str, service: str | None, port: int) -> Route:
    return Route(name=name, address=f"tcp://10.0.0.{port % 250 + 1}:4022", service_name=service, origin="test")


def test_routes_for_equals_a_fresh_index_through_puts_renewals_moves_and_removals() -> None:
    rng = random.Random(16)
    catalog = Catalog()
    services = [f"svc{i}" for i in range(6)] + [None, BCN_SERVICE]
    catalog.routes_for("svc0")  # the index exists from here on: every change below updates it in place
    for step in range(600):
        name = f"r{rng.randrange(40)}"
        if rng.random() < 0.3 and name in catalog.routes:
            catalog.remove_route(name)
        else:  # new, renewed for the same service, or moved to another service
            catalog.put_route(route(name, rng.choice(services), step))
        for service in services:
            if service is not None:
                assert catalog.routes_for(service) == fresh(catalog, service), f"step {step}: {service}"
