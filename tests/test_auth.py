"""Authentication and authorization: who a client is (a token, a TLS client certificate, else ``public``) and what
it may do, against nodes with ``[security] authorization`` on (docs/security.md, Authorization).

Every refusal must be a NotAuthorized that names the identity, the right and the object, and must change nothing:
each test that is refused checks the node's state (queue depth, objects, sequence numbers) afterwards through an
administrator's connection.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from node_process import NodeProcess

import aiobroker
from aiobroker import NodeConfig
from aiobroker.node.rights import RULES
from aiobroker.core.identities import PUBLIC
from aiobroker.errors import ConfigError, NotAuthorized
from aiobroker.node.handlers import OPS
from aiobroker.security.certs import create_self_signed
from aiobroker.transport.tls import client_context
from test_tls import issue, make_ca

pytestmark = pytest.mark.anyio

ROOT_TOKEN = "root-token-0123456789"
ALICE_TOKEN = "alice-token-0123456789"


def identity(name: str, *, tokens: tuple[str, ...] = (), **rights: Any) -> tuple[str, dict[str, Any]]:
    return ("identity", {"name": name, "tokens": list(tokens), **rights})


BASE_OBJECTS = (
    identity("root", tokens=(ROOT_TOKEN,), admin=True, send=["*"], receive=["*"]),  # admin alone sends nothing
    identity("alice", tokens=(ALICE_TOKEN,), send=["svcA"], receive=["qA"]),
    ("queue", {"name": "qA"}),
    ("queue", {"name": "qB"}),
    ("service", {"name": "svcA", "queue": "qA", "contracts": ["DEFAULT"]}),
    ("service", {"name": "svcB", "queue": "qB", "contracts": ["DEFAULT"]}),
)


@pytest.fixture
async def node() -> AsyncIterator[aiobroker.Node]:
    config = NodeConfig(store="memory", listen_port=0, authorization=True, objects=BASE_OBJECTS)
    async with aiobroker.Node(config) as n:
        yield n


async def depth(admin: aiobroker.Client, queue: str) -> int:
    return int(next(q["waiting"] for q in (await admin.status())["queues"] if q["name"] == queue))


def refused(info: pytest.ExceptionInfo[NotAuthorized], *words: str) -> None:
    for word in words:
        assert word in info.value.message, (word, info.value.message)


# --- every operation has a rule ------------------------------------------------------------------------------


def test_every_operation_has_an_explicit_rule() -> None:
    """A new operation must be given a rule on purpose (without one it would need admin)."""
    assert set(OPS) <= set(RULES), sorted(set(OPS) - set(RULES))


# --- public ----------------------------------------------------------------------------------------------------


async def test_a_client_without_a_token_is_public_and_may_do_nothing_and_changes_nothing(
    node: aiobroker.Node,
) -> None:
    async with aiobroker.connect(node.url, token=ROOT_TOKEN) as root, aiobroker.connect(node.url) as anon:
        assert root.identity == "root" and anon.identity == PUBLIC
        dialog = await root.begin_dialog("svcB", "svcA")
        await dialog.send("DEFAULT", b"one")
        before = (await depth(root, "qA"), await root.list("queue"), await root.list_conversations())

        handle = anon.dialog(dialog.handle)
        attempts: dict[str, Callable[[], Awaitable[Any]]] = {
            "create queue 'sneaky'": lambda: anon.create_queue("sneaky"),
            "drop queue 'qA'": lambda: anon.drop("queue", "qA"),
            "alter queue 'qA'": lambda: anon.alter_queue("qA", status=False),
            "begin a conversation with service 'svcA'": lambda: anon.begin_dialog("svcB", "svcA"),
            f"send on conversation {dialog.handle}": lambda: handle.send("DEFAULT", b"forged"),
            f"end conversation {dialog.handle}": lambda: handle.end(),
            f"set a timer on conversation {dialog.handle}": lambda: handle.begin_timer(1),
            "receive from queue 'qA'": lambda: anon.receive("qA"),
            "list objects": lambda: anon.list("queue"),
            "list conversations": lambda: anon.list_conversations(),
            "read a conversation": lambda: handle.info(),
            "read the node's status": lambda: anon.status(),
            "diagnose routing": lambda: anon.diagnose("svcA"),
        }
        for action, attempt in attempts.items():
            with pytest.raises(NotAuthorized) as info:
                await attempt()
            refused(info, "identity 'public'", f"may not {action}")
        with pytest.raises(NotAuthorized) as info:
            await anon.create_queue("x")
        refused(info, "admin right", "--token")  # says which right is missing and how to authenticate

        after = (await depth(root, "qA"), await root.list("queue"), await root.list_conversations())
        assert after == before
        assert (await dialog.info())["send_seq"] == 1


async def test_an_identity_named_public_grants_rights_to_clients_without_a_token(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url, token=ROOT_TOKEN) as root, aiobroker.connect(node.url) as anon:
        with pytest.raises(NotAuthorized):
            await anon.begin_dialog("svcB", "svcA")
        await root.create_identity("public", send=["svcA"])
        dialog = await anon.begin_dialog("svcB", "svcA")  # the same session: rights are looked up per request
        await dialog.send("DEFAULT", b"from nobody in particular")
        assert await depth(root, "qA") == 1
        with pytest.raises(NotAuthorized) as info:
            await anon.status()  # reads need an identity other than public, even a created one
        refused(info, "identity 'public'", "read the node's status")
        with pytest.raises(NotAuthorized):
            await anon.receive("qA")


# --- tokens ----------------------------------------------------------------------------------------------------


async def test_a_token_grants_exactly_the_rights_listed(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url, token=ROOT_TOKEN) as root, aiobroker.connect(
        node.url, token=ALICE_TOKEN
    ) as alice:
        assert alice.identity == "alice"
        # send on svcA: allowed (whatever the initiating service)
        dialog = await alice.begin_dialog("svcB", "svcA")
        await dialog.send("DEFAULT", b"hello A")
        # receive on qA, and reply as the reader of svcA (its own service's queue)
        async with await alice.receive("qA", timeout=5) as batch:
            [message] = batch.messages
            assert message.body == b"hello A"
            await batch.dialog(message).send("DEFAULT", b"reply from A")
        assert await depth(root, "qB") == 1
        # reads: any authenticated identity
        assert {q["name"] for q in await alice.list("queue")} >= {"qA", "qB"}
        assert (await alice.status())["node"]["connections"] == 2

        # not listed: send to svcB, receive from qB, administer
        with pytest.raises(NotAuthorized) as info:
            await alice.begin_dialog("svcA", "svcB")
        refused(info, "identity 'alice'", "send right", "service 'svcB'")
        with pytest.raises(NotAuthorized) as info:
            await alice.receive("qB")
        refused(info, "identity 'alice'", "receive right", "queue 'qB'")
        with pytest.raises(NotAuthorized) as info:
            await alice.create_queue("alices-queue")
        refused(info, "identity 'alice'", "admin right", "create queue 'alices-queue'")
        with pytest.raises(NotAuthorized):
            await alice.drop("service", "svcB")

        # a conversation between svcB and svcB: neither its far service nor its own queue is alice's
        other = await root.begin_dialog("svcB", "svcB")
        await other.send("DEFAULT", b"not for alice")
        with pytest.raises(NotAuthorized) as info:
            await alice.dialog(other.handle).send("DEFAULT", b"forged")
        refused(info, "identity 'alice'", "send right", "service 'svcB'", "receive right on queue 'qB'")
        with pytest.raises(NotAuthorized):
            await alice.dialog(other.handle).end()

        assert await depth(root, "qB") == 2  # the reply and root's message; nothing of alice's refusals
        assert (await other.info())["send_seq"] == 1 and (await other.info())["state"] != "CD"
        assert "alices-queue" not in {q["name"] for q in await root.list("queue")}
        assert "svcB" in {s["name"] for s in await root.list("service")}


async def test_a_wildcard_grants_every_service_and_queue(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url, token=ROOT_TOKEN) as root:
        await root.create_identity("bob", tokens=["bob-token-0123456789"], send=["*"], receive=["*"])
        async with aiobroker.connect(node.url, token="bob-token-0123456789") as bob:
            for target, queue in (("svcA", "qA"), ("svcB", "qB")):
                dialog = await bob.begin_dialog("svcA", target)
                await dialog.send("DEFAULT", b"x")
                async with await bob.receive(queue, timeout=5) as batch:
                    assert len(batch) == 1
            with pytest.raises(NotAuthorized):
                await bob.create_queue("q")  # "*" is no admin


async def test_dropping_an_identity_takes_its_rights_from_connected_clients(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url, token=ROOT_TOKEN) as root:
        await root.create_identity("carol", tokens=["carol-token-0123456789"], send=["svcA"])
        async with aiobroker.connect(node.url, token="carol-token-0123456789") as carol:
            await carol.begin_dialog("svcB", "svcA")
            await carol.status()
            await root.drop("identity", "carol")
            with pytest.raises(NotAuthorized) as info:
                await carol.begin_dialog("svcB", "svcA")
            refused(info, "identity 'carol'", "send right")
            with pytest.raises(NotAuthorized):
                await carol.status()
        with pytest.raises(NotAuthorized, match="matches no identity"):
            async with aiobroker.connect(node.url, token="carol-token-0123456789"):
                pass


async def test_a_bad_token_is_refused_at_the_handshake_and_logged(
    node: aiobroker.Node, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="aiobroker.node"):
        with pytest.raises(NotAuthorized) as info:
            async with aiobroker.connect(node.url, token="not-a-known-token"):
                pass
    refused(info, "refused the connection", "matches no identity", "--token")
    assert "refused client 127.0.0.1" in caplog.text and "matches no identity" in caplog.text
    assert "not-a-known-token" not in caplog.text  # a token is never logged
    async with aiobroker.connect(node.url, token=ROOT_TOKEN) as root:  # the node carries on
        assert (await root.status())["node"]["connections"] == 1


async def test_with_authorization_off_tokens_are_accepted_and_everyone_may_do_everything() -> None:
    config = NodeConfig(store="memory", listen_port=0, objects=BASE_OBJECTS)
    async with aiobroker.Node(config) as node:
        assert not node.core.authorization
        async with aiobroker.connect(node.url, token="not-a-known-token") as unknown, aiobroker.connect(
            node.url, token=ALICE_TOKEN
        ) as alice, aiobroker.connect(node.url) as anon:
            assert (unknown.identity, alice.identity, anon.identity) == (PUBLIC, "alice", PUBLIC)
            await anon.create_queue("anyone-may")
            await alice.begin_dialog("svcA", "svcB")  # alice has no send on svcB; unchecked
            await unknown.status()


# --- TLS client certificates ------------------------------------------------------------------------------------


async def test_a_tls_client_certificate_authenticates_as_its_identity(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    node_cert, node_key = issue(tmp_path, ca, "node")
    mapped_cert, mapped_key = issue(tmp_path, ca, "dave")
    stranger_cert, stranger_key = issue(tmp_path, ca, "stranger")
    objects = (*BASE_OBJECTS, identity("dave", certificate=mapped_cert.read_text(), send=["svcA"]))
    config = NodeConfig(
        store="memory",
        listen_port=0,
        authorization=True,
        tls_cert=node_cert,
        tls_key=node_key,
        tls_ca=ca[2],
        objects=objects,
    )

    def tls(cert: Path, key: Path) -> Any:
        return client_context(ca=ca[2], cert=cert, key=key)

    async with aiobroker.Node(config) as node:
        async with aiobroker.connect(node.url, ssl_context=tls(mapped_cert, mapped_key)) as dave:
            assert dave.identity == "dave"
            await (await dave.begin_dialog("svcB", "svcA")).send("DEFAULT", b"by certificate")
            with pytest.raises(NotAuthorized) as info:
                await dave.begin_dialog("svcA", "svcB")
            refused(info, "identity 'dave'", "service 'svcB'")
        # a certificate the CA signed but no identity holds: refused, naming its fingerprint
        with pytest.raises(NotAuthorized, match="TLS client certificate .* matches no identity"):
            async with aiobroker.connect(node.url, ssl_context=tls(stranger_cert, stranger_key)):
                pass
        # a token wins over the certificate
        async with aiobroker.connect(
            node.url, ssl_context=tls(stranger_cert, stranger_key), token=ROOT_TOKEN
        ) as root:
            assert root.identity == "root"
            assert await depth(root, "qA") == 1


# --- start-up ---------------------------------------------------------------------------------------------------


async def test_the_node_identity_must_exist_with_a_private_key() -> None:
    with pytest.raises(ConfigError, match=r"\[security\] identity.*'nobody' does not exist"):
        async with aiobroker.Node(NodeConfig(store="memory", listen_port=0, node_identity="nobody")):
            pass
    cert, _key = create_self_signed("keyless", key_type="ec")
    config = NodeConfig(
        store="memory", listen_port=0, node_identity="keyless", objects=(identity("keyless", certificate=cert),)
    )
    with pytest.raises(ConfigError, match="'keyless' has no private key"):
        async with aiobroker.Node(config):
            pass


async def test_config_identities_come_first_and_a_changed_one_is_named_without_its_key(tmp_path: Path) -> None:
    cert, key = create_self_signed("owner", key_type="ec")
    objects = (
        ("queue", {"name": "q"}),
        ("service", {"name": "svc", "queue": "q", "owner": "owner"}),  # written before its owner
        identity("owner", certificate=cert, private_key=key),
    )
    config = NodeConfig(store="sqlite", data_dir=tmp_path / "data", listen_port=0, objects=objects)
    async with aiobroker.Node(config) as node:
        async with aiobroker.connect(node.url) as client:
            assert [s.get("owner") for s in await client.list("service") if s["name"] == "svc"] == ["owner"]
    async with aiobroker.Node(config):  # the same config again: every object matches what is stored
        pass
    changed = NodeConfig(
        store="sqlite",
        data_dir=tmp_path / "data",
        listen_port=0,
        objects=(identity("owner", certificate=cert, private_key=key, admin=True),),
    )
    with pytest.raises(ConfigError, match="config identity 'owner': it exists with another definition") as info:
        async with aiobroker.Node(changed):
            pass
    assert "PRIVATE KEY" not in info.value.message and "has_private_key" in info.value.message


# --- a real node process ----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_node_process_with_authorization_from_its_config_file(tmp_path: Path) -> None:
    cert, key = create_self_signed("node", key_type="ec")
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "node.crt").write_text(cert)
    (tmp_path / "certs" / "node.key").write_text(key)
    config = tmp_path / "node.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [security]
            identity = "node"
            authorization = true
            binding_failure_cache = 30

            [[queue]]
            name = "orders"

            [[service]]
            name = "//shop/Orders"
            queue = "orders"
            contracts = ["DEFAULT"]

            [[identity]]
            name = "node"
            certificate = "certs/node.crt"
            private_key = "certs/node.key"

            [[identity]]
            name = "root"
            tokens = ["{ROOT_TOKEN}"]
            admin = true

            [[identity]]
            name = "alice"
            tokens = ["{ALICE_TOKEN}"]
            send = ["//shop/Orders"]
            """
        )
    )
    proc = NodeProcess(tmp_path / "data", extra=["--config", str(config)]).start()
    try:
        async with aiobroker.connect(proc.url, token=ALICE_TOKEN) as alice, aiobroker.connect(
            proc.url, token=ROOT_TOKEN
        ) as root, aiobroker.connect(proc.url) as anon:
            await root.create_queue("shop")
            await root.create_service("//shop/Client", "shop")
            await (await alice.begin_dialog("//shop/Client", "//shop/Orders")).send("DEFAULT", b"an order")
            with pytest.raises(NotAuthorized):
                await anon.begin_dialog("//shop/Client", "//shop/Orders")
            with pytest.raises(NotAuthorized):
                await alice.receive("orders")
            assert await depth(root, "orders") == 1
            names = {i["name"]: i for i in await root.list("identity")}
            assert set(names) == {"node", "root", "alice"} and names["node"]["has_private_key"] is True
        with pytest.raises(NotAuthorized, match="matches no identity"):
            async with aiobroker.connect(proc.url, token="wrong-token-0123456789"):
                pass
        assert proc.stop() == 0
        # restarted with the same config: the stored identities match it, and rights hold as before
        proc.start()
        async with aiobroker.connect(proc.url, token=ROOT_TOKEN) as root:
            assert await depth(root, "orders") == 1
        assert "refused client" in proc.output() and ROOT_TOKEN not in proc.output()
    finally:
        proc.stop()


