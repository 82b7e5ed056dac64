"""Remote service bindings through a resolver, between two node processes on loopback: the static_file resolver
names where a service is and how to secure it; the conversation is secured end to end without any binding made
by hand. And the same resolver with no binding: encryption=True waits, encryption=False goes on plain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dynamic_helpers import (
    assert_exactly_once_in_order,
    cid,
    node_pair,
    numbered,
    receive,
    service_state,
    until,
    write_atomically,
)

import aiobroker
from aiobroker.security.certs import create_self_signed

RELEASE_TIMEOUT = 20.0


def routes_with_binding(service: str, address: str, certificate_file: str | None) -> str:
    lines = [f"[services.{json.dumps(service)}]", f"targets = [{{ address = {json.dumps(address)} }}]", ""]
    if certificate_file is not None:
        lines += [
            f"[services.{json.dumps(service)}.binding]",
            f"certificate_file = {json.dumps(certificate_file)}",
            "anonymous = true",
            "",
        ]
    return "\n".join(lines)


@pytest.mark.anyio
async def test_a_resolver_binding_secures_the_conversation_end_to_end(tmp_path: Path) -> None:
    tmp = tmp_path
    cert, key = create_self_signed("svcSecure owner", key_type="ec")
    resolver = {"kind": "static_file", "path": "routes.toml"}
    with node_pair(tmp, resolver) as pair:
        (pair.home_a / "owner.crt").write_text(cert)
        write_atomically(pair.home_a / "routes.toml", routes_with_binding("svcSecure", pair.b_address, "owner.crt"))
        async with aiobroker.connect(pair.a.url) as ca, aiobroker.connect(pair.b.url) as cb:
            await cb.create("identity", {"name": "owner", "certificate": cert, "private_key": key})
            await cb.create_queue("qs")
            await cb.create("service", {"name": "svcSecure", "queue": "qs", "contracts": ["DEFAULT"], "owner": "owner"})
            dialog = await ca.begin_dialog("svcA", "svcSecure", encryption=True)
            await dialog.send_many(numbered(0, 20))
            received = await receive(cb, "qs", 20, RELEASE_TIMEOUT)
            assert_exactly_once_in_order(received, {cid(dialog): 20})
            (ep,) = [c for c in await ca.list_conversations() if c["far_service"] == "svcSecure"]
            assert ep["secured"] is True, ep
            bindings = await ca.list("binding")
            assert [(b["to_service"], b["origin"], b["anonymous"]) for b in bindings] == [
                ("svcSecure", "static_file", True)
            ], bindings
            assert "PRIVATE" not in json.dumps(bindings) and "BEGIN CERTIFICATE" not in json.dumps(bindings)
            security = (await cb.status())["security"]
            assert security["secured_conversations"] >= 1 and security["messages_dropped"] == 0, security


@pytest.mark.anyio
async def test_with_no_binding_to_be_had_encrypted_waits_and_plain_goes_on(tmp_path: Path) -> None:
    tmp = tmp_path
    resolver = {"kind": "static_file", "path": "routes.toml"}
    with node_pair(tmp, resolver) as pair:
        write_atomically(pair.home_a / "routes.toml", routes_with_binding("svcB", pair.b_address, None))
        async with aiobroker.connect(pair.a.url) as ca, aiobroker.connect(pair.b.url) as cb:
            secure = await ca.begin_dialog("svcA", "svcB", encryption=True)
            plain = await ca.begin_dialog("svcA", "svcB", encryption=False)
            await secure.send_many(numbered(0, 3))
            await plain.send_many(numbered(0, 3))
            received = await receive(cb, "qb", 3, RELEASE_TIMEOUT)
            assert_exactly_once_in_order(received, {cid(plain): 3})

            async def binding_failed() -> dict[str, object] | None:
                state = service_state(await ca.status(), "svcB")
                request = (state or {}).get("binding_request") or {}
                last = request.get("last") if isinstance(request, dict) else None
                return state if last and not last["ok"] else None

            state = await until(binding_failed, 10, "A to hear the file has no binding for svcB")
            assert state["delayed_messages"] == 3, state  # the encrypted conversation's three wait
            status = await ca.status()
            assert "waiting for a remote service binding" in status["delayed"]["svcB"]["reason"], status["delayed"]
            assert not await cb.receive("qb", timeout=0), "an encrypted conversation's message went plain"
