"""The wire codec: length-prefixed msgpack frames, the streaming decoder, its limits, and garbage.

The contract pinned here (aiobroker/wire/codec.py):

* any msgpack-able value round-trips through ``encode_frame`` -> ``FrameDecoder.feed`` unchanged;
* the decoder yields the same frames in the same order however the byte stream is split;
* a length header over ``max_frame_size`` is refused as soon as the header is seen; a frame at the limit
  is accepted;
* whatever bytes arrive, ``feed`` returns frames or raises :class:`ProtocolError`, never anything else, and
  the error says what was wrong.
"""

from __future__ import annotations

import datetime
import math
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiobroker.errors import BrokerError, ProtocolError
from aiobroker.wire.codec import (
    DEFAULT_MAX_FRAME_SIZE,
    HEADER,
    HEADER_SIZE,
    FrameDecoder,
    encode_frame,
    encode_frames,
    packb,
    unpackb,
)

INT_MIN = -(2**63)
UINT_MAX = 2**64 - 1

# --- helpers ------------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=INT_MIN, max_value=UINT_MAX),
    st.floats(),  # nan, inf, -0.0 included
    st.text(),
    st.binary(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=25,
)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same type all the way down: bytes is not str, bool is not int, -0.0 is not 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb) for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=False)
        )
    return bool(a == b)


def same_all(got: Sequence[Any], want: Sequence[Any]) -> bool:
    return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=False))


def frame_of(body: bytes) -> bytes:
    """A frame around an arbitrary (possibly invalid) body."""
    return HEADER.pack(len(body)) + body


def split_at(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(stream)]
    return [stream[a:b] for a, b in zip(points, points[1:], strict=False)]


