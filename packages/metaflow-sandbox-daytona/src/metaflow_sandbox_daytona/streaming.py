"""From the SDK's log callbacks (on the event-loop thread) to `on_output(stream, line)` (on the caller's thread).

`OutputBridge` hands chunks across threads with a bounded number in flight: when the caller falls behind,
the SDK's (async) callback waits, the WebSocket read pauses, and memory stays flat. `LineSplitter` cuts the
chunks into lines per stream, keeping only an unfinished line (at most `MAX_PIECE`, then delivered as is).
"""

from __future__ import annotations

import asyncio
import queue

from metaflow_sandbox_core import OutputCallback

#: Newline-free output longer than this is delivered in pieces (as bubblewrap does).
MAX_PIECE = 1024 * 1024
#: Chunks in flight between the event loop and the caller's thread.
CAPACITY = 64


class _Done:
    pass


DONE = _Done()
Item = tuple[str, bytes] | _Done


class OutputBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = CAPACITY):
        self._loop = loop
        self._capacity = capacity
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._credits: asyncio.Semaphore | None = None

    # -- event-loop side --------------------------------------------------------------------------------

    async def _put(self, stream: str, text: str) -> None:
        if not text:
            return
        if self._credits is None:
            self._credits = asyncio.Semaphore(self._capacity)
        await self._credits.acquire()
        # The SDK decodes the stream as UTF-8 (invalid bytes become U+FFFD); encoding restores the bytes.
        self._queue.put((stream, text.encode("utf-8")))

    async def stdout(self, text: str) -> None:
        await self._put("stdout", text)

    async def stderr(self, text: str) -> None:
        await self._put("stderr", text)

    def finish(self) -> None:
        """No more output (thread-safe; called when the command's coroutine has ended)."""
        self._queue.put(DONE)

    # -- caller side ------------------------------------------------------------------------------------

    def get(self, timeout: float) -> Item | None:
        """The next chunk, `DONE`, or None after `timeout` seconds without either."""
        try:
            item = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if not isinstance(item, _Done) and self._credits is not None:
            self._loop.call_soon_threadsafe(self._credits.release)
        return item


class LineSplitter:
    def __init__(self, on_output: OutputCallback | None):
        self._on_output = on_output
        self._partial = {"stdout": b"", "stderr": b""}

    def feed(self, stream: str, data: bytes) -> None:
        on_output = self._on_output
        if on_output is None:
            return
        buffer = self._partial[stream] + data if self._partial[stream] else data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            on_output(stream, buffer[start : end + 1])
            start = end + 1
        rest = buffer[start:]
        while len(rest) >= MAX_PIECE:
            on_output(stream, rest[:MAX_PIECE])
            rest = rest[MAX_PIECE:]
        self._partial[stream] = rest

    def flush(self) -> None:
        """Deliver unfinished last lines (output that did not end with a newline)."""
        for stream, rest in self._partial.items():
            if rest and self._on_output is not None:
                self._on_output(stream, rest)
            self._partial[stream] = b""
