"""A service on this node is reached through the LOCAL wildcard route before dynamic routing is asked (aiobroker's
departure from the seeds' step order): neither a resolver nor an application's BCN service stands between a sender
and a service on the same node. A real node over TCP, a real static_file resolver, a real BCN service."""

from __future__ import annotations

from pathlib import Path

import pytest

import aiobroker
from aiobroker import NodeConfig
from aiobroker.core.catalog import BCN_CONTRACT, BCN_SERVICE

pytestmark = pytest.mark.anyio


async def _local_pair(client: aiobroker.Client) -> None:
    await client.create_queue("qi")
    await client.create_queue("orders")
    await client.create_service("//shop/Client", "qi")
    await client.create_service("//shop/Orders", "orders", ["DEFAULT"])


async def _send_and_receive_at_once(client: aiobroker.Client) -> list[bytes]:
    dialog = await client.begin_dialog("//shop/Client", "//shop/Orders")
    await dialog.send("DEFAULT", b"two apples")
    # timeout 0: the message must already be in the queue when the send returns, not after some resolver answers
    batch = await client.receive("orders", max_messages=10, timeout=0)
    await batch.commit()
    return [m.body for m in batch]


async def test_a_resolver_is_not_asked_where_a_local_service_is(tmp_path: Path) -> None:
    # the resolver would even send the service elsewhere: the local service wins all the same
    routes = tmp_path / "routes.toml"
    routes.write_text('[services."//shop/Orders"]\ntargets = [{ address = "tcp://127.0.0.1:9" }]\n')
    config = NodeConfig(store="memory", listen_port=0, resolver={"kind": "static_file", "path": str(routes)})
    async with aiobroker.Node(config) as node, aiobroker.connect(node.url) as client:
        await _local_pair(client)
        assert await _send_and_receive_at_once(client) == [b"two apples"]
        status = await client.status()
        assert status["dynamic_routing"]["requests_made"] == 0
        assert status["delayed"] == {}
        diagnosis = await client.diagnose("//shop/Orders")
        assert diagnosis["steps"][-1].startswith("decision: local: step 4 (the service is on this node)")


async def test_the_bcn_service_is_not_sent_missing_route_for_a_local_service() -> None:
    async with aiobroker.Node(NodeConfig(store="memory", listen_port=0)) as node, aiobroker.connect(node.url) as client:
        await client.create_queue("bcn")
        await client.create_service(BCN_SERVICE, "bcn", [BCN_CONTRACT])
        await _local_pair(client)
        assert await _send_and_receive_at_once(client) == [b"two apples"]
        assert len(await client.receive("bcn", max_messages=10, timeout=0)) == 0, "the BCN service was asked"


async def test_a_remote_service_still_goes_to_dynamic_routing_first() -> None:
    """The seeds' order stands for a service that is not here: the BCN service is asked."""
    async with aiobroker.Node(NodeConfig(store="memory", listen_port=0)) as node, aiobroker.connect(node.url) as client:
        await client.create_queue("bcn")
        await client.create_service(BCN_SERVICE, "bcn", [BCN_CONTRACT])
        await client.create_queue("qi")
        await client.create_service("//shop/Client", "qi")
        dialog = await client.begin_dialog("//shop/Client", "//elsewhere/Orders")
        await dialog.send("DEFAULT", b"two apples")
        batch = await client.receive("bcn", max_messages=10, timeout=5)
        messages = list(batch)
        assert [m.message_type for m in messages] == [BCN_CONTRACT + "/MissingRoute"]
        assert b"<SERVICE_NAME>//elsewhere/Orders</SERVICE_NAME>" in messages[0].body
