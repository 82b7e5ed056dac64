"""Conversation handles, conversation ids and group ids (aiobroker/core/ids.py): random version 4 UUIDs spelled as
``str(uuid.uuid4())`` spells them, made from a pool of random bytes; never repeated, not even by a forked child."""

from __future__ import annotations

import os
import uuid

import pytest

from aiobroker.core import ids
from aiobroker.core.broker import BrokerCore


def test_ids_are_version_4_uuids_in_the_usual_spelling_and_never_repeat_across_pools() -> None:
    made = [ids.new_id() for _ in range(3 * ids.POOL + 7)]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_the_core_makes_its_handles_with_them() -> None:
    core = BrokerCore(broker_instance="node-a")
    core.create_object("queue", {"name": "q"})
    core.create_object("service", {"name": "s", "queue": "q", "contracts": ["DEFAULT"]})
    ep = core.begin_dialog(from_service="s", to_service="s", contract="DEFAULT", now=0.0)
    assert {uuid.UUID(x).version for x in (ep.handle, ep.conversation_id, ep.group_id)} == {4}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_does_not_repeat_its_parent_s_ids() -> None:
    ids.new_id()  # the parent's pool is made and partly used before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, " ".join(ids.new_id() for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {ids.new_id() for _ in range(50)}
    assert len(child) == 50 and not child & parent


def test_a_conversation_of_its_own_group_is_named_by_its_handle_one_string_for_both() -> None:
    core = BrokerCore(broker_instance="node-a")
    core.create_object("queue", {"name": "q"})
    core.create_object("service", {"name": "s", "queue": "q", "contracts": ["DEFAULT"]})
    first = core.begin_dialog(from_service="s", to_service="s", contract="DEFAULT", now=0.0)
    assert first.group_id is first.handle, "no third string per conversation (a DELAYED storm holds 100,000)"
    related = core.begin_dialog(from_service="s", to_service="s", contract="DEFAULT", now=0.0,
                                related_group=first.group_id)
    assert related.group_id == first.handle and related.handle != first.handle
    core.send(first.handle, [["DEFAULT", b"x"]], 0.0)
    far = core.endpoints[first.far_handle]  # made on this node as the first message was delivered
    assert far.group_id is far.handle and far.group_id != first.group_id
