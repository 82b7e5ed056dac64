"""A framed connection over an anyio byte stream: frames out through one buffered writer, frames in by chunk.

Writes are never made per frame: :meth:`FramedConnection.send` appends to a buffer and wakes the writer task,
which sends everything buffered in one ``send()``. So all the replies produced while handling one received chunk,
or all the requests made by concurrent callers in one loop iteration, leave in one write (DESIGN.md, "What the
hot path costs"). Reads take whatever the socket has (up to ``READ_SIZE``) and parse every whole frame in it.

The output buffer is bounded: a peer that stops reading while we keep producing is disconnected rather than
allowed to grow our memory without limit.

Each connection notes when it last received bytes or began a write (:attr:`FramedConnection.last_active`, one clock
read per chunk or write, not per frame), so the node can close connections that have been idle too long
(:mod:`aiobroker.node.admission`).
"""

from __future__ import annotations

import logging
import os
import ssl
from time import monotonic
from typing import Any

import anyio
from anyio.abc import ByteStream

from ..errors import ConnectionLost, MessageTooLarge, ProtocolError
from .tls import describe_tls_error, find_tls_error
from ..wire.codec import DEFAULT_MAX_FRAME_SIZE, HEADER, FrameDecoder, packb
from ..wire.frames import Frame, parse_frame

log = logging.getLogger("aiobroker.transport")

READ_SIZE = 256 * 1024
#: Bytes of frames waiting to be written before the peer is judged not to be reading and is disconnected.
#: Generous: a few receive batches of large messages.
DEFAULT_MAX_PENDING_OUTPUT = 256 * 1024 * 1024

_BROKEN = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    ConnectionError,
    OSError,
)


def describe_os_error(exc: BaseException) -> str:
    """The most telling words for a socket error: the underlying cause (e.g. "Connection refused") rather than
    anyio's "All connection attempts failed", which keeps the real reasons in its cause chain."""
    seen: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.append(e)
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        if e.__cause__ is not None:
            stack.append(e.__cause__)
        if isinstance(e, ssl.SSLError):
            # a node's link to a peer: its CA file is its [tls] ca
            return f"TLS handshake failed: {describe_tls_error(e, far='the peer', near='this node', ca='[tls] ca')}"
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno).lower()  # asyncio's own strerror says only "Connect call failed"
    return str(exc) or type(exc).__name__


class FramedConnection:
    __slots__ = (
        "stream", "decoder", "_out", "_out_bytes", "_wake", "closed", "max_pending_output", "peer", "last_active",
        "writing",
    )

    def __init__(
        self,
        stream: ByteStream,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_pending_output: int = DEFAULT_MAX_PENDING_OUTPUT,
        peer: str = "?",
    ) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_frame_size)
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._wake = anyio.Event()
        self.closed = False
        self.max_pending_output = max_pending_output
        self.peer = peer
        #: when (time.monotonic()) bytes last arrived or a write last began
        self.last_active = monotonic()
        #: a write is under way (the peer may not be reading: it can last)
        self.writing = False

    def send(self, obj: Any, limit: int | None = None) -> None:
        """Queue one frame for the writer (does not wait). With ``limit``, a frame over it is refused here with
        :class:`MessageTooLarge` rather than sent to a peer that would refuse it and close the connection."""
        if self.closed:
            return
        body = packb(obj)
        if limit is not None and len(body) > limit:
            raise MessageTooLarge(
                f"a request of {len(body)} bytes is over the node's max_frame_size of {limit} bytes;"
                " send fewer messages per batch"
            )
        self._out.append(HEADER.pack(len(body)))
        self._out.append(body)
        self._out_bytes += len(body) + 4
        if self._out_bytes > self.max_pending_output:
            log.warning(
                "%s is not reading its replies (%d bytes waiting); disconnecting it", self.peer, self._out_bytes,
                extra={"peer": self.peer},
            )
            self.close()
            return
        self._wake.set()

    @property
    def output_waiting(self) -> bool:
        """Frames are queued for the writer and not yet written."""
        return bool(self._out)

    def send_frame(self, frame: Frame) -> None:
        self.send(frame.to_wire())

    async def writer(self) -> None:
        """Run in the connection's task group: write what is buffered, joined, until the connection closes."""
        try:
            while not self.closed:
                await self._wake.wait()
                self._wake = anyio.Event()
                if not self._out:
                    continue
                data = b"".join(self._out)
                self._out.clear()
                self._out_bytes = 0
                self.writing = True
                self.last_active = monotonic()
                await self.stream.send(data)
                self.writing = False
        except _BROKEN:
            pass
        finally:
            self.close()

    async def receive_frames(self) -> list[Frame]:
        """Wait for bytes and return the frames they complete (maybe none). Raises :class:`ConnectionLost` at end
        of stream and :class:`ProtocolError` for garbage."""
        try:
            chunk = await self.stream.receive(READ_SIZE)
        except _BROKEN as exc:
            tls_error = find_tls_error(exc)  # an alert from the far side (TLS 1.3 sends some only now)
            why = f": {describe_tls_error(tls_error)}" if tls_error is not None else ""
            raise ConnectionLost(f"connection to {self.peer} closed{why}") from exc
        self.last_active = monotonic()
        return [parse_frame(obj) for obj in self.decoder.feed(chunk)]

    async def receive_one(self) -> Frame:
        """The next single frame (the handshake uses this; it must arrive alone)."""
        while True:
            frames = await self.receive_frames()
            if len(frames) > 1:
                raise ProtocolError("the peer sent more frames before the handshake finished")
            if frames:
                return frames[0]

    async def flush(self) -> None:
        """Write what is buffered now, in this task (used when closing, after the writer has stopped)."""
        if self._out and not self.closed:
            data = b"".join(self._out)
            self._out.clear()
            self._out_bytes = 0
            try:
                await self.stream.send(data)
            except _BROKEN:
                pass

    async def send_last(self, frame: Frame) -> None:
        """Write what is buffered and one final frame (a refusal) straight to the stream, even after close()."""
        data = b"".join(self._out)
        body = packb(frame.to_wire())
        self._out.clear()
        try:
            await self.stream.send(data + HEADER.pack(len(body)) + body)
        except _BROKEN:
            pass
        self.close()

    def close(self) -> None:
        """Mark closed and wake the writer so its task ends; the owner closes the stream."""
        self.closed = True
        self._wake.set()

    async def aclose(self) -> None:
        self.close()
        with anyio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except _BROKEN:
                pass
