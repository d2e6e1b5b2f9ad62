"""The sandbox host's wire format on its unix socket (the thin client imports it: no JSON, no `socket`).

Frames: one type byte, a 4-byte big-endian length, the payload. Client → host: HELLO (NUL-separated: the
protocol, the client's code fingerprint, its working directory, then the task's argv; no field holds a NUL),
then SIGNAL frames (a signal number). Host → client: ACCEPT or STALE (the host's code fingerprint), then OUT/ERR
(raw bytes, in the order the task wrote them) and finally EXIT (the exit code). Numbers are ASCII decimals.
The protocol is part of the socket's name (`host_identity.host_socket`): a client never meets a host that
speaks another one.
"""

from __future__ import annotations

import os
import struct

TYPE_CHECKING = False  # not `typing`: every task pays the thin client's imports

if TYPE_CHECKING:
    from _socket import socket

PROTOCOL = 2
HELLO, ACCEPT, STALE, OUT, ERR, EXIT, SIGNAL = b"H", b"A", b"S", b"O", b"E", b"X", b"G"
_HEADER = struct.Struct(">cI")
MAX_FRAME = 64 << 20


class ConnectionClosed(Exception):
    """The peer closed the connection (or died)."""


class Hello:
    """What a client says first: the protocol and code it runs, and the task (argv, cwd) it hands over."""

    def __init__(self, code: str, cwd: str, argv: list[str], protocol: int = PROTOCOL):
        self.protocol, self.code, self.cwd, self.argv = protocol, code, cwd, argv

    def encode(self) -> bytes:
        fields = [str(self.protocol), self.code, self.cwd, *self.argv]
        return b"\0".join(os.fsencode(field) for field in fields)

    @classmethod
    def decode(cls, payload: bytes) -> Hello | None:
        """The hello in `payload`, or None if it is not one."""
        protocol, *fields = payload.split(b"\0")
        if len(fields) < 2 or not protocol.isdigit():
            return None
        code, cwd, *argv = (os.fsdecode(field) for field in fields)
        return cls(code, cwd, argv, int(protocol))


def send(sock: socket, kind: bytes, payload: bytes | int | str = b"") -> None:
    body = payload if isinstance(payload, bytes) else str(payload).encode()
    sock.sendall(_HEADER.pack(kind, len(body)) + body)


def _exactly(sock: socket, count: int) -> bytes:
    chunks = []
    while count:
        chunk = sock.recv(min(count, 1 << 20))
        if not chunk:
            raise ConnectionClosed()
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket) -> tuple[bytes, bytes]:
    """The next (type, payload); `ConnectionClosed` at the end of the stream."""
    kind, length = _HEADER.unpack(_exactly(sock, _HEADER.size))
    if length > MAX_FRAME:
        raise ConnectionClosed()
    return kind, _exactly(sock, length)


def number(payload: bytes, default: int) -> int:
    """The ASCII decimal in `payload` (SIGNAL, EXIT), or `default` if it holds none."""
    text = payload.strip()
    return int(text) if text.lstrip(b"-").isdigit() else default
