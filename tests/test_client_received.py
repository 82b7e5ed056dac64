"""What a receive hands out (aiobroker/client/received.py): messages made lazily over the reply's rows, through a
node in this process over real loopback TCP. Each attribute is checked against the node's raw reply for the same
messages (read field by field here) and against what was sent."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

import aiobroker
from aiobroker import NodeConfig
from aiobroker.client import Message, ReceivedMessages
from test_node import setup_pair  # queues qi and qt, services init and target, one dialog between them

pytestmark = pytest.mark.anyio

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "vendor=one"
FIELDS = ("queue", "message_id", "conversation_handle", "sequence_number", "message_type", "body", "enqueued_at",
          "service_name", "far_service_name", "contract", "conversation_group_id", "is_initiator", "conversation_id",
          "trace", "traceparent", "tracestate", "is_end_dialog", "is_error", "is_timer", "error")


@pytest.fixture
async def node() -> AsyncIterator[aiobroker.Node]:
    async with aiobroker.Node(NodeConfig(store="memory", listen_port=0)) as n:
        yield n


def attributes(m: Message) -> dict[str, Any]:
    return {name: getattr(m, name) for name in FIELDS}


def from_raw(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """The attributes each message must have, read from the node's raw receive reply field by field."""
    out = []
    for row in reply["messages"]:
        facts = reply["conversations"][row[2]]
        trace = row[8] if len(row) > 8 else None
        error = None
        if row[4] == "http://schemas.microsoft.com/SQL/ServiceBroker/Error":
            error = (int(row[5].split(b"<Code>")[1].split(b"</Code>")[0]),
                     row[5].split(b"<Description>")[1].split(b"</Description>")[0].decode())
        out.append({
            "queue": reply["queue"], "message_id": row[0], "conversation_handle": row[2], "sequence_number": row[3],
            "message_type": row[4], "body": row[5], "enqueued_at": row[6], "service_name": facts[0],
            "far_service_name": facts[1], "contract": facts[2], "conversation_group_id": facts[3],
            "is_initiator": facts[4], "conversation_id": facts[5], "trace": trace,
            "traceparent": trace[:55] if trace else None, "tracestate": trace[56:] if trace and len(trace) > 55 else None,
            "is_end_dialog": row[4] == "http://schemas.microsoft.com/SQL/ServiceBroker/EndDialog",
            "is_error": error is not None, "is_timer": row[4] == "http://schemas.microsoft.com/SQL/ServiceBroker/DialogTimer",
            "error": error,
        })
    return out


async def receive_raw(client: aiobroker.Client, queue: str) -> dict[str, Any]:
    reply: dict[str, Any] = await client.request(
        "receive", {"queue": queue, "max_messages": 100, "timeout": 5, "lease_seconds": None}
    )
    await client.request("rollback", {"lease": reply["lease"]})
    return reply


