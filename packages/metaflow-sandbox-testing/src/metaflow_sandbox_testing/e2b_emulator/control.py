"""E2B's control plane (the routes `e2b.api.client` calls), auth by `X-API-KEY`, errors `{"code","message"}`.

| route | answer |
| --- | --- |
| `POST /v2/sandboxes` (NewSandboxV2) | 201 `{templateID, sandboxID, clientID, envdVersion, envdAccessToken, alias, domain}` |
| `GET /v2/sandboxes?metadata=<urlencoded k=v&..>&state=&limit=&nextToken=` | 200 `[ListedSandbox]`, `x-next-token` when more |
| `GET /sandboxes/{id}` | 200 SandboxDetail; 404 when it does not exist (killed, expired) |
| `DELETE /sandboxes/{id}` | 204; 404 when it does not exist |
| `POST /sandboxes/{id}/timeout` `{timeout}` | 204: the sandbox now ends `timeout` s from now |
| `POST /sandboxes/{id}/refreshes` `{duration}` | 204: same, never shortening it |
| `POST /v2/sandboxes/{id}/connect` `{timeout}` | 200 Sandbox (the timeout is extended, never shortened) |
| `PUT /sandboxes/{id}/network` | 204, recorded |
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from typing import Any

from aiohttp import web

from .sandboxes import ApiError, EmulatedSandbox, Registry

routes = web.RouteTableDef()
PAGE = 100


def registry_of(request: web.Request) -> Registry:
    registry: Registry = request.app["registry"]
    return registry


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "invalid JSON body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object")
    return body


def _created(sandbox: EmulatedSandbox) -> dict[str, Any]:
    return {
        "templateID": sandbox.template_id,
        "sandboxID": sandbox.id,
        "clientID": sandbox.client_id,
        "envdVersion": "0.6.4",
        "envdAccessToken": sandbox.access_token,
        "alias": sandbox.template_id,
        "domain": None,
    }


@routes.post("/v2/sandboxes")
async def create(request: web.Request) -> web.Response:
    registry = registry_of(request)
    registry.stats["create_requests"] += 1
    body = await json_body(request)
    faults = registry.faults
    if faults.fail_creates > 0:
        faults.fail_creates -= 1
        registry.stats["creates_failed_by_fault"] += 1
        headers = {} if faults.retry_after is None else {"Retry-After": f"{faults.retry_after:g}"}
        raise ApiError(faults.fail_status, f"emulated failure (HTTP {faults.fail_status})", headers)
    if faults.hold_creates > 0:
        faults.hold_creates -= 1
        registry.stats["creates_held_by_fault"] += 1
        await registry.release.wait()
    if not isinstance(body.get("templateID"), str) or not body["templateID"]:
        raise ApiError(400, "templateID is required")
    timeout = body.get("timeout", 300)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
        raise ApiError(400, "timeout must be a whole number of seconds")
    for key in ("metadata", "envVars"):
        value = body.get(key) or {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ApiError(400, f"{key} must map strings to strings")
    sandbox = registry.create(body)
    return web.json_response(_created(sandbox), status=201)


def _metadata_filter(raw: str | None) -> dict[str, str]:
    """The SDK sends `urlencode({quote(k): quote(v)})`."""
    if not raw:
        return {}
    pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True)
    return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in pairs}


@routes.get("/v2/sandboxes")
async def list_sandboxes(request: web.Request) -> web.Response:
    registry = registry_of(request)
    wanted = _metadata_filter(request.query.get("metadata"))
    states = [s for s in request.query.get("state", "").split(",") if s] or ["running", "paused"]
    found = [
        sandbox
        for sandbox in sorted(registry.sandboxes.values(), key=lambda s: (s.started_at, s.id))
        if sandbox.state in states and all(sandbox.metadata.get(k) == v for k, v in wanted.items())
    ]
    try:
        limit = int(request.query.get("limit") or PAGE)
        start = int(request.query.get("nextToken") or 0)
    except ValueError:
        raise ApiError(400, "limit and nextToken must be whole numbers") from None
    page = found[start : start + limit]
    headers = {"x-next-token": str(start + limit)} if start + limit < len(found) else {}
    return web.json_response([sandbox.detail() for sandbox in page], headers=headers)


@routes.get("/sandboxes/{id}")
async def get(request: web.Request) -> web.Response:
    return web.json_response(registry_of(request).get(request.match_info["id"]).detail())


@routes.delete("/sandboxes/{id}")
async def kill(request: web.Request) -> web.Response:
    registry = registry_of(request)
    registry.end(registry.get(request.match_info["id"]), "kill")
    return web.Response(status=204)


def _seconds(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ApiError(400, f"{key} must be a whole number of seconds")
    return value


@routes.post("/sandboxes/{id}/timeout")
async def set_timeout(request: web.Request) -> web.Response:
    registry = registry_of(request)
    sandbox = registry.get(request.match_info["id"])
    seconds = _seconds(await json_body(request), "timeout")
    registry.stats["timeout_updates"] += 1
    if sandbox.lifetime_frozen or registry.faults.refuse_timeout_updates > 0:
        if not sandbox.lifetime_frozen:
            registry.faults.refuse_timeout_updates -= 1
        registry.stats["timeout_updates_refused_by_fault"] += 1
        raise ApiError(500, "emulated failure to update the sandbox timeout")
    sandbox.set_timeout(seconds)
    return web.Response(status=204)


@routes.post("/sandboxes/{id}/refreshes")
async def refresh(request: web.Request) -> web.Response:
    sandbox = registry_of(request).get(request.match_info["id"])
    seconds = _seconds(await json_body(request), "duration")
    if time.time() + seconds > sandbox.end_at:
        sandbox.set_timeout(seconds)
    return web.Response(status=204)


@routes.post("/v2/sandboxes/{id}/connect")
async def connect(request: web.Request) -> web.Response:
    sandbox = registry_of(request).get(request.match_info["id"])
    seconds = _seconds(await json_body(request), "timeout")
    if time.time() + seconds > sandbox.end_at:
        sandbox.set_timeout(seconds)
    return web.json_response(_created(sandbox), status=200)


@routes.put("/sandboxes/{id}/network")
async def network(request: web.Request) -> web.Response:
    sandbox = registry_of(request).get(request.match_info["id"])
    sandbox.request["network"] = await json_body(request)
    return web.Response(status=204)


async def release_held_creates(registry: Registry) -> None:
    """Let every held create answer (fault `hold_creates`)."""
    registry.release.set()
    await asyncio.sleep(0)
    registry.release.clear()
