"""Receive with ``max_groups`` through the client, against a node over real loopback TCP: one batch holds several
conversation groups, each locked to its receiver until the batch's one commit or rollback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

import aiobroker
from aiobroker import NodeConfig
from aiobroker.errors import InvalidArgument

pytestmark = pytest.mark.anyio


@pytest.fixture
async def node() -> AsyncIterator[aiobroker.Node]:
    async with aiobroker.Node(NodeConfig(store="memory", listen_port=0)) as n:
        yield n


async def dialogs(client: aiobroker.Client, count: int, per: int = 2) -> list[aiobroker.Dialog]:
    """``count`` conversations (each its own group at the target), each sending b"<i>.<k>" for k < ``per``."""
    await client.create_queue("qi")
    await client.create_queue("qt")
    await client.create_service("init", "qi")
    await client.create_service("target", "qt", ["DEFAULT"])
    out = [await client.begin_dialog("init", "target") for _ in range(count)]
    for i, dialog in enumerate(out):
        await dialog.send_many([("DEFAULT", b"%d.%d" % (i, k)) for k in range(per)])
    return out


async def test_one_batch_holds_several_groups_each_in_order_and_locked_until_its_commit(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client, aiobroker.connect(node.url) as other:
        sent = await dialogs(client, 4)
        batch = await client.receive("qt", max_messages=100, timeout=5, max_groups=3)
        assert [m.body for m in batch] == [b"0.0", b"0.1", b"1.0", b"1.1", b"2.0", b"2.1"]
        assert [m.conversation_id for m in batch][::2] == [d.conversation_id for d in sent[:3]]
        assert len({m.conversation_group_id for m in batch}) == 3, "three groups, each named on its messages"
        for i, dialog in enumerate(sent[:3]):
            await dialog.send("DEFAULT", b"%d.2" % i)
        rest = await other.receive("qt", max_messages=100, timeout=0, max_groups=10)
        assert [m.body for m in rest] == [b"3.0", b"3.1"], "only the group the first batch does not hold"
        await rest.commit()
        assert len(await other.receive("qt", max_messages=100, timeout=0, max_groups=10)) == 0, "all three held"
        await batch.commit()
        after = await other.receive("qt", max_messages=100, timeout=5, max_groups=10)
        assert [m.body for m in after] == [b"0.2", b"1.2", b"2.2"], "the commit freed all three groups"
        await after.commit()
        assert node.status()["queues"][0]["waiting"] + node.status()["queues"][0]["locked"] == 0


async def test_a_failed_block_rolls_back_every_group_to_the_front_and_a_lost_receiver_gives_them_back(
    node: aiobroker.Node,
) -> None:
    async with aiobroker.connect(node.url) as client:
        await dialogs(client, 3)
        with pytest.raises(RuntimeError, match="application failed"):
            async with await client.receive("qt", max_messages=100, timeout=5, max_groups=2):
                raise RuntimeError("application failed")
        async with aiobroker.connect(node.url) as doomed:
            held = await doomed.receive("qt", max_messages=100, timeout=5, max_groups=10)
            assert [m.body for m in held] == [b"0.0", b"0.1", b"1.0", b"1.1", b"2.0", b"2.1"], "rolled back in front"
        # the doomed client is gone without a commit: its lease on all three groups ends with its connection
        again = await client.receive("qt", max_messages=100, timeout=5, max_groups=10)
        assert [m.body for m in again] == [b"0.0", b"0.1", b"1.0", b"1.1", b"2.0", b"2.1"]
        await again.commit()


async def test_a_waiting_receive_with_max_groups_is_served_when_messages_arrive(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client, aiobroker.connect(node.url) as sender:
        await dialogs(client, 0)
        pending = client.start_request("receive", {"queue": "qt", "max_messages": 100, "timeout": 10,
                                                    "max_groups": 10})
        with anyio.fail_after(5):
            while node.status()["node"]["waiting_receives"] != 1:
                await anyio.sleep(0.01)  # polled under a deadline: the receive is registered and waits
        first = await sender.begin_dialog("init", "target")
        second = await sender.begin_dialog("init", "target")
        # both sends leave in one write, so the node stores them together and serves the waiting receive once
        sends = [sender.start_request("send", {"handle": d.handle, "messages": [["DEFAULT", body]]})
                 for d, body in ((first, b"first"), (second, b"second"))]
        for done in sends:
            await done.wait()
        reply = await pending.wait()
        assert [row[5] for row in reply["messages"]] == [b"first", b"second"], "both groups, in arrival order"
        await client.request("commit", {"lease": reply["lease"]})


async def test_a_bad_max_groups_is_refused_by_the_client_and_by_the_node(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        await dialogs(client, 2)
        with pytest.raises(InvalidArgument, match="max_groups must be a whole number >= 1"):
            await client.receive("qt", max_messages=10, max_groups=0)
        with pytest.raises(InvalidArgument, match="max_groups must be a whole number >= 1, got 0"):
            await client.request("receive", {"queue": "qt", "max_messages": 10, "max_groups": 0})
        with pytest.raises(InvalidArgument, match="argument 'max_groups' must be int"):
            await client.request("receive", {"queue": "qt", "max_messages": 10, "max_groups": "2"})
        batch = await client.receive("qt", max_messages=10, timeout=5, max_groups=5)
        assert [m.body for m in batch] == [b"0.0", b"0.1", b"1.0", b"1.1"], "nothing was taken by the refused ones"
        await batch.commit()
