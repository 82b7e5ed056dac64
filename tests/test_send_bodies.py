"""A send as one message type and its bodies (docs/protocol.md): what the client sends for a batch of one type, and
what a node does with it: the same as with [type, body] pairs, message for message, failure for failure.

A node in this process, a real client over loopback TCP; the requests the client makes are read where it makes
them (its ``start_request``), the node's answers through the client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import aiobroker
from aiobroker import NodeConfig
from aiobroker.errors import ContractViolation, InvalidArgument, MessageTooLarge

pytestmark = pytest.mark.anyio


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[aiobroker.Node]:
    config = NodeConfig(store="sqlite", data_dir=tmp_path / "data", listen_port=0, max_message_size=1024)
    async with aiobroker.Node(config) as n:
        yield n


async def _pair(client: aiobroker.Client, validation: str = "none") -> aiobroker.Dialog:
    await client.create_message_type("Checked", validation=validation)
    await client.create_message_type("Answer")
    await client.create_contract("c", {"DEFAULT": "any", "Checked": "initiator", "Answer": "target"})
    await client.create_queue("qi")
    await client.create_queue("qt")
    await client.create_service("init", "qi")
    await client.create_service("target", "qt", ["c"])
    return await client.begin_dialog("init", "target", "c")


def _recording(client: aiobroker.Client) -> list[dict[str, Any]]:
    """The arguments of every ``send`` request the client makes from now on."""
    sent: list[dict[str, Any]] = []
    start = client.start_request

    def recording(op: str, args: dict[str, Any]) -> Any:
        if op == "send":
            sent.append(args)
        return start(op, args)

    client.start_request = recording  # type: ignore[method-assign]
    return sent


async def _bodies(client: aiobroker.Client) -> list[tuple[str, bytes]]:
    got = []
    while batch := await client.receive("qt", max_messages=100, timeout=0):
        got += [(m.message_type, m.body) for m in batch]
        await batch.commit()
    return got


async def test_a_batch_of_one_type_goes_as_its_bodies_and_arrives_as_sent(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        assert client.server_info["send_bodies"] is True
        dialog = await _pair(client)
        sent = _recording(client)
        await dialog.send_many([("DEFAULT", b"%d" % n) for n in range(50)])
        await dialog.send_many([("DEFAULT", b"x"), ("Checked", b"y")])  # two types: pairs
        await dialog.send_many([("DEFAULT", b"z")], traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
        assert [sorted(a) for a in sent] == [["bodies", "handle", "type"], ["handle", "messages"], ["handle", "messages"]]
        assert sent[0]["type"] == "DEFAULT" and sent[0]["bodies"] == [b"%d" % n for n in range(50)]
        assert await _bodies(client) == (
            [("DEFAULT", b"%d" % n) for n in range(50)] + [("DEFAULT", b"x"), ("Checked", b"y"), ("DEFAULT", b"z")]
        )


async def test_a_bodies_batch_is_refused_whole_for_what_a_pairs_batch_would_be(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await _pair(client)
        with pytest.raises(MessageTooLarge, match="1025 bytes is over the node's max_message_size of 1024"):
            await client.request("send", {"handle": dialog.handle, "type": "DEFAULT", "bodies": [b"a", b"x" * 1025]})
        with pytest.raises(InvalidArgument, match="each body is bytes"):
            await client.request("send", {"handle": dialog.handle, "type": "DEFAULT", "bodies": [b"a", "text"]})
        with pytest.raises(InvalidArgument, match="non-empty list of bodies"):
            await client.request("send", {"handle": dialog.handle, "type": "DEFAULT", "bodies": []})
        target = (await client.receive("qt", max_messages=1, timeout=0))
        assert not target
        with pytest.raises(ContractViolation, match="does not let the initiator send message type 'Answer'"):
            await client.request("send", {"handle": dialog.handle, "type": "Answer", "bodies": [b"a"]})
        assert await _bodies(client) == [], "a refused batch stores nothing"


async def test_validation_stops_a_bodies_batch_where_it_fails_as_with_pairs(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await _pair(client, validation="json")
        count = await client.request(
            "send", {"handle": dialog.handle, "type": "Checked", "bodies": [b"[1]", b"{}", b"not json", b"[2]"]}
        )
        assert count == 4
        (error_type, error_body), *delivered = await _bodies(client)
        # those before the one that failed; and the conversation's Error naming it (an Error comes ahead of the
        # other messages of its conversation: docs/semantics.md)
        assert delivered == [("Checked", b"[1]"), ("Checked", b"{}")]
        assert error_type.endswith("/Error") and b"message 2 was not delivered: validation 'json' failed" in error_body