async def test_every_attribute_equals_the_node_reply_including_trace_context(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await setup_pair(client)
        await dialog.send("DEFAULT", b"plain")
        await dialog.send("DEFAULT", b"traced", traceparent=TRACEPARENT, tracestate=TRACESTATE)
        await dialog.send("DEFAULT", b"parent only", traceparent=TRACEPARENT)
        batch = await client.receive("qt", max_messages=100, timeout=5)
        seen = [attributes(m) for m in batch]
        await batch.rollback()
        expected = from_raw(await receive_raw(client, "qt"))
        assert seen == expected
        assert [(a["body"], a["sequence_number"], a["traceparent"], a["tracestate"]) for a in seen] == [
            (b"plain", 0, None, None), (b"traced", 1, TRACEPARENT, TRACESTATE), (b"parent only", 2, TRACEPARENT, None)
        ]
        assert {(a["queue"], a["service_name"], a["far_service_name"], a["is_initiator"]) for a in seen} == {
            ("qt", "target", "init", False)
        }
        assert seen[0]["conversation_id"] == dialog.conversation_id


async def test_end_dialog_and_error_messages_read_as_such(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        ended = await setup_pair(client)
        failed = await client.begin_dialog("init", "target")
        await ended.send("DEFAULT", b"first")
        await failed.send("DEFAULT", b"first")
        await ended.end()
        await failed.end(error=(42, "out of stock"))
        seen: list[dict[str, Any]] = []
        for _ in range(2):  # one group a receive: the two conversations are two groups
            async with await client.receive("qt", max_messages=100, timeout=5) as batch:
                seen += [attributes(m) for m in batch]
        by_type = {a["message_type"].rsplit("/", 1)[-1]: a for a in seen}
        assert set(by_type) == {"DEFAULT", "EndDialog", "Error"}
        assert not any(by_type["DEFAULT"][k] for k in ("is_end_dialog", "is_error", "is_timer", "error"))
        assert by_type["EndDialog"]["is_end_dialog"] and by_type["EndDialog"]["error"] is None
        assert not by_type["EndDialog"]["is_error"]
        assert by_type["Error"]["error"] == (42, "out of stock") and by_type["Error"]["is_error"]
        assert not by_type["Error"]["is_end_dialog"]


async def test_a_batch_of_two_conversations_gives_each_message_its_own_conversation(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        one = await setup_pair(client)
        two = await client.begin_dialog("init", "target", related_group=one.group_id)  # one group on this side
        for dialog, text in ((one, b"to one"), (two, b"to two")):
            await dialog.send("DEFAULT", text)
            async with await client.receive("qt", max_messages=100, timeout=5) as batch:
                for m in batch:
                    await batch.dialog(m).send("DEFAULT", b"re: " + m.body)
        batch = await client.receive("qi", max_messages=100, timeout=5)
        seen = [attributes(m) for m in batch]
        await batch.rollback()
        assert seen == from_raw(await receive_raw(client, "qi"))
        assert [(a["body"], a["conversation_id"], a["is_initiator"]) for a in seen] == [
            (b"re: to one", one.conversation_id, True), (b"re: to two", two.conversation_id, True)
        ]
        assert one.conversation_id != two.conversation_id


async def test_batch_messages_is_a_sequence_that_can_be_read_twice_sliced_and_indexed(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await setup_pair(client)
        await dialog.send_many([("DEFAULT", b"%d" % i) for i in range(5)])
        batch = await client.receive("qt", max_messages=100, timeout=5)
        messages = batch.messages
        assert isinstance(messages, ReceivedMessages) and len(messages) == len(batch) == 5 and batch
        first, second = list(batch), list(messages)
        assert [m.body for m in first] == [m.body for m in second] == [b"0", b"1", b"2", b"3", b"4"]
        assert first == second and messages == first and messages == tuple(first), "two passes give equal messages"
        assert len({*first, *second}) == 5, "equal views hash alike; different messages differ"
        assert first[0] != first[1]
        assert [m.body for m in messages[1:4]] == [b"1", b"2", b"3"] and messages[1:4] == first[1:4]
        assert messages[-1].body == b"4" and messages[2] == first[2] and first[3] in messages
        by_index = [attributes(messages[i]) for i in range(5)]
        assert by_index == [attributes(m) for m in messages[:]] == [attributes(m) for m in first], "index = iteration"
        with pytest.raises(IndexError):
            messages[5]
        a, b, c, d, e = messages
        assert (a.body, e.body) == (b"0", b"4")
        await batch.commit()
        empty = await client.receive("qt", max_messages=100, timeout=0)
        assert not empty and len(empty) == 0 and list(empty) == [] and empty.messages == []


async def test_messages_outlive_commit_rollback_and_their_batch(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await setup_pair(client)
        await dialog.send_many([("DEFAULT", b"a"), ("DEFAULT", b"b")])
        batch = await client.receive("qt", max_messages=100, timeout=5)
        kept = list(batch)
        before = [attributes(m) for m in kept]
        await batch.rollback()
        assert [attributes(m) for m in kept] == before, "a rolled-back batch's messages still read the same"
        batch = await client.receive("qt", max_messages=100, timeout=5)
        again = list(batch)
        assert [m.message_id for m in again] == [m.message_id for m in kept]
        assert again != kept, "a message received again is a new receipt, not the rolled-back one"
        await batch.commit()
        reply_to = batch.dialog(again[0])
        assert [attributes(m) for m in again] == before
        del batch
        gc.collect()
        assert [m.body for m in again] == [b"a", b"b"] and again[1].service_name == "target"
        await reply_to.send("DEFAULT", b"answer")
        async with await client.receive("qi", max_messages=100, timeout=5) as answer:
            assert [(m.body, m.conversation_id) for m in answer] == [(b"answer", dialog.conversation_id)]


def test_a_message_built_by_hand_reads_its_fields() -> None:
    facts = ["svc", "far", "DEFAULT", "group-1", True, "conv-1"]
    m = Message("q", 7, "handle-1", 3, "DEFAULT", b"x", 1.5, facts, trace=f"{TRACEPARENT} {TRACESTATE}")
    assert (m.queue, m.message_id, m.conversation_handle, m.sequence_number, m.message_type, m.body) == (
        "q", 7, "handle-1", 3, "DEFAULT", b"x"
    )
    assert (m.enqueued_at, m.service_name, m.far_service_name, m.contract) == (1.5, "svc", "far", "DEFAULT")
    assert (m.conversation_group_id, m.is_initiator, m.conversation_id) == ("group-1", True, "conv-1")
    assert (m.traceparent, m.tracestate) == (TRACEPARENT, TRACESTATE)
    plain = Message("q", 8, "handle-1", 4, "DEFAULT", b"", 1.5, facts)
    assert plain.trace is None and plain.traceparent is None and plain != m


async def replies_to_two_conversations_of_one_group(client: aiobroker.Client) -> tuple[aiobroker.Dialog, ...]:
    """Two dialogs from init, the second in the first's group; the target answers each once (queue qi)."""
    one = await setup_pair(client)
    two = await client.begin_dialog("init", "target", related_group=one.group_id)
    for dialog in (one, two):
        await dialog.send("DEFAULT", b"ask")
        async with await client.receive("qt", max_messages=100, timeout=5) as batch:
            for m in batch:
                await batch.dialog(m).send("DEFAULT", b"answer")
    return one, two


async def test_compact_facts_name_each_conversation_once_in_the_order_of_its_first_row(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        one, two = await replies_to_two_conversations_of_one_group(client)
        args = {"queue": "qi", "max_messages": 100, "timeout": 5, "lease_seconds": None}
        reply = await client.request("receive", {**args, "facts": "compact"})
        await client.request("rollback", {"lease": reply["lease"]})
        assert "conversations" not in reply
        assert reply["facts"] == [
            "init", "target", "DEFAULT", None, True, one.conversation_id,  # its own group: null, read as its handle
            "init", "target", "DEFAULT", one.group_id, True, two.conversation_id,  # in the first one's group
        ]
        old = await client.request("receive", args)  # a client that does not ask: the map, as always
        await client.request("rollback", {"lease": old["lease"]})
        assert "facts" not in old and old["conversations"][two.handle][3] == one.group_id
        batch = await client.receive("qi", max_messages=100, timeout=5)
        assert [(m.conversation_handle, m.conversation_group_id, m.service_name, m.far_service_name, m.contract)
                for m in batch] == [(one.handle, one.group_id, "init", "target", "DEFAULT"),
                                    (two.handle, one.group_id, "init", "target", "DEFAULT")]
        await batch.rollback()


@pytest.mark.parametrize(("facts", "says"), [("short", "must be 'map' or 'compact', got 'short'"),
                                             (5, "argument 'facts' must be str, got int")])
async def test_a_bad_facts_argument_is_refused_and_takes_nothing(node: aiobroker.Node, facts: object, says: str) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await setup_pair(client)
        await dialog.send("DEFAULT", b"kept")
        with pytest.raises(aiobroker.InvalidArgument, match=says):
            await client.request("receive", {"queue": "qt", "max_messages": 10, "facts": facts})
        batch = await client.receive("qt", max_messages=10, timeout=5)
        assert [m.body for m in batch] == [b"kept"], "the refused receive locked nothing"


async def test_the_client_reads_the_facts_map_of_a_node_that_does_not_know_compact_facts(
    node: aiobroker.Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiobroker.node import handlers

    older = handlers.OPS["receive"]
    asked: list[object] = []

    def receive_as_an_older_node(shell: Any, session: Any, rid: int, args: dict[str, Any]) -> None:
        asked.append(args.pop("facts", None))  # an older node ignores an argument it does not know
        older(shell, session, rid, args)

    monkeypatch.setitem(handlers.OPS, "receive", receive_as_an_older_node)
    async with aiobroker.connect(node.url) as client:
        one, two = await replies_to_two_conversations_of_one_group(client)
        batch = await client.receive("qi", max_messages=100, timeout=5)
        seen = [attributes(m) for m in batch]
        await batch.rollback()
        assert seen == from_raw(await receive_raw(client, "qi"))
        assert [a["conversation_group_id"] for a in seen] == [one.group_id, one.group_id]
        assert "compact" in asked, "the client asked, and was answered with the map"


def test_compact_facts_of_a_conversation_that_ended_meanwhile_read_as_unknown() -> None:
    from aiobroker.client.received import UNKNOWN_CONVERSATION, compact_to_map

    rows = [[1, "q:q", "h1", 0, "T", b"", 0.0, 0], [2, "q:q", "gone", 0, "T", b"", 0.0, 0],
            [3, "q:q", "h1", 1, "T", b"", 0.0, 0]]
    facts = ["svc", "far", "C", None, False, "c1", None, None, None, None, None, None]
    assert compact_to_map(rows, facts) == {
        "h1": ("svc", "far", "C", "h1", False, "c1"), "gone": UNKNOWN_CONVERSATION}
