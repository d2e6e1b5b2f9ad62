"""The emulator's own admin API under `/_emulator` (no auth; the server only listens on 127.0.0.1).

- `GET /_emulator/health` → `{"ok": true}`
- `GET /_emulator/sandboxes` → the live sandboxes `[{"id","name","state","labels","home","running_commands",
  "snapshot","dockerfile","cpu","memory","disk","gpu","network_block_all","env",...}]`
- `GET /_emulator/faults` → the knobs; `POST` a JSON object of knobs to change (`"reset": true` first restores
  the defaults); `DELETE` resets them all
- `GET /_emulator/stats` → counters (create requests, creates failed by fault, sandboxes created/deleted, ...)
- `POST /_emulator/sandboxes/{id}/kill` → the sandbox dies now (its commands exit 137, it is deleted)
"""

from __future__ import annotations

from aiohttp import web

from .envelope import EmulatorError
from .sandboxes import Registry

routes = web.RouteTableDef()


def _registry(request: web.Request) -> Registry:
    registry: Registry = request.app["registry"]
    return registry


@routes.get("/_emulator/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@routes.get("/_emulator/sandboxes")
async def sandboxes(request: web.Request) -> web.Response:
    return web.json_response([sandbox.admin_json() for sandbox in _registry(request).sandboxes.values()])


@routes.post("/_emulator/sandboxes/{sandbox}/kill")
async def kill(request: web.Request) -> web.Response:
    registry = _registry(request)
    await registry.kill(registry.get(request.match_info["sandbox"]))
    return web.json_response({"killed": request.match_info["sandbox"]})


@routes.get("/_emulator/faults")
async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(_registry(request).faults.to_json())


@routes.post("/_emulator/faults")
async def set_faults(request: web.Request) -> web.Response:
    try:
        changes = await request.json()
        if not isinstance(changes, dict):
            raise ValueError("expected a JSON object of fault knobs")
        faults = _registry(request).faults.update(changes)
    except ValueError as error:
        raise EmulatorError(400, str(error), code="BAD_REQUEST")
    return web.json_response(faults.to_json())


@routes.delete("/_emulator/faults")
async def reset_faults(request: web.Request) -> web.Response:
    return web.json_response(_registry(request).faults.update({"reset": True}).to_json())


@routes.get("/_emulator/stats")
async def stats(request: web.Request) -> web.Response:
    return web.json_response(_registry(request).stats)
