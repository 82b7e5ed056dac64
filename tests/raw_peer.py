"""Speaking to a node with raw bytes over a blocking socket: for tests of what it does with bad input."""

from __future__ import annotations

import socket
from typing import Any

from aiobroker.wire.codec import FrameDecoder, encode_frame


def _read_until_quiet(sock: socket.socket, decoder: FrameDecoder) -> list[Any]:
    """Frames until the node closes the connection or says nothing for the socket's time-out."""
    frames: list[Any] = []
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return frames
        if not data:
            return frames
        frames.extend(decoder.feed(data))


def talk(port: int, payload: bytes, timeout: float = 5.0) -> list[Any]:
    """Send ``payload`` as the first bytes of a connection; every frame the node sent back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        return _read_until_quiet(sock, FrameDecoder())


def after_hello(port: int, then: bytes, *, role: str = "client", timeout: float = 5.0) -> list[Any]:
    """Say HELLO as ``role``, wait for the answer, then send ``then``; every frame the node sent back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(encode_frame([1, "aiobroker", 1, role, {"broker_instance": "rogue"} if role == "peer" else {}]))
        decoder = FrameDecoder()
        frames: list[Any] = []
        while not frames:
            frames.extend(decoder.feed(sock.recv(65536)))
        sock.sendall(then)
        return frames + _read_until_quiet(sock, decoder)
