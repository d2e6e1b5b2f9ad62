"""One asyncio event loop per process, on a daemon thread, for backends whose SDK is async.

Async SDKs (Daytona's `AsyncDaytona`, E2B's `AsyncSandbox`, boxlite) are driven from the synchronous
`Backend`/`Sandbox` contract through this module:

- `call(coroutine)` runs a coroutine on the loop and waits for it from any thread; an exception while
  waiting (a signal handler's, Ctrl-C) cancels it. `submit` returns the future instead.
- `AsyncCommand` turns a coroutine that produces a command's output on the loop into a `Command`: output
  crosses to the caller's thread with a bounded number of chunks in flight (when `on_output` falls behind,
  the coroutine's `emit` waits, so memory stays flat), and cancelling works at any moment.
- `at_exit(closer)` closes clients (HTTP sessions) quietly when the process exits, even for backends that
  were never closed; `spawn` keeps fire-and-forget tasks referenced until they end.

Importing this module imports asyncio; the rest of core does not.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .sandbox import KILLED, Command, Event

T = TypeVar("T")

#: `await emit(stream, data)`: hands a chunk of output to the caller's thread (waits while it is behind).
Emit = Callable[[str, bytes], Awaitable[None]]
#: Chunks in flight between the loop and the thread in `Sandbox.run`.
CAPACITY = 64

log = logging.getLogger(__name__)

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pid = 0
_closers: list[Callable[[], Awaitable[object]]] = []
_background: set[asyncio.Future[Any]] = set()


def loop() -> asyncio.AbstractEventLoop:
    """The process's loop, started on first use (and again in a forked child)."""
    global _loop, _thread, _pid
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive() or _pid != os.getpid():
            new_loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=_serve, args=(new_loop,), name="metaflow-sandbox-loop", daemon=True
            )
            thread.start()
            _loop, _thread, _pid = new_loop, thread, os.getpid()
        return _loop


def _serve(event_loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(event_loop)
    try:
        event_loop.run_forever()
    finally:  # stopped by shutdown(): end what is left, then close the loop
        pending = asyncio.all_tasks(event_loop)
        for task in pending:
            task.cancel()
        event_loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        event_loop.run_until_complete(event_loop.shutdown_asyncgens())
        event_loop.close()


def submit(coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Start `coroutine` on the loop (from any thread but the loop's own)."""
    return asyncio.run_coroutine_threadsafe(coroutine, loop())


def call(coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coroutine` on the loop and wait for its result; an exception while waiting cancels it."""
    future = submit(coroutine)
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()
        raise


def spawn(coroutine: Coroutine[Any, Any, Any]) -> None:
    """From code running on the loop: run `coroutine` in the background, referenced until it ends."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


def at_exit(closer: Callable[[], Awaitable[object]]) -> Callable[[], None]:
    """Await `closer()` on the loop when the process exits (or at `shutdown`); returns the undo."""
    with _lock:
        _closers.append(closer)

    def undo() -> None:
        with _lock:
            if closer in _closers:
                _closers.remove(closer)

    return undo


@atexit.register
def shutdown(timeout: float = 2.0) -> None:
    """Run the `at_exit` closers, cancel what still runs and stop the loop thread (idempotent). The next
    use starts a new loop."""
    global _loop, _thread
    with _lock:
        event_loop, thread, closers = _loop, _thread, list(_closers)
        _loop, _thread = None, None
        _closers.clear()
    if event_loop is None or thread is None or not thread.is_alive() or _pid != os.getpid():
        return

    async def close_all() -> None:
        await asyncio.gather(*(closer() for closer in closers), return_exceptions=True)

    try:
        asyncio.run_coroutine_threadsafe(close_all(), event_loop).result(timeout)
    except BaseException as error:
        log.debug("Closing async clients at exit: %s", error)
    event_loop.call_soon_threadsafe(event_loop.stop)
    thread.join(timeout)


class _Done:
    pass


_DONE = _Done()


class AsyncCommand(Command):
    """A command whose whole life is one coroutine on the loop.

    `body(emit)` starts the command, passes its output to `await emit(stream, data)` as it arrives and
    returns its exit code. `kill` (a coroutine function) stops the command inside the sandbox (e.g. deletes
    its session); after it, or right away when there is none, the body is cancelled. A body that raises
    makes `next` raise the same exception; a cancelled body counts as killed (137).
    """

    def __init__(
        self,
        body: Callable[[Emit], Coroutine[Any, Any, int]],
        *,
        kill: Callable[[], Coroutine[Any, Any, object]] | None = None,
        kill_timeout: float = 15.0,
        capacity: int = CAPACITY,
    ):
        self._loop = loop()
        self._queue: queue.SimpleQueue[tuple[str, bytes] | _Done] = queue.SimpleQueue()
        self._capacity = capacity
        self._credits: asyncio.Semaphore | None = None  # made on the loop, by the first emit
        self._kill = kill
        self._kill_timeout = kill_timeout
        self._killed = False
        self._future = submit(body(self._emit))
        self._future.add_done_callback(lambda _: self._queue.put(_DONE))

    async def _emit(self, stream: str, data: bytes) -> None:
        if not data:
            return
        if self._credits is None:
            self._credits = asyncio.Semaphore(self._capacity)
        await self._credits.acquire()
        self._queue.put((stream, data))

    def next(self, timeout: float) -> Event:
        try:
            item = self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if isinstance(item, _Done):
            self._queue.put(item)  # seen again by a later call
            if self._future.cancelled():
                return KILLED
            return self._future.result()
        if self._credits is not None:
            self._loop.call_soon_threadsafe(self._credits.release)
        return item

    def kill(self) -> None:
        if self._killed:
            return
        self._killed = True
        if self._kill is not None and not self._future.done():
            try:
                call(self._kill(), timeout=self._kill_timeout)
            except Exception as error:
                log.debug("Could not stop a command: %s", error)
        self._future.cancel()

    def close(self) -> None:
        self._future.cancel()
