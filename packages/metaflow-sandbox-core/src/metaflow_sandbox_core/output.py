"""Cutting a command's output into lines for an `OutputCallback`, holding at most one partial line per stream."""

from __future__ import annotations

import re
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


#: C0 controls but tab and newline, DEL, and C1 controls (as UTF-8): what a terminal may act on (ESC starts CSI
#: and OSC sequences: cursor moves, window titles, OSC 52 clipboard writes, hyperlinks).
_CONTROLS = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


def _visible(match: re.Match[bytes]) -> bytes:
    found = match.group()
    return b"\\x%02x" % found[0] if len(found) == 1 else b"\\u%04x" % found[1]


def neutralize_controls(line: bytes) -> bytes:
    """`line` with each terminal control character shown as a visible escape (ESC → `\\x1b`, U+009B →
    `\\u009b`), so sandboxed output cannot drive the user's terminal. Tab and newline are kept."""
    return _CONTROLS.sub(_visible, line)
