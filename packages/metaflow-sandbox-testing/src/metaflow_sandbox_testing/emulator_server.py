"""The aiohttp serving every emulator shares: a site on a free port, and a wait for SIGTERM/SIGINT or `stop`."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from aiohttp import web


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Serve `app` on host:port (0: a free one); the runner (for `cleanup`) and the `http://host:port` base."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
    await site.start()
    server = site._server
    assert server is not None
    bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, f"http://{host}:{bound}"


async def until_stopped(stop: asyncio.Event | None, url: str, on_ready: Callable[[str], None] | None) -> None:
    """Announce `url` to `on_ready`, then return once `stop` is set or SIGTERM or SIGINT arrives.

    The handlers go in before the announcement: whoever reads the URL may signal at once."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if on_ready is not None:
        on_ready(url)
    await stop.wait()
