"""Cutting a command's output into lines for an `OutputCallback`, holding at most one partial line per stream."""

from __future__ import annotations

from collections.abc import Callable

#: A "line" longer than this is delivered in pieces of this size (bounds memory for newline-free output).
MAX_LINE_BYTES = 1024 * 1024

#: Receives each output line as it arrives: ("stdout" | "stderr", the line's bytes with its newline).
OutputCallback = Callable[[str, bytes], None]


class LineSplitter:
    """Turns chunks of several streams (split anywhere) into whole lines, each with its newline, in order.

    Only `\\n` ends a line. A final line without one is delivered by `flush`; a newline-free run of
    `max_line` bytes is delivered as a piece of its own. Without a callback, output is discarded.
    """

    def __init__(self, on_output: OutputCallback | None, max_line: int = MAX_LINE_BYTES):
        self._on_output = on_output
        self._max_line = max_line
        self._partial: dict[str, bytearray] = {}

    def feed(self, stream: str, chunk: bytes) -> None:
        on_output = self._on_output
        if on_output is None:
            return
        partial = self._partial.setdefault(stream, bytearray())
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if partial:
                partial += chunk[start : end + 1]
                line = bytes(partial)
                partial.clear()
            else:
                line = chunk[start : end + 1]
            on_output(stream, line)
            start = end + 1
        partial += chunk[start:]
        while len(partial) >= self._max_line:
            piece = bytes(partial[: self._max_line])
            del partial[: self._max_line]
            on_output(stream, piece)

    def flush(self) -> None:
        """Deliver each stream's unfinished last line (output that did not end with a newline)."""
        for stream, partial in self._partial.items():
            if partial and self._on_output is not None:
                line = bytes(partial)
                partial.clear()
                self._on_output(stream, line)
