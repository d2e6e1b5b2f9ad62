"""One `AsyncDaytona` client on a private event-loop thread, shared by a backend and its sandboxes.

The async client is used because the sync client's log stream cannot be cancelled (it hangs in httpx-ws):
with asyncio, a time-out or a `destroy()` simply cancels the task. Callers on any thread submit coroutines
and wait with `future.result()`, which a signal handler can interrupt.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .sdk import sdk

T = TypeVar("T")

#: Connections with a running loop, closed at exit. Strong references: a backend dropped without `close()`
#: must not leave its client to the garbage collector (aiohttp then complains about unclosed sessions).
_OPEN: set[DaytonaConnection] = set()
_OPEN_LOCK = threading.Lock()


class DaytonaConnection:
    def __init__(self, api_key: str, api_url: str, target: str | None = None):
        self.api_key = api_key
        self.api_url = api_url
        self.target = target
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._client_lock: asyncio.Lock | None = None

    # -- the loop -------------------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=self._serve, args=(loop,), name="daytona-sdk", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
                with _OPEN_LOCK:
                    _OPEN.add(self)
            return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:  # stopped by close(): end what is left, then close the loop
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coroutine` on the loop and wait for it; an exception while waiting (a signal) cancels it."""
        future = self.submit(coroutine)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def with_client(self, action: Callable[[Any], Awaitable[T]], timeout: float | None = None) -> T:
        """`call(action(client))` with the lazily created `AsyncDaytona` client."""

        async def run() -> T:
            return await action(await self.client())

        return self.call(run(), timeout)

    # -- the client (only used on the loop) -----------------------------------------------------------

    async def client(self) -> Any:
        if self._client_lock is None:
            self._client_lock = asyncio.Lock()
        async with self._client_lock:
            if self._client is None:
                daytona = sdk()
                config = daytona.DaytonaConfig(
                    api_key=self.api_key,
                    api_url=self.api_url,
                    target=self.target,
                    # Every run holds a log WebSocket for its whole duration: no pool limit.
                    connection_pool_maxsize=None,
                )
                self._client = daytona.AsyncDaytona(config)
            return self._client

    # -- shutdown -------------------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Close the client's HTTP sessions and stop the loop thread (idempotent)."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        with _OPEN_LOCK:
            _OPEN.discard(self)
        if loop is None or thread is None or not thread.is_alive():
            return
        client, self._client, self._client_lock = self._client, None, None
        if client is not None:
            try:
                asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout)
            except BaseException:
                pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)


@atexit.register
def _close_all() -> None:
    with _OPEN_LOCK:
        connections = list(_OPEN)
    for connection in connections:
        connection.close(timeout=2.0)
