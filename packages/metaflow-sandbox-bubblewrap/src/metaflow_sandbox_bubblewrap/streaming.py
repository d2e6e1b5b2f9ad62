"""Delivering a child's stdout and stderr line by line as they arrive, holding at most one partial line."""

from __future__ import annotations

import os
import selectors
import time
from collections.abc import Callable, Mapping

from metaflow_sandbox_core import OutputCallback

READ_SIZE = 64 * 1024
#: A "line" longer than this is delivered in pieces of this size (bounds memory for newline-free output).
MAX_LINE_BYTES = 1024 * 1024
POLL_INTERVAL = 0.1


class LineSplitter:
    """Cuts one stream into lines (each with its newline) for an `OutputCallback`."""

    def __init__(self, stream: str, on_output: OutputCallback | None, max_line: int = MAX_LINE_BYTES):
        self._stream = stream
        self._on_output = on_output
        self._max_line = max_line
        self._partial = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self._on_output is None:
            return
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if self._partial:
                self._partial += chunk[start : end + 1]
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = chunk[start : end + 1]
            self._on_output(self._stream, line)
            start = end + 1
        self._partial += chunk[start:]
        while len(self._partial) >= self._max_line:
            self._on_output(self._stream, bytes(self._partial[: self._max_line]))
            del self._partial[: self._max_line]

    def flush(self) -> None:
        """Deliver a final line that has no newline."""
        if self._partial and self._on_output is not None:
            line = bytes(self._partial)
            self._partial.clear()
            self._on_output(self._stream, line)


class OutputPump:
    """Reads several pipes with a selector and hands their lines to `on_output`."""

    def __init__(self, pipes: Mapping[str, int], on_output: OutputCallback | None):
        self._selector = selectors.DefaultSelector()
        self._splitters: dict[int, LineSplitter] = {}
        self._closed = False
        for stream, fd in pipes.items():
            self._selector.register(fd, selectors.EVENT_READ)
            self._splitters[fd] = LineSplitter(stream, on_output)

    def pump(self, *, deadline: float | None, exited: Callable[[], bool], grace: float = 2.0) -> bool:
        """Deliver output until every pipe is closed; False if `deadline` (monotonic) came first.

        Once `exited()` is true, pipes still held open (by a descendant that outlived the process) get
        `grace` more seconds, then they are abandoned.
        """
        if self._closed:
            return True
        exited_at: float | None = None
        while self._selector.get_map():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if exited_at is None and exited():
                exited_at = now
            if exited_at is not None and now - exited_at > grace:
                break
            wait = POLL_INTERVAL if deadline is None else min(POLL_INTERVAL, deadline - now)
            for key, _ in self._selector.select(wait):
                self._read(key.fd)
        self.close()
        return True

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        if chunk:
            self._splitters[fd].feed(chunk)
        else:
            self._selector.unregister(fd)
            self._splitters[fd].flush()

    def close(self, *, deliver_partial: bool = True) -> None:
        """Stop reading (idempotent); deliver partial lines of pipes not at end of file unless told not to."""
        if self._closed:
            return
        self._closed = True
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fd)
            if deliver_partial:
                self._splitters[key.fd].flush()
        self._selector.close()
