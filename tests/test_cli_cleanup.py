"""Dropping a service and cleaning up conversations from the command line, as an operator does it: the CLI run
as a process against a node process. What the operator reads must be the CLI's words, and nothing may go on
saying it waits for something that can no longer answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_process import NodeProcess, wait_for

from aiobroker.core.catalog import BCN_CONTRACT, BCN_SERVICE

pytestmark = pytest.mark.slow

AIOBROKER = [str(Path(sys.executable).with_name("aiobroker"))]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    running = NodeProcess(tmp_path / "data").start()
    try:
        yield running
    finally:
        assert running.stop() == 0, running.output()


def cli(node: NodeProcess, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIOBROKER_ADDRESS": node.url}
    done = subprocess.run([*AIOBROKER, *args], capture_output=True, text=True, timeout=30, env=env)
    if ok:
        assert done.returncode == 0, f"aiobroker {' '.join(args)}: {done.stderr}"
    return done


def delayed(node: NodeProcess) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(cli(node, "status", "--json").stdout)
    return status["delayed"]  # type: ignore[no-any-return]


def handles_of(node: NodeProcess, service: str) -> list[str]:
    listed = json.loads(cli(node, "list", "conversations", "--json").stdout)
    return [c["handle"] for c in listed if c["service"] == service and c["state_desc"] != "closed"]


def test_drop_service_with_open_conversations_says_what_to_run_and_cleanup_lets_it_go(node: NodeProcess) -> None:
    cli(node, "create", "queue", "qa")
    cli(node, "create", "service", "svcA", "--queue", "qa")
    handle = cli(node, "send", "--from", "svcA", "--to", "svcNowhere", "--body", "x").stdout.strip()

    refused = cli(node, "drop", "service", "svcA", ok=False)
    assert refused.returncode == 1
    assert "cleanup=True" not in refused.stderr  # Python's wording, not the command line's
    assert "aiobroker end HANDLE --cleanup" in refused.stderr and handle in refused.stderr

    cli(node, "end", handle, "--cleanup")
    cli(node, "drop", "service", "svcA")
    assert "svcA" not in [s["name"] for s in json.loads(cli(node, "list", "services", "--json").stdout)]


def test_a_request_whose_bcn_side_is_cleaned_up_stops_being_waited_on(node: NodeProcess) -> None:
    """The BCN service's side of a MissingRoute request removed with end --cleanup: the request has failed (the
    node asks again later), and once the BCN service is dropped too, nothing says it waits for it any more."""
    cli(node, "create", "queue", "bcn")
    cli(node, "create", "service", BCN_SERVICE, "--queue", "bcn", "--contract", BCN_CONTRACT)
    cli(node, "create", "queue", "qa")
    cli(node, "create", "service", "svcA", "--queue", "qa")
    cli(node, "send", "--from", "svcA", "--to", "svcNowhere", "--body", "waits")
    assert "asked the Broker Configuration Notice service" in delayed(node)["svcNowhere"]["reason"]

    # the node asks for the route and the binding at once: two requests at the BCN service, both removed
    def both() -> list[str] | None:
        handles = handles_of(node, BCN_SERVICE)
        return handles if len(handles) == 2 else None

    requests = wait_for(both, 10, "the MissingRoute and MissingRemoteServiceBinding requests at the BCN service")
    for request in requests:
        cli(node, "end", request, "--cleanup")
    reason = delayed(node)["svcNowhere"]["reason"]
    assert "asked the Broker Configuration Notice service" not in reason
    assert "side of the request was removed (end --cleanup)" in reason

    cli(node, "drop", "service", BCN_SERVICE)
    reason = delayed(node)["svcNowhere"]["reason"]
    assert "Broker Configuration Notice" not in reason and "no route" in reason


def test_a_typo_in_send_to_warns_and_names_the_nearest_local_services(node: NodeProcess) -> None:
    cli(node, "create", "queue", "orders")
    cli(node, "create", "queue", "shop")
    cli(node, "create", "service", "//shop/Orders", "--queue", "orders", "--contract", "DEFAULT")
    cli(node, "create", "service", "//shop/Client", "--queue", "shop")

    typo = cli(node, "send", "--from", "//shop/Client", "--to", "//shop/Order", "--body", "two apples")
    assert typo.returncode == 0 and typo.stdout.strip()  # stored all the same: the handle is printed
    assert "warning: no route, resolver or local service matches '//shop/Order'" in typo.stderr
    assert "Did you mean '//shop/Orders'?" in typo.stderr
    assert delayed(node)["//shop/Order"]["messages"] == 1

    right = cli(node, "send", "--from", "//shop/Client", "--to", "//shop/Orders", "--body", "two apples")
    assert right.stderr == ""
    begun = cli(node, "begin", "//shop/Client", "//shop/Order")
    assert "Did you mean '//shop/Orders'?" in begun.stderr


def test_no_warning_where_dynamic_routing_will_ask_or_a_route_exists(node: NodeProcess) -> None:
    cli(node, "create", "queue", "shop")
    cli(node, "create", "service", "//shop/Client", "--queue", "shop")
    cli(node, "create", "route", "to-far", "tcp://127.0.0.1:9", "--service", "//far/Service")
    routed = cli(node, "send", "--from", "//shop/Client", "--to", "//far/Service", "--body", "x")
    assert "warning" not in routed.stderr

    cli(node, "create", "queue", "bcn")
    cli(node, "create", "service", BCN_SERVICE, "--queue", "bcn", "--contract", BCN_CONTRACT)
    asked = cli(node, "send", "--from", "//shop/Client", "--to", "//unknown/Service", "--body", "x")
    assert "warning" not in asked.stderr