def feed_all(decoder: FrameDecoder, chunks: Iterable[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def one_byte_at_a_time(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


def assert_informative(exc: BaseException) -> None:
    """A ProtocolError whose text says something (not msgpack's bare ``FormatError()``)."""
    assert isinstance(exc, ProtocolError)
    msg = str(exc)
    assert msg.strip(), "empty error message"
    assert not re.search(r"\(\w+: \)", msg), f"message names an exception but not what was wrong: {msg!r}"
    assert exc.code == "protocol_error"


def value_of_size(n: int) -> Any:
    """A value whose msgpack encoding is exactly ``n`` bytes (a bin, or ``[nil, bin]`` across head sizes)."""
    candidates: list[Any] = [None]
    for head in (2, 3, 5):  # bin8, bin16, bin32
        candidates.append(b"x" * max(n - head, 0))
        candidates.append([None, b"x" * max(n - 2 - head, 0)])
    for value in candidates:
        if len(packb(value)) == n:
            return value
    raise AssertionError(f"no value of {n} bytes")


# --- round trips --------------------------------------------------------------------------------------------

KINDS = [
    None,
    True,
    False,
    0,
    1,
    -1,
    127,
    128,
    -32,
    -33,
    255,
    256,
    65535,
    65536,
    2**32 - 1,
    2**32,
    INT_MIN,
    2**63 - 1,
    2**63,
    UINT_MAX,
    0.0,
    -0.0,
    1.5,
    -2.25e300,
    5e-324,
    math.inf,
    -math.inf,
    "",
    "a",
    "é☃💩",
    "\x00nul inside",
    "s" * 31,
    "s" * 32,
    "s" * 256,
    "s" * 70_000,
    b"",
    b"\x00\xff",
    b"b" * 256,
    b"b" * 70_000,
    [],
    [1, [2, [3, []]]],
    list(range(16)),
    list(range(70_000)),
    {},
    {"": None},
    {"a": b"b", "c": {"d": [None, True, 1.0]}},
    {str(i): i for i in range(16)},
    {"bytes": b"payload", "str": "payload"},
]


@pytest.mark.parametrize("value", KINDS, ids=lambda v: f"{type(v).__name__}:{repr(v)[:24]}")
def test_each_kind_of_value_round_trips(value: Any) -> None:
    frame = encode_frame(value)
    decoder = FrameDecoder()
    got = decoder.feed(frame)
    assert len(got) == 1
    assert same(got[0], value)
    assert decoder.buffered == 0
    assert decoder.frames_decoded == 1
    assert decoder.bytes_decoded == len(frame)


def test_nan_round_trips() -> None:
    (got,) = FrameDecoder().feed(encode_frame(math.nan))
    assert isinstance(got, float) and math.isnan(got)


def test_bytes_stay_bytes_and_str_stays_str() -> None:
    (got,) = FrameDecoder().feed(encode_frame({"s": "abc", "b": b"abc", "l": ["abc", b"abc"]}))
    assert type(got["s"]) is str
    assert type(got["b"]) is bytes
    assert [type(x) for x in got["l"]] == [str, bytes]
    assert got == {"s": "abc", "b": b"abc", "l": ["abc", b"abc"]}


def test_wire_layout_is_big_endian_length_then_msgpack() -> None:
    assert HEADER_SIZE == 4
    assert encode_frame(None) == b"\x00\x00\x00\x01\xc0"
    assert encode_frame([1, "a", b"b"]) == b"\x00\x00\x00\x07\x93\x01\xa1a\xc4\x01b"
    big = b"z" * 300
    assert encode_frame(big) == struct.pack(">I", 303) + b"\xc5\x01\x2c" + big
    for value in ({"k": [1, 2.5, None]}, "text", b"raw"):
        body = packb(value)
        assert encode_frame(value) == struct.pack(">I", len(body)) + body


def test_tuples_travel_as_lists() -> None:
    assert packb((1, "a")) == packb([1, "a"])
    assert FrameDecoder().feed(encode_frame((1, (2,)))) == [[1, [2]]]


def test_packb_and_unpackb_are_inverse() -> None:
    value = {"a": [1, -1, 2.5, "x", b"y", None, True, {"n": {}}]}
    assert same(unpackb(packb(value)), value)
    assert same(unpackb(bytearray(packb(value))), value)
    assert same(unpackb(memoryview(packb(value))), value)


@given(values)
@settings(max_examples=200, deadline=None)
def test_any_value_round_trips(value: Any) -> None:
    decoder = FrameDecoder()
    got = decoder.feed(encode_frame(value))
    assert len(got) == 1 and same(got[0], value)
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    "value, type_name",
    [
        ({1, 2}, "set"),
        (object(), "object"),
        (2**64, "int"),
        (INT_MIN - 1, "int"),
        (complex(1, 2), "complex"),
        (datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC), "datetime"),
        ([{1, 2}], "list"),
        ({"k": object()}, "dict"),
    ],
)
def test_values_that_cannot_travel_raise_protocol_error(value: Any, type_name: str) -> None:
    for encode in (packb, encode_frame, lambda v: encode_frames([None, v])):
        with pytest.raises(ProtocolError, match=rf"cannot encode {type_name} for the wire: \S") as info:
            encode(value)
        assert_informative(info.value)


def test_too_deep_a_value_to_encode_raises_protocol_error() -> None:
    value: Any = None
    for _ in range(2000):
        value = [value]
    with pytest.raises(ProtocolError, match="cannot encode list for the wire"):
        encode_frame(value)


# --- splitting the stream -----------------------------------------------------------------------------------


@given(st.lists(values, max_size=8), st.data())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_frames_are_the_same_however_the_stream_is_split(objs: list[Any], data: st.DataObject) -> None:
    stream = encode_frames(objs)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=20), label="cuts")

    whole = FrameDecoder()
    assert same_all(whole.feed(stream), objs)
    assert whole.buffered == 0

    bytewise = FrameDecoder()
    assert same_all(feed_all(bytewise, one_byte_at_a_time(stream)), objs)
    assert bytewise.buffered == 0

    random_split = FrameDecoder()
    assert same_all(feed_all(random_split, split_at(stream, cuts)), objs)
    assert random_split.buffered == 0

    for decoder in (whole, bytewise, random_split):
        assert decoder.frames_decoded == len(objs)
        assert decoder.bytes_decoded == len(stream)


