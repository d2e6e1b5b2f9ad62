"""The sandbox host's wire format on its unix socket (standard library only: the thin client imports it).

Frames: one type byte, a 4-byte big-endian length, the payload. Client → host: HELLO (JSON: protocol,
code fingerprint, argv, cwd), then SIGNAL frames (JSON: signum). Host → client: ACCEPT or STALE (JSON),
then OUT/ERR (raw bytes, in the order the task wrote them) and finally EXIT (JSON: code).
"""

from __future__ import annotations

import json
import socket
import struct

PROTOCOL = 1
HELLO, ACCEPT, STALE, OUT, ERR, EXIT, SIGNAL = b"H", b"A", b"S", b"O", b"E", b"X", b"G"
_HEADER = struct.Struct(">cI")
MAX_FRAME = 64 << 20


class ConnectionClosed(Exception):
    """The peer closed the connection (or died)."""


def send(sock: socket.socket, kind: bytes, payload: bytes | dict) -> None:
    body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
    sock.sendall(_HEADER.pack(kind, len(body)) + body)


def _exactly(sock: socket.socket, count: int) -> bytes:
    chunks = []
    while count:
        chunk = sock.recv(min(count, 1 << 20))
        if not chunk:
            raise ConnectionClosed()
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket) -> tuple[bytes, bytes]:
    """The next (type, payload); `ConnectionClosed` at the end of the stream."""
    kind, length = _HEADER.unpack(_exactly(sock, _HEADER.size))
    if length > MAX_FRAME:
        raise ConnectionClosed()
    return kind, _exactly(sock, length)


def decode(payload: bytes) -> dict:
    value = json.loads(payload)
    return value if isinstance(value, dict) else {}
