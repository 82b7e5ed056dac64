"""Framing: length-prefixed msgpack, with explicit limits.

A frame on the wire is a 4-byte unsigned big-endian length ``N`` followed by ``N`` bytes of msgpack. This module
is the only one that imports msgpack; everything else calls :func:`packb` / :func:`unpackb` or the decoder.

The decoder is fed whatever bytes the socket produced (one byte or a megabyte) and returns the whole frames it
now holds. Anything that is not a valid frame (a length over the limit, bytes that are not msgpack, msgpack that
holds more than one object, an extension type) raises :class:`ProtocolError` and nothing else: the caller closes
the connection. Reading many frames out of one received chunk, and joining many frames into one write, is what
makes the hot path cheap (DESIGN.md, "What the hot path costs").
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, Final

import msgpack

from ..errors import ProtocolError

#: The largest frame a node accepts by default: room for a batch of many messages, small enough that one
#: misbehaving client cannot make the node buffer an arbitrary amount. Configurable per node.
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024

HEADER = struct.Struct(">I")


def batch_bytes(max_frame_size: int) -> int:
    """Bytes of messages to put in one frame of at most ``max_frame_size``. A batch's size is estimated (each
    message's body plus a fixed allowance for the fields around it), so this leaves room for the frame's own fields:
    a reply's lease and conversations, an ENVELOPES frame's acknowledgements."""
    return max_frame_size - min(64 * 1024, max_frame_size // 16)
HEADER_SIZE = HEADER.size

_pack = msgpack.Packer(use_bin_type=True, datetime=False).pack


def packb(obj: Any) -> bytes:
    """Serialize one object to msgpack (bytes stay bytes, str stays str)."""
    try:
        return bytes(_pack(obj))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {type(obj).__name__} for the wire: {exc}") from exc


def _refuse_ext(code: int, data: bytes) -> Any:
    # max_ext_len=0 refuses every ext with data; this refuses the zero-length ones, which would otherwise come
    # back as msgpack.ExtType objects.
    raise ValueError(f"extension type {code} is not allowed on the wire")


# msgpack's C decoder raises these two with no text at all.
_SILENT_ERRORS = {
    msgpack.FormatError: "a byte that starts no msgpack type, such as the reserved 0xc1",
    msgpack.StackError: "containers nested too deeply",
}


def unpackb(data: bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> Any:
    """Deserialize exactly one msgpack object; anything else is a :class:`ProtocolError`."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=max_size,
            max_str_len=max_size,
            max_array_len=max_size,
            max_map_len=max_size,
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except msgpack.ExtraData as exc:
        raise ProtocolError("frame holds more than one msgpack object") from exc
    except (ValueError, msgpack.UnpackException, TypeError, RecursionError) as exc:
        # msgpack reports truncated data, bad bytes, over-limit lengths and ext types as ValueError subclasses
        # (FormatError, StackError, ExtraData) or UnpackValueError; a frame is never partially valid.
        detail = str(exc) or _SILENT_ERRORS.get(type(exc), "no detail given")
        raise ProtocolError(f"frame is not valid msgpack ({type(exc).__name__}: {detail})") from exc


def encode_frame(obj: Any) -> bytes:
    """One frame: the length header and the msgpack body."""
    body = packb(obj)
    return HEADER.pack(len(body)) + body


def encode_frames(objs: Iterable[Any]) -> bytes:
    """Several frames joined for one write."""
    parts: list[bytes] = []
    for obj in objs:
        body = packb(obj)
        parts.append(HEADER.pack(len(body)))
        parts.append(body)
    return b"".join(parts)


def _oversized(buf: bytes | bytearray, pos: int, length: int, limit: int, at_start: bool) -> str:
    """Why a frame's length is refused. A TLS record (content type 22, handshake, then version 3.x) read as a
    length is always far over any limit: say what it is, so that a TLS client dialling a plain port is told so."""
    if at_start and buf[pos] == 0x16 and buf[pos + 1] == 0x03:
        return (
            "this looks like a TLS handshake, and this side speaks plain TCP: dial tcp://, or give the node a [tls]"
            " section to speak TLS"
        )
    return f"frame of {length} bytes is over the limit of {limit} bytes (split the batch, or raise max_frame_size on both sides)"


#: frames of at least this many bytes are decoded from a view of the bytes received rather than from a copy
#: (``benchmarks/bench_decoder.py``: below it, making and releasing a view costs more than copying the bytes)
_VIEW_FROM: Final = 16 * 1024


class FrameDecoder:
    """Feed bytes, get whole frames back.

    ``max_frame_size`` bounds one frame's body; since at most one incomplete frame is buffered, the buffer never
    holds more than ``max_frame_size + HEADER_SIZE`` bytes beyond what ``feed`` was just given.

    What it costs (a 4 MB frame of 1,000 4 KiB messages, fed in 64 KiB reads): frames are decoded from a
    memoryview of the bytes received, not from a copy of them; a frame that spans many reads is kept as the list of
    its pieces and joined once when whole. (It was one growing bytearray: CPython grows one by an eighth at a time,
    so a 4 MB frame was copied some 35 times over as it grew, 3.4 µs a message against 0.3 now:
    ``benchmarks/bench_decoder.py``.)
    """

    __slots__ = ("_rest", "_pieces", "_have", "_need", "max_frame_size", "frames_decoded", "bytes_decoded")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be positive")
        #: the bytes after the last whole frame, when they are less than a header or a small frame's start
        self._rest = b""
        #: a large frame's pieces, while it is incomplete: ``_have`` bytes of the ``_need`` its header announced
        self._pieces: list[bytes] = []
        self._have = 0
        self._need = 0
        self.max_frame_size = max_frame_size
        self.frames_decoded = 0
        self.bytes_decoded = 0

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._rest) + self._have

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Add received bytes; return every frame now complete, in order (possibly none)."""
        if self._pieces:  # inside a large frame: keep the piece, join only once the frame is whole
            self._pieces.append(bytes(data))
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._pieces)
            self._pieces, self._have, self._need = [], 0, 0
        elif self._rest:
            data = self._rest + data
            self._rest = b""
        elif not isinstance(data, bytes):
            data = bytes(data)  # immutable, so a view of it may outlive this call (in a traceback) harmlessly
        frames: list[Any] = []
        pos = 0
        end = len(data)
        limit = self.max_frame_size
        view = memoryview(data)
        try:
            while end - pos >= HEADER_SIZE:
                (length,) = HEADER.unpack_from(data, pos)
                if length > limit:
                    at_start = pos == 0 and self.bytes_decoded == 0  # the stream's first bytes
                    raise ProtocolError(_oversized(data, pos, length, limit, at_start))
                start = pos + HEADER_SIZE
                if end - start < length:
                    break
                # a small frame is cheaper to copy than to view (a view is an object to make and to release)
                body = data[start : start + length] if length < _VIEW_FROM else view[start : start + length]
                frames.append(unpackb(body, max_size=limit))
                pos = start + length
        finally:
            view.release()
            self.bytes_decoded += pos
            self.frames_decoded += len(frames)
        if pos < end:
            rest = data[pos:]
            if end - pos >= HEADER_SIZE:  # a frame begun: wait for the rest of it in pieces
                self._pieces, self._have = [rest], end - pos
                self._need = HEADER_SIZE + HEADER.unpack_from(rest, 0)[0]
            else:
                self._rest = rest
        return frames

    def __repr__(self) -> str:
        return (
            f"<FrameDecoder buffered={self.buffered} frames={self.frames_decoded}"
            f" max_frame_size={self.max_frame_size}>"
        )