@given(st.lists(st.integers(min_value=0, max_value=70_000), min_size=1, max_size=6), st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_large_frames_split_anywhere_come_out_whole(sizes: list[int], data: st.DataObject) -> None:
    """Frames on both sides of the size from which the decoder reads a view of the bytes rather than a copy
    (16 KiB), and ones spanning many reads (kept in pieces until whole), with small frames between them."""
    objs: list[Any] = []
    for i, size in enumerate(sizes):
        objs += [[i, bytes([i % 256]) * size, "x" * (size % 97)], i]
    stream = encode_frames(objs)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=40), label="cuts")
    decoder = FrameDecoder(max_frame_size=1 << 20)
    assert same_all(feed_all(decoder, split_at(stream, cuts)), objs)
    assert decoder.buffered == 0 and decoder.bytes_decoded == len(stream)


def test_one_byte_at_a_time_yields_each_frame_on_its_last_byte() -> None:
    objs = [None, "two", {"three": [3, 3, 3]}, b"\x04" * 300]
    frames = [encode_frame(o) for o in objs]
    decoder = FrameDecoder()
    for obj, frame in zip(objs, frames, strict=False):
        for i in range(len(frame) - 1):
            assert decoder.feed(frame[i : i + 1]) == []
            assert decoder.buffered == i + 1
        assert decoder.feed(frame[-1:]) == [obj]
        assert decoder.buffered == 0


def test_a_partial_frame_stays_buffered_until_the_rest_arrives() -> None:
    frame = encode_frame({"k": "v" * 100})
    decoder = FrameDecoder()
    assert decoder.feed(frame[:2]) == []  # half a header
    assert decoder.buffered == 2
    assert decoder.feed(frame[2:10]) == []  # the rest of the header and part of the body
    assert decoder.buffered == 10
    assert decoder.frames_decoded == 0 and decoder.bytes_decoded == 0
    assert decoder.feed(frame[10:] + frame[:3]) == [{"k": "v" * 100}]  # the end, plus the start of the next
    assert decoder.buffered == 3
    assert decoder.feed(frame[3:]) == [{"k": "v" * 100}]
    assert decoder.buffered == 0
    assert decoder.frames_decoded == 2 and decoder.bytes_decoded == 2 * len(frame)


def test_many_frames_in_one_chunk_come_out_together_in_order() -> None:
    objs = [{"seq": i, "body": b"x" * (i % 7), "tag": str(i)} for i in range(1000)]
    chunk = encode_frames(objs)
    assert chunk == b"".join(encode_frame(o) for o in objs)
    decoder = FrameDecoder()
    assert decoder.feed(chunk) == objs
    assert decoder.buffered == 0
    assert decoder.frames_decoded == 1000


def test_encode_frames_takes_any_iterable_and_nothing_gives_nothing() -> None:
    assert encode_frames(iter([1, 2])) == encode_frame(1) + encode_frame(2)
    assert encode_frames(o for o in ["a"]) == encode_frame("a")
    assert encode_frames([]) == b""
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.buffered == 0


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
def test_feed_takes_any_bytes_like(wrap: Any) -> None:
    stream = encode_frames(["a", b"b", [1]])
    decoder = FrameDecoder()
    assert decoder.feed(wrap(stream[:7])) == ["a"]
    assert decoder.feed(wrap(stream[7:])) == [b"b", [1]]


@pytest.mark.parametrize("size", [5, 40_000], ids=["small", "viewed"])
def test_decoded_frames_do_not_share_the_decoders_buffer(size: int) -> None:
    source = bytearray(encode_frames([b"first" * size, b"second"]))
    decoder = FrameDecoder()
    got = decoder.feed(source)
    source[:] = b"\x00" * len(source)
    assert got == [b"first" * size, b"second"]
    assert decoder.feed(encode_frame(b"third")) == [b"third"]


def test_repr_shows_the_state() -> None:
    decoder = FrameDecoder(max_frame_size=1000)
    decoder.feed(encode_frame(1) + b"\x00\x00")
    text = repr(decoder)
    assert "buffered=2" in text and "frames=1" in text and "max_frame_size=1000" in text


# --- limits -------------------------------------------------------------------------------------------------


def assert_names_size_and_limit(exc: BaseException, size: int, limit: int) -> None:
    msg = str(exc)
    assert re.search(rf"\b{size}\b", msg), msg
    assert re.search(rf"\b{limit}\b", msg), msg
    assert "limit" in msg


