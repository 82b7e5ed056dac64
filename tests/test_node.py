"""A node in this process, spoken to over real loopback TCP by the client and by raw sockets."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import aiobroker
from aiobroker import NodeConfig
from aiobroker.errors import (
    ConfigError,
    ContractViolation,
    ConversationError,
    DuplicateObject,
    InvalidArgument,
    LeaseExpired,
    MessageTooLarge,
    ObjectInUse,
    ProtocolError,
    QueueDisabled,
    StoreError,
    UnknownObject,
)
from aiobroker.core.catalog import DISPATCHER_QUEUE, DISPATCHER_SERVICE
from aiobroker.wire.codec import encode_frame
from raw_peer import after_hello, talk

pytestmark = pytest.mark.anyio

BUILTIN_QUEUES = {DISPATCHER_QUEUE}
BUILTIN_SERVICES = {DISPATCHER_SERVICE}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[aiobroker.Node]:
    config = NodeConfig(store="sqlite", data_dir=tmp_path / "data", listen_port=0, max_message_size=64 * 1024)
    async with aiobroker.Node(config) as n:
        yield n


async def setup_pair(client: aiobroker.Client) -> aiobroker.Dialog:
    await client.create_queue("qi")
    await client.create_queue("qt")
    await client.create_service("init", "qi")
    await client.create_service("target", "qt", ["DEFAULT"])
    return await client.begin_dialog("init", "target")


async def test_request_and_reply_end_to_end(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await setup_pair(client)
        await dialog.send_many([("DEFAULT", b"one"), ("DEFAULT", b"two")])
        async with await client.receive("qt", max_messages=10, timeout=5) as batch:
            assert [m.body for m in batch] == [b"one", b"two"]
            assert [m.sequence_number for m in batch] == [0, 1]
            first = batch.messages[0]
            assert (first.service_name, first.far_service_name, first.contract) == ("target", "init", "DEFAULT")
            assert not first.is_initiator and first.conversation_id == dialog.conversation_id
            reply = batch.dialog(first)
            await reply.send("DEFAULT", b"answer")
            await reply.end()
        async with await client.receive("qi", max_messages=10, timeout=5) as batch:
            assert [m.body for m in batch] == [b"answer", b""]
            assert batch.messages[1].is_end_dialog
        assert (await dialog.info())["state"] == "DI"
        with pytest.raises(ConversationError, match="far side has ended it"):
            await dialog.send("DEFAULT", b"too late")
        await dialog.end()
        with pytest.raises(ConversationError, match="ended on this side"):
            await dialog.send("DEFAULT", b"after end")


async def test_concurrent_senders_share_a_connection_and_each_conversation_stays_in_order(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        await setup_pair(client)
        dialogs = [await client.begin_dialog("init", "target") for _ in range(10)]

        async def sender(d: aiobroker.Dialog) -> None:
            for i in range(30):
                await d.send("DEFAULT", b"%d" % i)

        async with anyio.create_task_group() as tg:
            for d in dialogs:
                tg.start_soon(sender, d)
        per_conversation: dict[str, list[int]] = {}
        while batch := await client.receive("qt", max_messages=100, timeout=0):
            for m in batch:
                per_conversation.setdefault(m.conversation_id, []).append(int(m.body))
            await batch.commit()
        assert sorted(per_conversation) == sorted(d.conversation_id for d in dialogs)
        assert all(v == list(range(30)) for v in per_conversation.values())


async def test_receive_waits_then_times_out_with_an_empty_batch(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await setup_pair(client)
        batch = await client.receive("qt", max_messages=5, timeout=0.2)
        assert len(batch) == 0 and batch.lease is None
        async with anyio.create_task_group() as tg:
            got: list[bytes] = []

            async def waiting_receiver() -> None:
                b = await client.receive("qt", max_messages=5, timeout=30)
                got.extend(m.body for m in b)
                await b.commit()

            tg.start_soon(waiting_receiver)
            await anyio.wait_all_tasks_blocked()
            await dialog.send("DEFAULT", b"wake up")
        assert got == [b"wake up"]


async def test_receive_with_no_timeout_waits_until_a_message_comes(node: aiobroker.Node) -> None:
    """``timeout=None`` (null on the wire) waits without limit; it used to be read as "absent", 0, and came back
    empty at once."""
    async with aiobroker.connect(node.url) as client:
        dialog = await setup_pair(client)
        got: list[bytes] = []

        async def waiting_receiver() -> None:
            async with await client.receive("qt", timeout=None) as b:
                got.extend(m.body for m in b)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting_receiver)
            with anyio.fail_after(5):
                while node.status()["node"]["waiting_receives"] != 1:
                    await anyio.sleep(0.01)  # polled under a deadline: the receive is registered and waits
            await dialog.send("DEFAULT", b"at last")
        assert got == [b"at last"]


async def test_a_disconnected_receiver_gives_its_messages_back(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await setup_pair(client)
        await dialog.send("DEFAULT", b"precious")
        async with aiobroker.connect(node.url) as doomed:
            batch = await doomed.receive("qt", timeout=5)
            assert [m.body for m in batch] == [b"precious"]
            assert len(await client.receive("qt", timeout=0)) == 0, "locked while the other holds it"
        again = await client.receive("qt", timeout=10)
        assert [m.body for m in again] == [b"precious"]
        await again.commit()


async def test_a_lease_that_runs_out_returns_the_messages(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await setup_pair(client)
        await dialog.send("DEFAULT", b"slow")
        batch = await client.receive("qt", timeout=5, lease_seconds=0.2)
        again = await client.receive("qt", timeout=10)  # waits until the lease runs out
        assert [m.body for m in again] == [b"slow"]
        with pytest.raises(LeaseExpired, match="ran out"):
            await batch.commit()
        await again.commit()


async def test_poison_message_disables_the_queue_until_turned_back_on(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await setup_pair(client)
        await dialog.send("DEFAULT", b"poison")
        for _ in range(5):
            batch = await client.receive("qt", timeout=5)
            assert len(batch) == 1
            await batch.rollback()
        with pytest.raises(QueueDisabled, match="rolled back 5 times.*aiobroker alter queue qt --status on"):
            await client.receive("qt", timeout=0)
        status = await client.status()
        (qt,) = [q for q in status["queues"] if q["name"] == "qt"]
        assert qt["status"] == "off" and "poison" in qt["disabled_reason"] and qt["waiting"] == 1
        await client.alter_queue("qt", status=True)
        batch = await client.receive("qt", timeout=5)
        assert [m.body for m in batch] == [b"poison"]


async def test_a_queues_switches_are_spelled_on_and_off_in_answers_and_taken_either_way(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        created = await client.create_queue("q-words", status="off", retention=True)
        assert created == {"name": "q-words", "status": "off", "retention": "on", "poison_message_handling": "on"}
        altered = await client.alter_queue("q-words", status="ON", retention=False)
        assert (altered["status"], altered["retention"]) == ("on", "off")
        (listed,) = [q for q in await client.list("queue") if q["name"] == "q-words"]
        assert listed == altered
        (shown,) = [q for q in (await client.status())["queues"] if q["name"] == "q-words"]
        assert shown["status"] == "on"
        with pytest.raises(InvalidArgument, match='status must be "on" or "off"'):
            await client.create_queue("q-bad", status="yes")
        with pytest.raises(InvalidArgument, match='retention must be "on" or "off"'):
            await client.alter_queue("q-words", retention=1)


async def test_admin_errors_name_the_problem_and_change_nothing(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        await setup_pair(client)
        with pytest.raises(DuplicateObject, match="queue 'qt' exists already"):
            await client.create_queue("qt")
        with pytest.raises(UnknownObject, match="queue 'nope' does not exist"):
            await client.create_service("s", "nope")
        with pytest.raises(ObjectInUse, match="used by service 'target'"):
            await client.drop("queue", "qt")
        with pytest.raises(InvalidArgument, match="validation 'yaml' is not one of"):
            await client.create_message_type("m", validation="yaml")
        with pytest.raises(UnknownObject, match="queue 'missing' does not exist"):
            await client.receive("missing")
        with pytest.raises(UnknownObject, match="unknown operation 'frobnicate'"):
            await client.request("frobnicate", {})
        with pytest.raises(InvalidArgument, match="missing argument 'handle'"):
            await client.request("send", {})
        with pytest.raises(UnknownObject, match="service 'ghost' does not exist"):
            await client.begin_dialog("ghost", "target")
        names = {q["name"] for q in await client.list("queue")}
        assert names - BUILTIN_QUEUES == {"qi", "qt"}, "a failed create changed nothing"


async def test_oversized_message_and_contract_violation_refused_and_connection_lives_on(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await setup_pair(client)
        with pytest.raises(MessageTooLarge, match="over the node's max_message_size of 65536"):
            await dialog.send("DEFAULT", b"x" * (64 * 1024 + 1))
        await client.create_message_type("Ask")
        await client.create_message_type("Only")
        await client.create_contract("C", {"Ask": "initiator", "Only": "target"})
        await client.create_service("t2", "qt", ["C"])
        with pytest.raises(ContractViolation):
            d2 = await client.begin_dialog("init", "t2", "C")
            await d2.send("Only", b"initiator may not send this")
        await dialog.send("DEFAULT", b"still fine")
        assert [m.body for m in await client.receive("qt", timeout=5)] == [b"still fine"]


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        (b"\x00\x00\x00\x03\xc1\xc1\xc1", "not valid msgpack"),
        (struct.pack(">I", 1 << 30), "over the limit"),
        (encode_frame([10, 1, "status", {}]), "expected HELLO"),
        (encode_frame([1, "aiobroker", 99, "client", {}]), "protocol version 99 is not spoken here"),
        (encode_frame(["not", "a", "frame"]), "malformed frame"),
    ],
)
async def test_bad_bytes_are_refused_with_a_reason_and_other_clients_carry_on(
    node: aiobroker.Node, payload: bytes, expect: str
) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await setup_pair(client)

        frames = await anyio.to_thread.run_sync(talk, node.port, payload)
        assert frames and frames[-1][0] == 3, f"expected a REFUSED frame, got {frames}"  # type: ignore[index]
        assert expect in frames[-1][2]  # type: ignore[index]
        await dialog.send("DEFAULT", b"unaffected")
        assert [m.body for m in await client.receive("qt", timeout=5)] == [b"unaffected"]


async def test_garbage_after_the_handshake_closes_only_that_connection(node: aiobroker.Node) -> None:
    frames = await anyio.to_thread.run_sync(after_hello, node.port, b"\x00\x00\x00\x01\xc1")
    assert frames[0][0] == 2 and frames[-1][0] == 3  # type: ignore[index]
    async with aiobroker.connect(node.url) as client:
        assert (await client.status())["node"]["connections"] == 1


async def test_restart_in_process_keeps_objects_conversations_and_messages(tmp_path: Path) -> None:
    config = NodeConfig(store="sqlite", data_dir=tmp_path / "data", listen_port=0)
    async with aiobroker.Node(config) as node:
        async with aiobroker.connect(node.url) as client:
            dialog = await setup_pair(client)
            await dialog.send_many([("DEFAULT", b"%d" % i) for i in range(100)])
            instance = client.broker_instance
    async with aiobroker.Node(config) as node:
        async with aiobroker.connect(node.url) as client:
            assert client.broker_instance == instance, "the broker instance is kept in the store"
            assert {s["name"] for s in await client.list("service")} - BUILTIN_SERVICES == {"init", "target"}
            got: list[int] = []
            while batch := await client.receive("qt", max_messages=30, timeout=0):
                got.extend(int(m.body) for m in batch)
                await batch.commit()
            assert got == list(range(100))
            await client.dialog(dialog.handle).send("DEFAULT", b"continues")
            assert [m.sequence_number for m in await client.receive("qt", timeout=5)] == [100]


@pytest.mark.parametrize("durability", ["normal", "full"])
async def test_small_batches_are_written_on_the_loop_only_without_fsync_and_every_path_keeps_order(
    tmp_path: Path, durability: str
) -> None:
    config = NodeConfig(store="sqlite", data_dir=tmp_path / "data", listen_port=0, durability=durability)
    inline_rows = 64 if durability == "normal" else 0
    async with aiobroker.Node(config) as node:
        assert node.store.inline_rows == inline_rows
        async with aiobroker.connect(node.url) as client:
            dialog = await setup_pair(client)
            writer = node.writer
            inline0, batches0 = writer.inline_batches, writer.batches
            for i in range(5):  # one message per request: each batch is a few rows
                await dialog.send("DEFAULT", b"%d" % i)
            small_inline = writer.inline_batches - inline0
            assert writer.batches - batches0 >= 5
            assert small_inline == (writer.batches - batches0 if durability == "normal" else 0)
            inline1 = writer.inline_batches
            await dialog.send_many([("DEFAULT", b"%d" % i) for i in range(5, 5 + 3 * inline_rows + 10)])
            assert writer.inline_batches == inline1, "a batch larger than inline_rows goes to the writer thread"
    async with aiobroker.Node(config) as node:
        async with aiobroker.connect(node.url) as client:
            got: list[int] = []
            while batch := await client.receive("qt", max_messages=100, timeout=0):
                got.extend(int(m.body) for m in batch)
                await batch.commit()
            assert got == list(range(5 + 3 * inline_rows + 10))


async def test_the_writer_lets_other_tasks_run_between_batches(tmp_path: Path) -> None:
    # A batch written on the loop does not yield by itself; work made by the callbacks of one batch (here each
    # callback registers the next) must not hold the event loop from batch to batch.
    config = NodeConfig(store="sqlite", data_dir=tmp_path / "data", listen_port=0)
    async with aiobroker.Node(config) as node:
        ticks = 0
        ticks_seen: list[int] = []
        chain_done = anyio.Event()

        async def other_task() -> None:
            nonlocal ticks
            while not chain_done.is_set():
                ticks += 1
                await anyio.lowlevel.checkpoint()

        def link(left: int) -> None:
            ticks_seen.append(ticks)
            if left:
                node.writer.after_commit(lambda: link(left - 1))
            else:
                chain_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(other_task)
            await anyio.lowlevel.checkpoint()
            node.writer.after_commit(lambda: link(20))
            with anyio.fail_after(10):
                await chain_done.wait()
        assert len(ticks_seen) == 21
        assert len(set(ticks_seen)) == 21, f"the other task did not run between batches: {ticks_seen}"


async def test_config_objects_are_created_at_start_and_must_match_later(tmp_path: Path) -> None:
    objects = (
        ("message_type", {"name": "Req", "validation": "json"}),
        ("contract", {"name": "C", "messages": {"Req": "initiator"}}),
        ("queue", {"name": "q"}),
        ("service", {"name": "svc", "queue": "q", "contracts": ["C"]}),
    )
    config = NodeConfig(store="sqlite", data_dir=tmp_path / "data", listen_port=0, objects=objects)
    async with aiobroker.Node(config) as node:
        async with aiobroker.connect(node.url) as client:
            assert [m["validation"] for m in await client.list("message_type") if m["name"] == "Req"] == ["json"]
    changed = NodeConfig(
        store="sqlite",
        data_dir=tmp_path / "data",
        listen_port=0,
        objects=(("message_type", {"name": "Req", "validation": "xml"}),),
    )
    with pytest.raises(ConfigError, match="config message type 'Req': it exists with another definition"):
        async with aiobroker.Node(changed):
            pass


async def test_corrupt_store_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "aiobroker.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="corrupt"):
        async with aiobroker.Node(NodeConfig(store="sqlite", data_dir=data, listen_port=0)):
            pass


async def test_connecting_to_nothing_says_what_to_do() -> None:
    from node_process import free_port

    with pytest.raises(aiobroker.ConnectionLost, match="is a node running there"):
        async with aiobroker.connect(f"tcp://127.0.0.1:{free_port()}"):
            pass


async def test_too_many_connections_are_refused_with_a_reason(tmp_path: Path) -> None:
    config = NodeConfig(store="memory", listen_port=0, max_connections=1)
    async with aiobroker.Node(config) as node:
        async with aiobroker.connect(node.url):
            with pytest.raises(aiobroker.Overloaded, match="maximum of 1 connections"):
                async with aiobroker.connect(node.url):
                    pass


async def test_protocol_error_type_is_exported() -> None:
    assert issubclass(ProtocolError, aiobroker.BrokerError)


async def test_a_request_over_the_frame_limit_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    config = NodeConfig(store="memory", listen_port=0, max_frame_size=64 * 1024, max_message_size=32 * 1024)
    async with aiobroker.Node(config) as node:
        async with aiobroker.connect(node.url) as client:
            dialog = await setup_pair(client)
            with pytest.raises(MessageTooLarge, match="over the node's max_frame_size of 65536 bytes; send fewer"):
                await dialog.send_many([("DEFAULT", b"x" * 30_000)] * 3)
            await dialog.send_many([("DEFAULT", b"x" * 30_000)] * 2)  # the connection is still good
            received = 0
            while batch := await client.receive("qt", max_messages=10, timeout=0):
                received += len(batch)
                await batch.commit()
            assert received == 2


async def test_pipelined_batches_keep_their_order_and_a_started_commit_frees_the_group(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await setup_pair(client)
        pending = [dialog.start_send_many([("DEFAULT", b"%d" % (10 * b + i)) for i in range(10)]) for b in range(20)]
        assert [await p.wait() for p in pending] == [10] * 20
        got: list[int] = []
        batch = await client.receive("qt", max_messages=50, timeout=5)
        while batch:
            got.extend(int(m.body) for m in batch)
            size = len(batch)
            committing = batch.start_commit()
            # the commit left first, so the group is unlocked when this receive (which does not wait) arrives
            batch = await client.receive("qt", max_messages=50, timeout=0)
            assert await committing.wait() == size
        assert got == list(range(200)), "every batch came at once after the commit before it"
