"""One `AsyncDaytona` client per backend, on the process's shared event loop (`metaflow_sandbox_core.aio`).

The async client is used because the sync client's log stream cannot be cancelled (it hangs in httpx-ws):
with asyncio, a time-out or a `destroy()` simply cancels the task. The client is closed by `close()`, or at
exit for a backend nobody closed (aiohttp would otherwise complain about unclosed sessions).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from metaflow_sandbox_core import aio

from .sdk import sdk

T = TypeVar("T")


class DaytonaConnection:
    def __init__(self, api_key: str, api_url: str, target: str | None = None):
        self.api_key = api_key
        self.api_url = api_url
        self.target = target
        self._client: Any = None
        self._client_lock: asyncio.Lock | None = None
        self._forget_at_exit: Callable[[], None] | None = None

    def with_client(self, action: Callable[[Any], Awaitable[T]], timeout: float | None = None) -> T:
        """`aio.call(action(client))` with the lazily created `AsyncDaytona` client."""

        async def run() -> T:
            return await action(await self.client())

        return aio.call(run(), timeout)

    async def client(self) -> Any:
        """The client (on the loop only), made on first use."""
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
                self._forget_at_exit = aio.at_exit(self._close_client)
            return self._client

    async def _close_client(self) -> None:
        client, self._client, self._client_lock = self._client, None, None
        if client is not None:
            await client.close()

    def close(self, timeout: float = 5.0) -> None:
        """Close the client's HTTP sessions (idempotent)."""
        if self._forget_at_exit is not None:
            self._forget_at_exit()
            self._forget_at_exit = None
        if self._client is not None:
            try:
                aio.call(self._close_client(), timeout)
            except Exception:
                pass