@pytest.mark.parametrize("limit", [1, 5, 100, 4096, 65538, 70_000])
def test_a_header_over_the_limit_is_refused_before_the_body_arrives(limit: int) -> None:
    decoder = FrameDecoder(max_frame_size=limit)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(HEADER.pack(limit + 1))  # the header alone, not one byte of body
    assert_names_size_and_limit(info.value, limit + 1, limit)


def test_an_oversized_header_is_refused_on_its_fourth_byte() -> None:
    decoder = FrameDecoder(max_frame_size=10)
    header = HEADER.pack(11)
    for i in range(3):
        assert decoder.feed(header[i : i + 1]) == []
    with pytest.raises(ProtocolError) as info:
        decoder.feed(header[3:])
    assert_names_size_and_limit(info.value, 11, 10)


def test_an_oversized_header_after_good_frames_in_the_same_stream_is_refused() -> None:
    decoder = FrameDecoder(max_frame_size=50)
    assert decoder.feed(encode_frames(["ok", "fine"])) == ["ok", "fine"]
    with pytest.raises(ProtocolError) as info:
        decoder.feed(HEADER.pack(2**32 - 1))
    assert_names_size_and_limit(info.value, 2**32 - 1, 50)


def test_the_default_limit_refuses_the_largest_header() -> None:
    assert DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(b"\xff\xff\xff\xff")
    assert_names_size_and_limit(info.value, 2**32 - 1, DEFAULT_MAX_FRAME_SIZE)


@pytest.mark.parametrize("limit", [1, 2, 5, 100, 257, 258, 259, 4096, 65538, 65539, 65540, 65541, 70_000])
def test_a_frame_exactly_at_the_limit_is_accepted_and_one_byte_more_is_not(limit: int) -> None:
    value = value_of_size(limit)
    frame = encode_frame(value)
    assert len(frame) == HEADER_SIZE + limit
    decoder = FrameDecoder(max_frame_size=limit)
    assert same_all(decoder.feed(frame), [value])
    assert decoder.buffered == 0
    if limit > 1:
        with pytest.raises(ProtocolError) as info:
            FrameDecoder(max_frame_size=limit - 1).feed(frame[:HEADER_SIZE])
        assert_names_size_and_limit(info.value, limit, limit - 1)


def test_a_frame_exactly_at_the_default_limit_is_accepted() -> None:
    value = b"\x00" * (DEFAULT_MAX_FRAME_SIZE - 5)  # bin32 head is 5 bytes
    frame = encode_frame(value)
    assert len(frame) == HEADER_SIZE + DEFAULT_MAX_FRAME_SIZE
    (got,) = FrameDecoder().feed(frame)
    assert type(got) is bytes and len(got) == len(value)


@pytest.mark.parametrize("bad", [0, -1])
def test_max_frame_size_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="max_frame_size must be positive"):
        FrameDecoder(max_frame_size=bad)


def test_unpackb_bounds_inner_lengths_by_max_size() -> None:
    assert unpackb(packb(b"x" * 10), max_size=10) == b"x" * 10
    with pytest.raises(ProtocolError):
        unpackb(packb(b"x" * 11), max_size=10)
    with pytest.raises(ProtocolError):
        unpackb(packb(["y"] * 11), max_size=10)


# --- garbage ------------------------------------------------------------------------------------------------

