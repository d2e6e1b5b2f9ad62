"""The emulator's aiohttp application and server: auth, error envelopes, routes, start and clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from ..emulator_server import start_site, until_stopped
from . import admin, api, toolbox
from .envelope import SOURCE_PROXY, EmulatorError, error_response
from .faults import Faults
from .image import Image
from .sandboxes import Registry

log = logging.getLogger("metaflow_sandbox_testing.daytona_emulator")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _drain(request: web.BaseRequest) -> None:
    """Read what is left of the body, so a keep-alive connection stays usable for the next request."""
    try:
        while await request.content.readany():
            pass
    except Exception:  # a broken body: the connection is closed anyway
        pass


def _middleware(api_key: str | None) -> Any:
    expected = f"Bearer {api_key}" if api_key else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        guarded = request.path.startswith(("/api/", "/toolbox/")) or request.path == "/api"
        try:
            if expected is not None and guarded and request.headers.get("Authorization") != expected:
                source = SOURCE_PROXY if request.path.startswith("/toolbox/") else "DAYTONA_API"
                raise EmulatorError(401, "Unauthorized: invalid or missing API key", source=source)
            return await handler(request)
        except EmulatorError as error:
            await _drain(request)
            return error.response(request)
        except web.HTTPException as error:  # unmatched route (404), wrong method (405), ...
            if error.status < 400:
                raise
            await _drain(request)
            return error_response(request, error.status, error.reason)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as error:
            log.exception("emulator error on %s %s", request.method, request.path)
            await _drain(request)
            return error_response(request, 500, f"emulator error: {error!r}")

    return middleware


def make_app(registry: Registry, api_key: str | None) -> web.Application:
    app = web.Application(middlewares=[_middleware(api_key)], client_max_size=1024**4)
    app["registry"] = registry
    app.add_routes(admin.routes)
    app.add_routes(api.routes)
    app.add_routes(toolbox.routes)
    return app


async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    python: str | None = None,
    state_dir: str | None = None,
    faults: Mapping[str, Any] | None = None,
    host_paths: Sequence[str] = (),
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until `stop` is set (or SIGTERM/SIGINT); then kill every sandbox's processes and remove them.

    `host_paths`: absolute directories (e.g. `/tmp`) the file API may reach outside a sandbox's home, as the
    sandbox's commands see them — for clients that write to a sandbox's `/tmp` (the emulator isolates nothing).
    """
    own_root = state_dir is None
    root = state_dir or tempfile.mkdtemp(prefix="daytona-emulator-")
    sandboxes_dir = os.path.join(root, "sandboxes")
    os.makedirs(sandboxes_dir, exist_ok=True)
    image = Image.probe(python) if python else None
    registry = Registry(
        sandboxes_dir,
        toolbox_url="",
        faults=Faults().update(faults or {}),
        image=image,
        host_paths=host_paths,
    )
    runner, base = await start_site(make_app(registry, api_key), host, port)
    registry.toolbox_url = f"{base}/toolbox"
    try:
        await until_stopped(stop, f"{base}/api", on_ready)
    finally:
        await registry.delete_all()
        await runner.cleanup()
        shutil.rmtree(root if own_root else sandboxes_dir, ignore_errors=True)