# --- peer nodes ------------------------------------------------------------------------------------------------

LINK_TOKEN = "link-token-0123456789"


async def test_a_peer_node_links_only_with_an_identity_that_has_the_peer_right(caplog: pytest.LogCaptureFixture) -> None:
    """With authorization on, a node that links without a token (or with one lacking ``peer``) is refused at the
    handshake and its messages wait at home; with [federation] link_token naming a peer identity they arrive."""
    target_objects = (
        *BASE_OBJECTS,
        identity("neighbour", tokens=(LINK_TOKEN,), peer=True),
        identity("public", send=["svcB"]),  # plain dialogs' initiators are public: let them use svcB
    )
    target_config = NodeConfig(store="memory", listen_port=0, authorization=True, objects=target_objects)
    async with aiobroker.Node(target_config) as target:
        async def sender(link_token: str | None) -> NodeConfig:
            return NodeConfig(
                store="memory", listen_port=0, link_token=link_token, ack_timeout=0.5,
                objects=(
                    ("queue", {"name": "qS"}),
                    ("service", {"name": "svcS", "queue": "qS"}),
                    ("route", {"name": "to-b", "service_name": "svcB", "address": target.url}),
                ),
            )  # fmt: skip

        async with aiobroker.connect(target.url, token=ROOT_TOKEN) as root:
            with caplog.at_level(logging.WARNING, logger="aiobroker.node"):
                async with aiobroker.Node(await sender(None)) as stranger, aiobroker.connect(stranger.url) as c:
                    dialog = await c.begin_dialog("svcS", "svcB")
                    await dialog.send(body=b"let me link")
                    await _until(lambda: _refused_peer(caplog), "the target to refuse the unauthenticated peer")
                    assert await depth(root, "qB") == 0
                    entries = (await c.status())["transmission"]["entries"]
                    assert any("may not link" in str(e) or "refused" in str(e) for e in entries), entries

            async with aiobroker.Node(await sender(LINK_TOKEN)) as friend, aiobroker.connect(friend.url) as c:
                dialog = await c.begin_dialog("svcS", "svcB")
                await dialog.send(body=b"hello neighbour")

                async def arrived() -> bool:
                    return await depth(root, "qB") == 1

                await _until(arrived, "the peer's message to arrive")


def _refused_peer(caplog: pytest.LogCaptureFixture) -> bool:
    return any("refused peer node" in r.getMessage() and "may not link" in r.getMessage() for r in caplog.records)


async def _until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    import anyio

    with anyio.move_on_after(timeout):
        while True:
            result = check()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            await anyio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