# Frame bodies that are not a valid frame; each must give a ProtocolError that says what was wrong.
NASTY_BODIES = {
    "empty body": b"",
    "reserved 0xc1": b"\xc1",
    "0xc1 inside an array": b"\x92\x01\xc1",
    "0xc1 as a map key": b"\x81\xc1\x01",
    "truncated fixarray": b"\x92\x01",
    "truncated array16": b"\xdc\x00\x03\x01\x02",
    "truncated array32": b"\xdd\x00\x00\x00\x02\xc0",
    "truncated fixmap": b"\x82\xa1a\x01\xa1b",
    "map missing its value": b"\x81\xa1a",
    "truncated map16": b"\xde\x00\x02\xa1a\x01",
    "truncated fixstr": b"\xa5abc",
    "truncated str8": b"\xd9\x10abc",
    "truncated bin8": b"\xc4\x05ab",
    "truncated uint16": b"\xcd\x01",
    "truncated uint64": b"\xcf\x00\x00\x00",
    "truncated float64": b"\xcb\x3f\xf0",
    "truncated array header": b"\xdc\x00",
    "two nils": b"\xc0\xc0",
    "two ints": b"\x01\x02",
    "two arrays": b"\x90\x90",
    "an object then garbage": b"\x91\x01\xc1",
    "fixext1": b"\xd4\x01\x00",
    "fixext16": b"\xd8\x05" + b"\x00" * 16,
    "ext8 empty": b"\xc7\x00\x05",
    "ext16 empty": b"\xc8\x00\x00\x05",
    "ext32 empty": b"\xc9\x00\x00\x00\x00\x7f",
    "timestamp ext -1, empty": b"\xc7\x00\xff",
    "empty ext inside a map": b"\x81\xa1e\xc7\x00\x01",
    "ext32": b"\xc9\x00\x00\x00\x01\x07\x00",
    "timestamp32 ext -1": b"\xd6\xff\x00\x00\x00\x00",
    "timestamp64 ext -1": b"\xd7\xff" + b"\x00" * 8,
    "timestamp96 ext -1": b"\xc7\x0c\xff" + b"\x00" * 12,
    "ext inside an array": b"\x91\xd4\x01\x00",
    "ext as a map value": b"\x81\xa1t\xd6\xff\x00\x00\x00\x00",
    "int map key": b"\x81\x01\x02",
    "negative int map key": b"\x81\xff\x02",
    "nil map key": b"\x81\xc0\x01",
    "bool map key": b"\x81\xc3\x01",
    "float map key": b"\x81\xcb" + struct.pack(">d", 1.5) + b"\x01",
    "array map key": b"\x81\x90\x01",
    "map map key": b"\x81\x80\x01",
    "int key in a nested map": b"\x91\x81\xa1a\x81\x01\x02",
    "100,000 nested arrays": b"\x91" * 100_000 + b"\xc0",
    "100,000 nested arrays, unterminated": b"\x91" * 100_000,
    "50,000 nested maps": b"\x81\xa0" * 50_000 + b"\xc0",
    "nesting just past msgpack's stack": b"\x91" * 1100 + b"\xc0",
    "huge array32 length": b"\xdd\xff\xff\xff\xff",
    "huge map32 length": b"\xdf\xff\xff\xff\xff",
    "huge str32 length": b"\xdb\xff\xff\xff\xff",
    "huge bin32 length": b"\xc6\xff\xff\xff\xff",
    "huge ext32 length": b"\xc9\xff\xff\xff\xff\x01",
    "array under the frame limit, over the frame": b"\xdd\x00\xff\xff\xff",
    "map under the frame limit, over the frame": b"\xdf\x00\x7f\xff\xff",
    "str under the frame limit, over the frame": b"\xdb\x00\xff\xff\xff",
    "bin under the frame limit, over the frame": b"\xc6\x00\xff\xff\xff",
    "nested huge arrays": b"\xdd\x00\xff\xff\xff" * 200,
    "nested huge maps": (b"\xdf\x00\x7f\xff\xff" + b"\xa0") * 200,
    "invalid utf-8 str": b"\xa2\xff\xfe",
    "overlong utf-8": b"\xa2\xc0\x80",
    "utf-8 surrogate": b"\xa3\xed\xa0\x80",
    "truncated utf-8 sequence": b"\xa1\xe2",
    "invalid utf-8 map key": b"\x81\xa1\xff\x01",
    "invalid utf-8 deep inside": b"\x91\x91\x81\xa1k\xa1\x80",
}


@pytest.mark.parametrize("body", NASTY_BODIES.values(), ids=NASTY_BODIES.keys())
def test_nasty_frame_bodies_raise_protocol_error(body: bytes) -> None:
    stream = frame_of(body)
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(stream)
    assert_informative(info.value)

    decoder = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        for chunk in one_byte_at_a_time(stream):
            decoder.feed(chunk)
    assert_informative(info.value)


