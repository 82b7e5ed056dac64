"""The protocol frames (aiobroker/wire/frames.py): their wire shape, the round trip through the codec, and
:func:`parse_frame` refusing every other shape with a :class:`ProtocolError` that says what was expected."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import aiobroker
from aiobroker.errors import ProtocolError
from aiobroker.wire.codec import FrameDecoder, encode_frame, encode_frames, unpackb
from aiobroker.wire.frames import (
    FAILED,
    HELLO,
    MAGIC,
    PROTOCOL_VERSION,
    REFUSED,
    REPLY,
    REQUEST,
    ROLES,
    WELCOME,
    Envelopes,
    Failed,
    Hello,
    Refused,
    Reply,
    Request,
    Welcome,
    envelopes_wire,
    parse_frame,
    reply_wire,
    request_wire,
)

INT_MIN = -(2**63)
UINT_MAX = 2**64 - 1
OPCODES = (HELLO, WELCOME, REFUSED, REQUEST, REPLY, FAILED)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=INT_MIN, max_value=UINT_MAX),
    st.floats(allow_nan=False),  # nan != nan would spoil the frame equality below
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
maps = st.dictionaries(st.text(max_size=8), values, max_size=4)
ints = st.integers(min_value=INT_MIN, max_value=UINT_MAX)

frames = st.one_of(
    st.builds(Hello, version=ints, role=st.sampled_from(ROLES), info=maps),
    st.builds(Welcome, version=ints, broker_instance=st.text(), info=maps),
    st.builds(Refused, code=st.text(), message=st.text()),
    st.builds(Request, request_id=ints, op=st.text(), args=maps),
    st.builds(Reply, request_id=ints, result=values),
    st.builds(Failed, request_id=ints, code=st.text(), message=st.text()),
)


def over_the_wire(frame: Any) -> Any:
    """to_wire -> encode -> decode -> parse_frame."""
    decoded = FrameDecoder().feed(encode_frame(frame.to_wire()))
    assert len(decoded) == 1
    return parse_frame(decoded[0])


def deep_list(depth: int) -> Any:
    """A list nested ``depth`` deep, decoded from the wire (msgpack allows about 1024 levels)."""
    return unpackb(b"\x91" * depth + b"\xc0")


# --- the frames and their wire shape ------------------------------------------------------------------------

EXAMPLES = [
    (Hello(), [1, "aiobroker", 1, "client", {}]),
    (
        Hello(version=7, role="peer", info={"node": "n1", "features": ["batch"]}),
        [1, MAGIC, 7, "peer", {"node": "n1", "features": ["batch"]}],
    ),
    (Welcome(version=1, broker_instance="b-42"), [2, 1, "b-42", {}]),
    (Welcome(version=1, broker_instance="", info={"x": None}), [2, 1, "", {"x": None}]),
    (Refused(code="version", message="speak version 1"), [3, "version", "speak version 1"]),
    (
        Request(request_id=5, op="send", args={"messages": [{"body": b"\x00\xff"}]}),
        [10, 5, "send", {"messages": [{"body": b"\x00\xff"}]}],
    ),
    (Request(request_id=0, op="", args={}), [10, 0, "", {}]),
    (Reply(request_id=5, result=None), [11, 5, None]),
    (
        Reply(request_id=UINT_MAX, result={"ids": [1, 2], "raw": b"r"}),
        [11, UINT_MAX, {"ids": [1, 2], "raw": b"r"}],
    ),
    (Reply(request_id=INT_MIN, result=[b"b", "s", 1.5, True]), [11, INT_MIN, [b"b", "s", 1.5, True]]),
    (
        Failed(request_id=9, code="unknown_object", message="no queue 'q'"),
        [12, 9, "unknown_object", "no queue 'q'"],
    ),
]


@pytest.mark.parametrize(
    "frame, wire", EXAMPLES, ids=[f"{type(f).__name__}-{i}" for i, (f, _) in enumerate(EXAMPLES)]
)
def test_each_frame_has_its_wire_shape_and_round_trips(frame: Any, wire: list[Any]) -> None:
    assert frame.to_wire() == wire
    assert parse_frame(wire) == frame
    back = over_the_wire(frame)
    assert type(back) is type(frame)
    assert back == frame


def test_opcodes_and_constants() -> None:
    assert (HELLO, WELCOME, REFUSED, REQUEST, REPLY, FAILED) == (1, 2, 3, 10, 11, 12)
    assert MAGIC == "aiobroker"
    assert PROTOCOL_VERSION == 1
    assert ROLES == ("client", "peer")


def test_the_hot_path_builders_give_exactly_their_frames_wire_shape() -> None:
    """``reply_wire`` and friends stand in for a frame class on the hot path; what they build is what the class
    would, and parses back to it."""
    built = [
        (request_wire(7, "send", {"handle": "h"}), Request(request_id=7, op="send", args={"handle": "h"})),
        (reply_wire(7, {"count": 2}), Reply(request_id=7, result={"count": 2})),
        (envelopes_wire([["m"]], [["a"]]), Envelopes(messages=[["m"]], acks=[["a"]])),
    ]
    for wire, frame in built:
        assert wire == frame.to_wire()
        assert [parse_frame(obj) for obj in FrameDecoder().feed(encode_frame(wire))] == [frame]


def test_the_shell_builds_no_frame_from_a_bare_opcode() -> None:
    """Every frame the node, its links and the client send is built by ``aiobroker/wire/frames.py`` (a frame class
    or a ``*_wire`` function), so the opcodes and shapes live in one place: no list literal elsewhere starts with
    an opcode, as a number or as the constant."""
    package = Path(aiobroker.__file__).parent
    names = {"HELLO", "WELCOME", "REFUSED", "REQUEST", "REPLY", "FAILED", "ENVELOPES"}
    numbers = set(OPCODES) | {20}
    found = []
    for path in [*(package / "node").rglob("*.py"), *(package / "client").rglob("*.py"), *(package / "transport").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.List) and len(node.elts) >= 3:
                first = node.elts[0]
                bare = isinstance(first, ast.Constant) and type(first.value) is int and first.value in numbers
                if bare or (isinstance(first, ast.Name) and first.id in names):
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "frames built by hand:\n" + "\n".join(found)


def test_hello_defaults_and_fresh_info() -> None:
    hello = Hello()
    assert (hello.version, hello.role, hello.info) == (PROTOCOL_VERSION, "client", {})
    assert Hello().info is not Hello().info
    assert Welcome(version=1, broker_instance="b").info == {}


def test_frames_are_frozen_and_keyword_only() -> None:
    reply = Reply(request_id=1, result=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        reply.request_id = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Reply(1, None)  # type: ignore[misc]


def test_bytes_and_str_keep_their_types_through_a_frame() -> None:
    back = over_the_wire(Reply(request_id=1, result={"s": "x", "b": b"x", "l": [b"y", "y"]}))
    assert type(back.result["s"]) is str and type(back.result["b"]) is bytes
    assert [type(v) for v in back.result["l"]] == [bytes, str]


def test_many_frames_in_one_write_parse_in_order() -> None:
    sent = [
        Hello(),
        Request(request_id=1, op="a", args={}),
        Reply(request_id=1, result=[1]),
        Failed(request_id=2, code="c", message="m"),
    ]
    got = [parse_frame(obj) for obj in FrameDecoder().feed(encode_frames(f.to_wire() for f in sent))]
    assert got == sent


@given(frames)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_frame_round_trips(frame: Any) -> None:
    back = over_the_wire(frame)
    assert type(back) is type(frame)
    assert back == frame
    assert back.to_wire() == frame.to_wire()


# --- malformed frames ---------------------------------------------------------------------------------------

SHAPE = {
    "opcode": r"expected \[opcode, \.\.\.\]",
    "unknown": r"unknown opcode .*expected one of 1, 2, 3, 10, 11, 12",
    HELLO: r"HELLO is \[1, 'aiobroker', version",
    WELCOME: r"WELCOME is \[2, version",
    REFUSED: r"REFUSED is \[3, code",
    REQUEST: r"REQUEST is \[10, request_id",
    REPLY: r"REPLY is \[11, request_id",
    FAILED: r"FAILED is \[12, request_id",
}

MALFORMED: list[tuple[str, Any, Any]] = [
    # not [opcode, ...]
    ("nil", None, "opcode"),
    ("int", 10, "opcode"),
    ("str", "hello", "opcode"),
    ("bytes", b"\x0a", "opcode"),
    ("map", {"op": 10}, "opcode"),
    ("empty list", [], "opcode"),
    ("str opcode", ["10", 1, "op", {}], "opcode"),
    ("float opcode", [10.0, 1, "op", {}], "opcode"),
    ("bool opcode", [True, MAGIC, 1, "client", {}], "opcode"),
    ("nil opcode", [None], "opcode"),
    ("list opcode", [[10], 1, "op", {}], "opcode"),
    # wrong opcode
    ("opcode 0", [0], "unknown"),
    ("opcode 4", [4, "x", "y"], "unknown"),
    ("opcode 13", [13, 1, "op", {}], "unknown"),
    ("opcode -1", [-1], "unknown"),
    ("opcode 2**64-1", [UINT_MAX, 1], "unknown"),
    # HELLO
    ("hello too short", [HELLO, MAGIC, 1, "client"], HELLO),
    ("hello too long", [HELLO, MAGIC, 1, "client", {}, None], HELLO),
    ("hello bare", [HELLO], HELLO),
    ("hello bad magic", [HELLO, "aiobrokr", 1, "client", {}], HELLO),
    ("hello magic as bytes", [HELLO, b"aiobroker", 1, "client", {}], HELLO),
    ("hello magic missing", [HELLO, 1, "client", {}, {}], HELLO),
    ("hello version str", [HELLO, MAGIC, "1", "client", {}], HELLO),
    ("hello version bool", [HELLO, MAGIC, True, "client", {}], HELLO),
    ("hello version float", [HELLO, MAGIC, 1.0, "client", {}], HELLO),
    ("hello bad role", [HELLO, MAGIC, 1, "admin", {}], HELLO),
    ("hello role as bytes", [HELLO, MAGIC, 1, b"client", {}], HELLO),
    ("hello role capitalised", [HELLO, MAGIC, 1, "Client", {}], HELLO),
    ("hello role nil", [HELLO, MAGIC, 1, None, {}], HELLO),
    ("hello role list", [HELLO, MAGIC, 1, ["client"], {}], HELLO),
    ("hello info list", [HELLO, MAGIC, 1, "client", []], HELLO),
    ("hello info nil", [HELLO, MAGIC, 1, "peer", None], HELLO),
    # WELCOME
    ("welcome too short", [WELCOME, 1, "b"], WELCOME),
    ("welcome too long", [WELCOME, 1, "b", {}, {}], WELCOME),
    ("welcome version str", [WELCOME, "1", "b", {}], WELCOME),
    ("welcome version bool", [WELCOME, False, "b", {}], WELCOME),
    ("welcome instance bytes", [WELCOME, 1, b"b", {}], WELCOME),
    ("welcome instance int", [WELCOME, 1, 7, {}], WELCOME),
    ("welcome info list", [WELCOME, 1, "b", []], WELCOME),
    ("welcome info str", [WELCOME, 1, "b", "{}"], WELCOME),
    # REFUSED
    ("refused too short", [REFUSED, "code"], REFUSED),
    ("refused too long", [REFUSED, "code", "msg", None], REFUSED),
    ("refused code int", [REFUSED, 1, "msg"], REFUSED),
    ("refused message bytes", [REFUSED, "code", b"msg"], REFUSED),
    ("refused message nil", [REFUSED, "code", None], REFUSED),
    # REQUEST
    ("request too short", [REQUEST, 1, "op"], REQUEST),
    ("request too long", [REQUEST, 1, "op", {}, {}], REQUEST),
    ("request bare", [REQUEST], REQUEST),
    ("request id str", [REQUEST, "1", "op", {}], REQUEST),
    ("request id bool", [REQUEST, True, "op", {}], REQUEST),
    ("request id float", [REQUEST, 1.0, "op", {}], REQUEST),
    ("request id nil", [REQUEST, None, "op", {}], REQUEST),
    ("request op bytes", [REQUEST, 1, b"op", {}], REQUEST),
    ("request op int", [REQUEST, 1, 3, {}], REQUEST),
    ("request args list", [REQUEST, 1, "op", []], REQUEST),
    ("request args nil", [REQUEST, 1, "op", None], REQUEST),
    # REPLY
    ("reply too short", [REPLY, 1], REPLY),
    ("reply too long", [REPLY, 1, None, None], REPLY),
    ("reply id str", [REPLY, "1", None], REPLY),
    ("reply id bool", [REPLY, False, None], REPLY),
    ("reply id bytes", [REPLY, b"\x01", None], REPLY),
    # FAILED
    ("failed too short", [FAILED, 1, "code"], FAILED),
    ("failed too long", [FAILED, 1, "code", "msg", "extra"], FAILED),
    ("failed id str", [FAILED, "1", "code", "msg"], FAILED),
    ("failed id bool", [FAILED, True, "code", "msg"], FAILED),
    ("failed code int", [FAILED, 1, 5, "msg"], FAILED),
    ("failed code bytes", [FAILED, 1, b"code", "msg"], FAILED),
    ("failed message nil", [FAILED, 1, "code", None], FAILED),
]

malformed = pytest.mark.parametrize(
    "obj, shape", [(o, s) for _, o, s in MALFORMED], ids=[name for name, _, _ in MALFORMED]
)


@malformed
def test_malformed_frames_raise_protocol_error_saying_what_was_expected(obj: Any, shape: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame(obj)
    msg = str(info.value)
    assert msg.startswith("malformed frame: "), msg
    assert re.search(SHAPE[shape], msg), msg
    assert info.value.code == "protocol_error"


@malformed
def test_malformed_frames_are_refused_when_they_come_off_the_wire(obj: Any, shape: Any) -> None:
    (decoded,) = FrameDecoder().feed(encode_frame(obj))
    with pytest.raises(ProtocolError, match=SHAPE[shape]):
        parse_frame(decoded)


def test_a_bad_role_says_which_roles_there_are() -> None:
    with pytest.raises(ProtocolError, match=r"'client' or 'peer'"):
        parse_frame([HELLO, MAGIC, 1, "admin", {}])


def test_the_error_shows_what_was_received_briefly() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame([REQUEST, "one", "op", {}])
    assert "got [10, 'one', 'op', {}]" in str(info.value)

    huge = [REQUEST, "id", "x" * 100_000, {str(i): i for i in range(10_000)}]
    with pytest.raises(ProtocolError) as info:
        parse_frame(huge)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("depth", [900, 1000, 1020])
@pytest.mark.parametrize(
    "build",
    [
        lambda deep: deep,  # the whole frame: its first element is not an int
        lambda deep: [deep],
        lambda deep: [REQUEST, 1, deep, {}],
        lambda deep: [REQUEST, deep, "op", {}],
        lambda deep: [HELLO, MAGIC, 1, deep, {}],
        lambda deep: [HELLO, deep, 1, "client", {}],
        lambda deep: [WELCOME, 1, "b", deep],
        lambda deep: [FAILED, 1, "code", deep],
        lambda deep: [REFUSED, deep, "msg"],
        lambda deep: [REPLY, 1, deep, "extra"],
    ],
    ids=[
        "whole",
        "opcode",
        "request-op",
        "request-id",
        "hello-role",
        "hello-magic",
        "welcome-info",
        "failed-message",
        "refused-code",
        "reply-arity",
    ],
)
def test_deeply_nested_malformed_frames_raise_protocol_error(build: Any, depth: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame(build(deep_list(depth)))
    assert len(str(info.value)) < 300


def test_a_deeply_nested_result_is_a_valid_reply() -> None:
    deep = deep_list(1020)
    reply = parse_frame([REPLY, 1, deep])
    assert isinstance(reply, Reply) and reply.result is deep


def test_deeply_nested_garbage_off_the_wire_is_refused() -> None:
    body = b"\x94\x0a\x01" + b"\x91" * 1020 + b"\xc0" + b"\x80"  # [10, 1, [[[...nil...]]], {}]
    stream = len(body).to_bytes(4, "big") + body
    (decoded,) = FrameDecoder().feed(stream)
    with pytest.raises(ProtocolError, match=SHAPE[REQUEST]):
        parse_frame(decoded)


# --- arbitrary values ---------------------------------------------------------------------------------------

# Mostly frame-like lists, so that parse_frame gets past the opcode check and into each opcode's checks.
specials = [MAGIC, "client", "peer", "admin", b"aiobroker", b"client", {}, [], 0, 1, True, None, "", 1.0]
field_values = st.one_of(
    scalars,
    st.sampled_from(specials),
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=4), scalars, max_size=3),
)
frame_like = st.builds(
    lambda op, rest: [op, *rest],
    st.one_of(st.sampled_from(OPCODES), st.integers(min_value=-2, max_value=20), scalars),
    st.lists(field_values, max_size=6),
)


@st.composite
def near_frames(draw: st.DrawFn) -> list[Any]:
    """A valid frame's wire list, left alone or with one element replaced, dropped or added."""
    wire: list[Any] = draw(frames).to_wire()
    how = draw(st.sampled_from(["keep", "replace", "drop", "add"]))
    where = draw(st.integers(min_value=0, max_value=len(wire) - 1))
    if how == "replace":
        wire[where] = draw(field_values)
    elif how == "drop":
        del wire[where]
    elif how == "add":
        wire.insert(where, draw(field_values))
    return wire


@given(st.one_of(values, frame_like, near_frames()))
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_parse_frame_on_anything_returns_a_frame_or_raises_protocol_error(obj: Any) -> None:
    try:
        frame = parse_frame(obj)
    except ProtocolError as exc:
        assert re.match(r"malformed frame: .*(expected| is \[)", str(exc)), str(exc)
        event("refused")
        return
    event(f"parsed {type(frame).__name__}")
    assert isinstance(frame, (Hello, Welcome, Refused, Request, Reply, Failed))
    assert frame.to_wire() == obj  # parsing neither drops nor changes anything
