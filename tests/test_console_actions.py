"""The web console's page and the operator's actions (``POST /api/actions/...``), over real HTTP on loopback: nodes in
this process, driven by aiobroker's client over the wire, the actions posted as a browser would post them. What a
browser shows of them is tests/test_console_browser.py's."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from dynamic_helpers import Registry

import aiobroker
from aiobroker import NodeConfig

pytestmark = pytest.mark.anyio

ADMIN_TOKEN = "ops-token-0123456789"
APP_TOKEN = "app-token-0123456789"
READER_TOKEN = "reader-token-0123456789"

OBJECTS = (
    ("identity", {"name": "ops", "tokens": [ADMIN_TOKEN], "admin": True, "send": ["*"], "receive": ["*"]}),
    ("identity", {"name": "app", "tokens": [APP_TOKEN], "send": ["target"], "receive": ["qi"]}),
    ("identity", {"name": "reader", "tokens": [READER_TOKEN]}),
    ("queue", {"name": "qi"}),
    ("queue", {"name": "qt"}),
    ("service", {"name": "init", "queue": "qi", "contracts": []}),
    ("service", {"name": "target", "queue": "qt", "contracts": ["DEFAULT"]}),
)


@pytest.fixture
async def node() -> AsyncIterator[aiobroker.Node]:
    async with aiobroker.Node(NodeConfig(store="memory", listen_port=0, http_port=0, objects=OBJECTS)) as n:
        yield n


@pytest.fixture
async def guarded() -> AsyncIterator[aiobroker.Node]:
    config = NodeConfig(store="memory", listen_port=0, http_port=0, authorization=True, objects=OBJECTS)
    async with aiobroker.Node(config) as n:
        yield n


async def post(
    node: aiobroker.Node, action: str, body: Any, token: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    assert node.http_url is not None
    async with httpx.AsyncClient(base_url=node.http_url, timeout=10) as http:
        content = body if isinstance(body, (str, bytes)) else httpx.Request("POST", "/", json=body).content
        return await http.post(f"/api/actions/{action}", content=content, headers=sent)


async def get(node: aiobroker.Node, path: str, token: str | None = None) -> httpx.Response:
    assert node.http_url is not None
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(base_url=node.http_url, timeout=10) as http:
        return await http.get(path, headers=headers)


def queue_status(node: aiobroker.Node, name: str) -> bool:
    return bool(node.core.catalog.queues[name].status)


# ------------------------------------------------------------------------------------------------------ the page


async def test_the_page_and_its_files_come_from_the_package_with_headers_that_keep_them_to_the_node(
    node: aiobroker.Node,
) -> None:
    page = await get(node, "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/console/console.js" defer></script>' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    script = await get(node, "/console/console.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "/api/actions/enable-queue" in script.text
    style = await get(node, "/console/console.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    missing = await get(node, "/console/../app.py")
    assert missing.status_code == 404
    missing = await get(node, "/console/nothing.js")
    assert (
        missing.status_code == 404 and missing.json()["message"] == "no such file of the console: /console/nothing.js"
    )


async def test_with_authorization_the_page_is_served_but_what_it_reads_needs_a_token(guarded: aiobroker.Node) -> None:
    assert (await get(guarded, "/")).status_code == 200, "the page holds nothing of the node's"
    assert (await get(guarded, "/api/actions")).status_code == 401
    reader = await get(guarded, "/api/actions", READER_TOKEN)
    assert reader.json() == {"identity": "reader", "authorization": True, "admin": False}
    ops = await get(guarded, "/api/actions", ADMIN_TOKEN)
    assert ops.json() == {"identity": "ops", "authorization": True, "admin": True}


# ------------------------------------------------------------------------------------------- cross-site requests


async def test_an_action_sent_as_a_form_or_from_another_origin_is_refused_and_changes_nothing(
    node: aiobroker.Node,
) -> None:
    async with aiobroker.connect(node.url) as client:
        await client.alter_queue("qt", status="off")
    form = await post(node, "enable-queue", "queue=qt", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    assert form.json()["message"].startswith("an action's body must be sent as Content-Type: application/json")
    plain = await post(node, "enable-queue", '{"queue": "qt"}', headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415, "text/plain is what a cross-site fetch may send without asking first"
    elsewhere = await post(node, "enable-queue", {"queue": "qt"}, headers={"Origin": "http://evil.example"})
    assert (
        elsewhere.status_code == 403 and "from a page of http://evil.example is refused" in elsewhere.json()["message"]
    )
    assert not queue_status(node, "qt"), "nothing changed"
    assert node.http_url is not None
    same = await post(node, "enable-queue", {"queue": "qt"}, headers={"Origin": node.http_url})
    assert same.status_code == 200, same.text
    assert queue_status(node, "qt")


async def test_a_bad_body_is_refused_in_words(node: aiobroker.Node) -> None:
    r = await post(node, "enable-queue", "{not json")
    assert r.status_code == 400 and r.json()["message"].startswith("the body is not JSON")
    r = await post(node, "enable-queue", [1, 2])
    assert r.status_code == 400 and r.json()["message"] == "the body must be a JSON object; got list"
    r = await post(node, "enable-queue", {"name": "qt"})
    assert r.status_code == 400 and r.json()["message"] == "the body needs 'queue', a non-empty string"
    r = await post(node, "enable-queue", {"queue": "nope"})
    assert r.status_code == 404 and "queue 'nope' does not exist" in r.json()["message"]
    r = await post(node, "end-conversation", {"handle": "x", "cleanup": "yes"})
    assert r.status_code == 400 and r.json()["message"] == "'cleanup' must be true or false; got 'yes'"


# ------------------------------------------------------------------------------------------------------- rights


async def test_actions_need_the_rights_the_wire_needs(
    guarded: aiobroker.Node, caplog: pytest.LogCaptureFixture
) -> None:
    node = guarded
    caplog.set_level(logging.INFO, logger="aiobroker.http")
    async with aiobroker.connect(node.url, token=ADMIN_TOKEN) as ops:
        await ops.alter_queue("qt", status="off")
    r = await post(node, "enable-queue", {"queue": "qt"})
    assert r.status_code == 401 and "Authorization: Bearer TOKEN" in r.json()["message"]
    r = await post(node, "enable-queue", {"queue": "qt"}, READER_TOKEN)
    assert r.status_code == 403
    assert r.json()["message"].startswith("identity 'reader' may not alter queue 'qt': it needs the admin right")
    r = await post(node, "ask-again", {"service": "//far/x"}, APP_TOKEN)
    assert r.status_code == 403 and "identity 'app' may not use operation 'ask_again'" in r.json()["message"]
    assert not queue_status(node, "qt")
    r = await post(node, "enable-queue", {"queue": "qt"}, ADMIN_TOKEN)
    assert r.status_code == 200 and r.json()["message"].startswith("queue 'qt' is enabled")
    assert queue_status(node, "qt")
    done = [r.getMessage() for r in caplog.records if r.name == "aiobroker.http"]
    assert done == ["web console, identity 'ops': queue 'qt' is enabled: receivers get its messages again"], done

    # ending a conversation is the wire's end: its own application may, without admin; someone else may not
    async with aiobroker.connect(node.url, token=APP_TOKEN) as app:
        dialog = await app.begin_dialog("init", "target")
    r = await post(node, "end-conversation", {"handle": dialog.handle}, READER_TOKEN)
    assert r.status_code == 403 and r.json()["message"].startswith(
        f"identity 'reader' may not end conversation {dialog.handle}"
    )
    r = await post(node, "end-conversation", {"handle": dialog.handle}, APP_TOKEN)
    assert r.status_code == 200, r.text
    gone = await get(node, f"/api/conversations/{dialog.handle}", ADMIN_TOKEN)
    assert gone.json()["message"] == f"conversation {dialog.handle} has ended on this side"


# ------------------------------------------------------------------------------------------------------ actions


async def test_ending_a_delayed_conversation_with_cleanup_removes_it_and_its_messages(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        dialog = await client.begin_dialog("init", "//nowhere/Orders")
        await dialog.send("DEFAULT", b"never leaves")
        assert (await get(node, f"/api/conversations/{dialog.handle}")).json()["delayed"], "no route: DELAYED"
        r = await post(node, "end-conversation", {"handle": dialog.handle, "cleanup": True})
        assert r.status_code == 200, r.text
        assert r.json() == {
            "ok": True,
            "message": f"conversation {dialog.handle} is removed from this node (the far side was not told)",
            "result": {"dropped_delayed": 1},
        }
        described = (await get(node, f"/api/conversations/{dialog.handle}")).json()
        assert described["state"] == "CD" and described["delayed"] is None
        assert (await client.status())["delayed"] == {}, "its message left the transmission queue"


async def test_dropping_a_route_routes_its_conversations_again(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        await client.create_route("to-b", "tcp://127.0.0.1:9", service_name="//b/Orders")
        dialog = await client.begin_dialog("init", "//b/Orders")
        await dialog.send("DEFAULT", b"x")
        r = await post(node, "drop-route", {"route": "to-b"})
        assert r.status_code == 200, r.text
        assert r.json()["message"] == "route 'to-b' is dropped; the conversations that used it are routed again"
        assert [route["name"] for route in await client.list("route") if route["name"] == "to-b"] == []
        described = (await get(node, f"/api/conversations/{dialog.handle}")).json()
        assert described["delayed"] is not None, "no route any more (and no dynamic routing): it waits, DELAYED"
        r = await post(node, "drop-route", {"route": "to-b"})
        assert r.status_code == 404 and "route 'to-b' does not exist" in r.json()["message"]


async def test_ask_again_says_why_there_is_nothing_to_ask(tmp_path: Path) -> None:
    with Registry(tmp_path) as registry:
        registry.serve({"//slow/Orders": {"delay": 20, "body": {}}})  # the registry takes its time: in flight
        resolver = {"kind": "http", "url": registry.url(), "read_timeout": 30}
        config = NodeConfig(store="memory", listen_port=0, http_port=0, objects=OBJECTS, resolver=resolver)
        async with aiobroker.Node(config) as node, aiobroker.connect(node.url) as client:
            r = await post(node, "ask-again", {"service": "//slow/Orders"})
            assert r.status_code == 409
            assert (
                r.json()["message"] == "no conversation waits on service '//slow/Orders'; there is nothing to ask for"
            )
            dialog = await client.begin_dialog("init", "//slow/Orders")
            await dialog.send("DEFAULT", b"x")
            r = await post(node, "ask-again", {"service": "//slow/Orders"})
            assert r.status_code == 409, r.text
            message = r.json()["message"]
            assert message.startswith(
                "a request for service '//slow/Orders' is in flight already (resolver http, asked"
            )
            assert message.endswith("its answer is awaited")
            assert len(registry.requests("//slow/Orders")) <= 1, "no second request while one is in flight"


# -------------------------------------------------------------------------------------------- the console's reads


async def test_sending_says_how_a_page_of_conversations_fares_on_its_links(node: aiobroker.Node) -> None:
    async with aiobroker.connect(node.url) as client:
        local = await client.begin_dialog("init", "target")
        await local.send("DEFAULT", b"stays here")
        await client.create_route("to-b", "tcp://127.0.0.1:9", service_name="//b/Orders")  # port 9: nothing answers
        remote = await client.begin_dialog("init", "//b/Orders")
        await remote.send("DEFAULT", b"x")

        async def retrying() -> dict[str, Any]:
            r = await get(node, f"/api/console/sending?handle={remote.handle}&handle={local.handle}&handle=nope")
            assert r.status_code == 200, r.text
            return dict(r.json())

        with anyio.fail_after(10):
            while not (answer := await retrying())[remote.handle]["last_error"]:
                await anyio.sleep(0.05)
        state = answer[remote.handle]
        assert state["state"].startswith("retrying tcp://127.0.0.1:9: ") and state["address"] == "tcp://127.0.0.1:9"
        assert state["attempts"] >= 1 and state["next_attempt_in"] is not None
        assert answer[local.handle] is None and answer["nope"] is None, "nothing waits to be acknowledged"
    r = await get(node, "/api/console/sending")
    assert r.status_code == 400 and r.json()["message"] == "give from 1 to 100 conversations as handle=H; got 0"
    r = await get(node, "/api/console/sending?" + "&".join(f"handle=h{i}" for i in range(101)))
    assert r.status_code == 400 and r.json()["message"].endswith("got 101")


async def test_sending_needs_an_identity_when_authorization_is_on(guarded: aiobroker.Node) -> None:
    assert (await get(guarded, "/api/console/sending?handle=x")).status_code == 401
    r = await get(guarded, "/api/console/sending?handle=x", READER_TOKEN)
    assert r.status_code == 200 and r.json() == {"x": None}
