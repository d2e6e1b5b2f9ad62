"""The emulator's aiohttp server: API-key check, error bodies, the control plane, envd and `/_emulator/` admin.

Admin (no auth; the server listens on 127.0.0.1 only): `GET /_emulator/sandboxes` (live sandboxes),
`GET|POST|DELETE /_emulator/faults` (read, change, reset knobs), `GET /_emulator/stats`,
`POST /_emulator/sandboxes/{id}/kill` (the sandbox dies now), `POST /_emulator/creates/release` (held creates
answer).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from ..daytona_emulator.image import Image
from ..emulator_server import start_site, until_stopped
from . import control, envd
from .faults import Faults
from .sandboxes import ApiError, Registry

log = logging.getLogger("metaflow_sandbox_testing.e2b_emulator")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
admin = web.RouteTableDef()


async def _drain(request: web.BaseRequest) -> None:
    """Read what is left of the body, so a keep-alive connection stays usable."""
    try:
        while await request.content.readany():
            pass
    except Exception:
        pass


def _middleware(api_key: str | None) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        control_plane = request.path.startswith(("/v2/", "/sandboxes", "/templates", "/v3/"))
        streaming = request.content_type.startswith(envd.STREAM_TYPE)
        try:
            if control_plane and api_key is not None and request.headers.get("X-API-KEY") != api_key:
                raise ApiError(401, "Invalid API key, it must start with 'e2b_' and be a valid key")
            return await handler(request)
        except (envd.RpcError, envd.SandboxGone, ApiError, web.HTTPException) as error:
            await _drain(request)
            if isinstance(error, web.HTTPException):
                if error.status < 400:
                    raise
                error = ApiError(error.status, error.reason)
            if streaming and isinstance(error, envd.RpcError):
                return web.Response(body=envd.end_of_stream(error), content_type=envd.STREAM_TYPE)
            if isinstance(error, ApiError):
                body = {"code": error.status, "message": error.message}
                return web.json_response(body, status=error.status, headers=error.headers)
            return error.response()
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as error:
            log.exception("emulator error on %s %s", request.method, request.path)
            await _drain(request)
            return web.json_response({"code": 500, "message": f"emulator error: {error!r}"}, status=500)

    return middleware


@admin.get("/_emulator/sandboxes")
async def live(request: web.Request) -> web.Response:
    registry = control.registry_of(request)
    return web.json_response([sandbox.admin_json() for sandbox in registry.sandboxes.values()])


@admin.post("/_emulator/sandboxes/{id}/kill")
async def kill(request: web.Request) -> web.Response:
    registry = control.registry_of(request)
    registry.end(registry.get(request.match_info["id"]), "killed by the test")
    return web.json_response({"killed": request.match_info["id"]})


@admin.get("/_emulator/faults")
async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(control.registry_of(request).faults.to_json())


@admin.post("/_emulator/faults")
async def set_faults(request: web.Request) -> web.Response:
    try:
        faults = control.registry_of(request).faults.update(await control.json_body(request))
    except ValueError as error:
        raise ApiError(400, str(error)) from None
    return web.json_response(faults.to_json())


@admin.delete("/_emulator/faults")
async def reset_faults(request: web.Request) -> web.Response:
    return web.json_response(control.registry_of(request).faults.update({"reset": True}).to_json())


@admin.get("/_emulator/stats")
async def stats(request: web.Request) -> web.Response:
    return web.json_response(control.registry_of(request).stats)


@admin.post("/_emulator/creates/release")
async def release(request: web.Request) -> web.Response:
    await control.release_held_creates(control.registry_of(request))
    return web.json_response({"released": True})


async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    python: str | None = None,
    faults: Mapping[str, Any] | None = None,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT); then kill every sandbox and remove its directory."""
    if shutil.which("bwrap") is None:
        raise RuntimeError("the E2B emulator runs each command under bwrap (apt-get install bubblewrap)")
    root = tempfile.mkdtemp(prefix="e2b-emulator-")
    registry = Registry(root, Faults().update(faults or {}), Image.probe(python) if python else None)
    app = web.Application(middlewares=[_middleware(api_key)], client_max_size=1024**4)
    app["registry"] = registry
    app.add_routes(admin)
    app.add_routes(control.routes)
    app.add_routes(envd.routes)
    runner, base = await start_site(app, host, port)
    try:
        await until_stopped(stop, base, on_ready)
    finally:
        await registry.end_all()
        await runner.cleanup()
        shutil.rmtree(root, ignore_errors=True)