@pytest.mark.parametrize("body", NASTY_BODIES.values(), ids=NASTY_BODIES.keys())
def test_nasty_bodies_raise_protocol_error_from_unpackb(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        unpackb(body)
    assert_informative(info.value)


def test_a_good_frame_before_a_nasty_one_is_returned_first() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame("good") + frame_of(b"\xc1")[:3]) == ["good"]
    with pytest.raises(ProtocolError):
        decoder.feed(frame_of(b"\xc1")[3:])


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"\xc1", "0xc1"),
        (b"\x91" * 100_000 + b"\xc0", "nested"),
        (b"\x01\x02", "more than one msgpack object"),
        (b"\xd6\xff\x00\x00\x00\x00", "ext"),
        (b"\xc7\x00\x05", "extension type 5 is not allowed"),
        (b"\x81\x01\x02", "map key"),
        (b"\xa2\xff\xfe", "utf-8"),
        (b"\xa5abc", "incomplete"),
    ],
)
def test_garbage_errors_say_what_was_wrong(body: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(frame_of(body))
    assert fragment in str(info.value)
    assert isinstance(info.value, BrokerError)


def feed_garbage(decoder: FrameDecoder, chunks: Iterable[bytes]) -> None:
    """Feed chunks as a connection would; a ProtocolError ends it, any other exception fails the test."""
    for chunk in chunks:
        try:
            frames = decoder.feed(chunk)
        except ProtocolError as exc:
            assert_informative(exc)
            return
        assert isinstance(frames, list)
        assert decoder.buffered < decoder.max_frame_size + HEADER_SIZE  # at most one incomplete frame held


# Raw random bytes mostly open with a huge length; framing the random body as well reaches the msgpack parser.
garbage_streams = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(frame_of),
    st.lists(st.binary(max_size=60).map(frame_of), min_size=1, max_size=5).map(b"".join),
    st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=40)).map(
        lambda t: frame_of(t[0]) + t[1]
    ),
)


cut_points = st.lists(st.integers(min_value=0, max_value=400), max_size=10)


@given(garbage_streams, cut_points, st.sampled_from([1, 7, 64, 1024, DEFAULT_MAX_FRAME_SIZE]))
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_bytes_give_frames_or_protocol_error_only(stream: bytes, cuts: list[int], limit: int) -> None:
    feed_garbage(FrameDecoder(max_frame_size=limit), split_at(stream, (c for c in cuts if c < len(stream))))
    feed_garbage(FrameDecoder(max_frame_size=limit), [stream])
    feed_garbage(FrameDecoder(max_frame_size=limit), one_byte_at_a_time(stream))


small_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=8,
)


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """Valid frames with a few bytes overwritten, inserted or cut: garbage that looks almost right."""
    stream = bytearray(encode_frames(draw(st.lists(small_values, min_size=1, max_size=3))))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        where = draw(st.integers(min_value=0, max_value=len(stream)))
        how = draw(st.sampled_from(["overwrite", "insert", "delete", "truncate"]))
        byte = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x90, 0xA0, 0xC1, 0xC7, 0xD4, 0xD6, 0xDC, 0xDD, 0xFF]))
        if how == "overwrite" and where < len(stream):
            stream[where] = byte
        elif how == "insert":
            stream.insert(where, byte)
        elif how == "delete" and where < len(stream):
            del stream[where]
        else:
            del stream[where:]
    return bytes(stream)


@given(mutated_streams(), cut_points)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_frames_give_frames_or_protocol_error_only(stream: bytes, cuts: list[int]) -> None:
    feed_garbage(FrameDecoder(max_frame_size=4096), split_at(stream, (c for c in cuts if c < len(stream))))
    feed_garbage(FrameDecoder(max_frame_size=4096), one_byte_at_a_time(stream))


#: the first bytes of a TLS ClientHello: a handshake record (22), version 3.1, a length, then the hello itself
TLS_CLIENT_HELLO_START = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03])


def test_a_tls_handshake_at_the_start_of_a_stream_is_named_as_such() -> None:
    with pytest.raises(ProtocolError, match="this looks like a TLS handshake, and this side speaks plain TCP"):
        FrameDecoder().feed(TLS_CLIENT_HELLO_START)


def test_the_same_bytes_after_a_frame_are_just_an_oversized_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame([1])) == [[1]]
    with pytest.raises(ProtocolError) as info:
        decoder.feed(TLS_CLIENT_HELLO_START)
    assert "TLS" not in str(info.value)
    assert_names_size_and_limit(info.value, HEADER.unpack(TLS_CLIENT_HELLO_START[:4])[0], decoder.max_frame_size)
