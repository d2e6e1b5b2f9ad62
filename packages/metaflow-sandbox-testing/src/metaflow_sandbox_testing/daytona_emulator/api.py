"""Control-plane routes under `/api`: sandboxes (create, get, list by labels, delete) and the Socket.IO probe."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .envelope import EmulatorError
from .sandboxes import Registry

routes = web.RouteTableDef()


def _registry(request: web.Request) -> Registry:
    registry: Registry = request.app["registry"]
    return registry


@routes.route("*", "/api/socket.io/{tail:.*}")
async def socket_io(request: web.Request) -> web.Response:
    """The SDK's event channel. Refusing it makes the SDK fall back to polling, silently."""
    raise EmulatorError(401, "the emulator has no event channel; poll instead", code="UNAUTHORIZED")


@routes.post("/api/sandbox")
async def create_sandbox(request: web.Request) -> web.Response:
    registry = _registry(request)
    registry.stats["create_requests"] += 1
    try:
        body = await request.json()
    except ValueError:
        raise EmulatorError(400, "invalid JSON body", code="BAD_REQUEST")
    if not isinstance(body, dict):
        raise EmulatorError(400, "expected a JSON object", code="BAD_REQUEST")
    faults = registry.faults
    if faults.fail_creates > 0:
        faults.fail_creates -= 1
        registry.stats["creates_failed_by_fault"] += 1
        headers = {}
        if faults.retry_after is not None:
            headers["Retry-After"] = f"{faults.retry_after:g}"
        raise EmulatorError(
            faults.fail_status,
            f"emulated failure of sandbox creation (HTTP {faults.fail_status})",
            headers=headers,
        )
    _check_create(body)
    sandbox = registry.create(body)
    return web.json_response(sandbox.dto())


def _check_create(body: dict[str, Any]) -> None:
    if body.get("snapshot") and body.get("buildInfo"):
        raise EmulatorError(400, "Cannot specify both snapshot and buildInfo", code="BAD_REQUEST")
    for key in ("cpu", "memory", "disk", "gpu"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise EmulatorError(400, f"{key} must be a non-negative integer", code="BAD_REQUEST")
    for key in ("env", "labels"):
        value = body.get(key)
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            raise EmulatorError(400, f"{key} must map strings to strings", code="BAD_REQUEST")


@routes.get("/api/sandbox")
async def list_sandboxes(request: web.Request) -> web.Response:
    """`?labels=<JSON object>` (all must match), `limit`, `cursor` (an offset)."""
    wanted: dict[str, str] = {}
    if request.query.get("labels"):
        try:
            wanted = json.loads(request.query["labels"])
        except ValueError:
            raise EmulatorError(400, "labels must be a JSON object", code="BAD_REQUEST")
        if not isinstance(wanted, dict):
            raise EmulatorError(400, "labels must be a JSON object", code="BAD_REQUEST")
    matching = [
        sandbox
        for sandbox in _registry(request).sandboxes.values()
        if all(sandbox.labels.get(key) == value for key, value in wanted.items())
    ]
    try:
        start = int(request.query.get("cursor") or 0)
        limit = int(request.query.get("limit") or 100)
    except ValueError:
        raise EmulatorError(400, "cursor and limit must be integers", code="BAD_REQUEST")
    page = matching[start : start + limit]
    next_cursor = str(start + limit) if start + limit < len(matching) else None
    return web.json_response({"items": [sandbox.list_item() for sandbox in page], "nextCursor": next_cursor})


@routes.get("/api/sandbox/{sandbox}")
async def get_sandbox(request: web.Request) -> web.Response:
    sandbox = _registry(request).get(request.match_info["sandbox"])
    dto = sandbox.dto()
    sandbox.polled()  # fault `create_polls`: a pending create answers that many reads, then it is ready
    return web.json_response(dto)


@routes.delete("/api/sandbox/{sandbox}")
async def delete_sandbox(request: web.Request) -> web.Response:
    registry = _registry(request)
    sandbox = registry.get(request.match_info["sandbox"])
    dto = {**sandbox.dto(), "state": "destroying", "desiredState": "destroyed"}
    await registry.delete(sandbox)
    return web.json_response(dto)


@routes.get("/api/sandbox/{sandbox}/toolbox-proxy-url")
async def toolbox_proxy_url(request: web.Request) -> web.Response:
    registry = _registry(request)
    registry.get(request.match_info["sandbox"])
    return web.json_response({"url": registry.toolbox_url})


@routes.post("/api/sandbox/{sandbox}/last-activity")
async def last_activity(request: web.Request) -> web.Response:
    _registry(request).get(request.match_info["sandbox"]).touch()
    return web.Response(status=201)
