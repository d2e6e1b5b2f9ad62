"""The emulator's aiohttp server: boxlite's REST routes under `/v1[/<prefix>]`, Bearer auth, the error
envelope, the attach WebSocket, and the admin routes under `/_emulator/`."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from ..daytona_emulator.image import Image
from ..emulator_server import start_site, until_stopped
from .boxes import ApiError, Box, Execution, Registry, bad_request, not_found
from .faults import Faults

log = logging.getLogger("metaflow_sandbox_testing.boxlite_emulator")

#: `/v1/{prefix}/boxes[/{box_id}[/rest]]`; the prefix may hold `/`.
BOX_PATH = re.compile(r"^/v1(?:/(?P<prefix>.+?))?/boxes(?:/(?P<box>[^/]+)(?:/(?P<rest>.+))?)?/?$")
#: CreateBoxRequest's properties (`additionalProperties: false`: anything else is a 400).
CREATE_FIELDS = frozenset(
    [
        "advanced",
        "name",
        "image",
        "rootfs_path",
        "cpus",
        "memory_mib",
        "disk_size_gb",
        "working_dir",
        "env",
        "entrypoint",
        "cmd",
        "user",
        "volumes",
        "network",
        "secrets",
        "detach",
        "tty",
        "auto_stop",
        "auto_delete",
        "auto_resume",
    ]
)
#: The server pings the attached client this often (the SDK gives up without a frame for 10 s).
PING_SECONDS = 5.0


def error_response(error: ApiError) -> web.Response:
    body = {"error": {"message": error.message, "type": error.kind, "code": error.code}}
    return web.json_response(body, status=error.status, headers=error.headers)


class Api:
    def __init__(self, registry: Registry, api_key: str | None, prefix: str | None):
        self.registry = registry
        self.api_key = api_key
        self.prefix = prefix or None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()  # always read whole: keep-alive stays usable
        try:
            if request.path.startswith("/_emulator/"):
                return await self.admin(request, body)
            if request.path == "/v1/config" and request.method == "GET":
                return web.json_response(CONFIG)
            if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                raise ApiError(401, "invalid or missing API key", "AuthError", "unauthenticated")
            if request.path == "/v1/me" and request.method == "GET":
                return web.json_response(
                    {
                        "sub": "emulator",
                        "principal_type": "service_account",
                        "path_prefix": self.prefix,
                        "scopes": ["box:read", "box:write"],
                    }
                )
            match = BOX_PATH.match(request.path)
            if match is None or (match["prefix"] or None) != self.prefix:
                raise not_found(f"route {request.method} {request.path}")
            return await self.route(request, body, match["box"], match["rest"])
        except ApiError as error:
            return error_response(error)

    async def route(
        self, request: web.Request, body: bytes, box_id: str | None, rest: str | None
    ) -> web.StreamResponse:
        method, registry = request.method, self.registry
        if box_id is None:
            if method == "POST":
                return self.create(request, body)
            if method == "GET":
                return web.json_response({"boxes": [box.to_json() for box in registry.boxes.values()]})
            raise ApiError(405, f"{method} not allowed", "InvalidArgumentError", "invalid_argument")
        box = registry.find(box_id)
        if rest is None:
            if method == "GET":
                return web.json_response(box.to_json())
            if method == "HEAD":
                return web.Response(status=204)
            if method == "DELETE":
                if (
                    box.status == "running"
                    and request.query.get("force") != "true"
                    and any(e.running for e in box.executions.values())
                ):
                    raise ApiError(
                        409,
                        "invalid state: box is running (use force=true)",
                        "InvalidStateError",
                        "invalid_state",
                    )
                registry.remove(box)
                return web.Response(status=204)
        elif rest in ("start", "stop") and method == "POST":
            if rest == "stop":
                box.kill_all()
            box.set_status("running" if rest == "start" else "stopped")
            return web.json_response(box.to_json())
        elif rest == "exec" and method == "POST":
            execution = await box.execute(_json(body))
            registry.stats["executions"] += 1
            return web.json_response({"execution_id": execution.id}, status=201)
        elif rest == "files" and method in ("PUT", "GET"):
            return self.files(request, body, box)
        elif rest.startswith("executions/"):
            return await self.execution(request, body, box, rest.split("/")[1:])
        raise not_found(f"route {method} {request.path}")

    def create(self, request: web.Request, body: bytes) -> web.Response:
        registry, faults = self.registry, self.registry.faults
        registry.stats["create_requests"] += 1
        if faults.fail_creates > 0:
            faults.fail_creates -= 1
            registry.stats["creates_failed_by_fault"] += 1
            headers = {"Retry-After": f"{faults.retry_after:g}"} if faults.retry_after is not None else {}
            raise ApiError(
                faults.fail_status,
                "emulated failure: no capacity to create a box",
                "ResourceExhaustedError" if faults.fail_status == 429 else "UpstreamUnavailableError",
                "resource_exhausted" if faults.fail_status == 429 else "upstream_unavailable",
                headers,
            )
        options = _json(body)
        unknown = sorted(set(options) - CREATE_FIELDS)
        if unknown:
            raise bad_request(f"unknown field(s) {unknown} in CreateBoxRequest")
        if options.get("image") and options.get("rootfs_path"):
            raise bad_request("image and rootfs_path are mutually exclusive")
        if any(v.get("read_only") for v in options.get("volumes") or []):
            raise bad_request("read-only managed volumes are not implemented")
        cpus = options.get("cpus")
        if cpus is not None and not (isinstance(cpus, int) and 1 <= cpus <= 32):
            raise bad_request("cpus must be between 1 and 32")
        memory = options.get("memory_mib")
        if memory is not None and not (isinstance(memory, int) and memory >= 128):
            raise bad_request("memory_mib must be at least 128")
        box = registry.create(options)
        return web.json_response(box.to_json(), status=201, headers={"Location": f"{request.path}/{box.id}"})

    def files(self, request: web.Request, body: bytes, box: Box) -> web.Response:
        faults = self.registry.faults
        if faults.fail_files > 0:
            faults.fail_files -= 1
            raise ApiError(
                503,
                "emulated failure: file transfer unavailable",
                "UpstreamUnavailableError",
                "upstream_unavailable",
            )
        path = request.query.get("path")
        if not path:
            raise bad_request("path is required")
        if request.method == "PUT":
            box.put_tar(path, body, single_file=request.query.get("source_is_dir") == "false")
            return web.Response(status=204)
        return web.Response(body=box.get_tar(path), content_type="application/x-tar")

    async def execution(
        self, request: web.Request, body: bytes, box: Box, parts: list[str]
    ) -> web.StreamResponse:
        execution = box.executions.get(parts[0]) if parts else None
        if execution is None:
            raise not_found(f"execution {parts[0] if parts else ''}")
        action = parts[1] if len(parts) > 1 else None
        if action is None and request.method == "GET":
            return web.json_response(execution.to_json())
        if action is None and request.method == "DELETE":
            execution.kill()
            execution.exit_code = -9  # what boxlite reports for a killed execution
            box.executions.pop(execution.id, None)
            return web.Response(status=204)
        if action == "signal" and request.method == "POST":
            signum = _json(body).get("signal")
            if isinstance(signum, int):
                execution.signal(signum)
            return web.Response(status=204)
        if action == "attach" and request.method == "GET":
            return await self.attach(request, execution)
        raise not_found(f"route {request.method} {request.path}")

    async def attach(self, request: web.Request, execution: Execution) -> web.StreamResponse:
        """Output frames until the exit frame; the execution goes on when the client leaves, and the next
        attach resumes where this one stopped."""
        if execution.attached:
            raise ApiError(
                409, "another client is attached to this execution", "InvalidStateError", "invalid_state"
            )
        execution.attached = True
        socket = web.WebSocketResponse(heartbeat=PING_SECONDS, max_msg_size=0)
        listener: asyncio.Future[None] | None = None
        try:
            await socket.prepare(request)
            await socket.ping()  # within 10 s of attaching, whatever the command does
            listener = asyncio.ensure_future(_listen(socket, execution))
            drop_after, frames = self.registry.faults.drop_attach_after_frames, 0
            while True:
                if drop_after is not None and frames >= drop_after:
                    await socket.close(code=WSCloseCode.INTERNAL_ERROR, message=b"emulated drop")
                    return socket
                if execution.pending:
                    item = execution.pending.pop(0)
                else:
                    getter = asyncio.ensure_future(execution.frames.get())
                    done, _ = await asyncio.wait({getter, listener}, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        return socket  # the client left
                    item = getter.result()
                try:
                    if isinstance(item, int):
                        await socket.send_str(json.dumps({"type": "exit", "exit_code": item}))
                        await socket.close(code=WSCloseCode.OK)
                        return socket
                    await socket.send_bytes(bytes([item[0]]) + item[1])
                except ConnectionError:
                    execution.pending.insert(0, item)  # for the next attach
                    return socket
                frames += 1
        finally:
            execution.attached = False
            if listener is not None:
                listener.cancel()

    async def admin(self, request: web.Request, body: bytes) -> web.Response:
        registry, path, method = self.registry, request.path[len("/_emulator/") :], request.method
        if path == "faults":
            if method == "DELETE":
                registry.faults.update({"reset": True})
            elif method == "POST":
                try:
                    registry.faults.update(_json(body))
                except ValueError as error:
                    raise bad_request(str(error)) from None
            return web.json_response(registry.faults.to_json())
        if path == "stats":
            return web.json_response(registry.stats)
        if path == "boxes" and method == "GET":
            return web.json_response(
                [
                    {
                        **box.to_json(),
                        "request": box.request,
                        "egress": box.network.to_json(),
                        "root": box.root,
                        "running_executions": sum(e.running for e in box.executions.values()),
                    }
                    for box in registry.boxes.values()
                ]
            )
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == "boxes" and parts[2] == "kill" and method == "POST":
            registry.remove(registry.find(parts[1]))
            return web.json_response({})
        raise not_found(f"admin route {method} {path}")


CONFIG = {
    "defaults": {"cpus": 2, "memory_mib": 512, "disk_size_gb": 10, "auto_delete": 0},
    "overrides": {},
    "capabilities": {
        "max_cpus": 32,
        "max_memory_mib": 65536,
        "max_disk_size_gb": 100,
        "tty_enabled": False,
        "streaming_enabled": True,
        "snapshots_enabled": False,
        "clone_enabled": False,
        "export_enabled": False,
        "linux_capabilities_enabled": False,
        "idempotency_key_lifetime": "PT24H",
    },
}


async def _listen(socket: web.WebSocketResponse, execution: Execution) -> None:
    """Client frames: `{"type": "signal", "sig": N}` signals the command; stdin is closed (ignored)."""
    async for message in socket:
        if message.type != WSMsgType.TEXT:
            continue
        try:
            control = json.loads(message.data)
        except ValueError:
            continue
        if control.get("type") == "signal" and isinstance(control.get("sig"), int):
            execution.signal(control["sig"])


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise bad_request("body is not JSON") from None
    if not isinstance(data, dict):
        raise bad_request("body must be a JSON object")
    return data


async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    prefix: str | None = None,
    python: str | None = None,
    faults: Mapping[str, Any] | None = None,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT); then kill every box's processes and remove them."""
    root = tempfile.mkdtemp(prefix="boxlite-emulator-")
    registry = Registry(root, Image.probe(python) if python else None, Faults().update(faults or {}))
    api = Api(registry, api_key, prefix)
    app = web.Application(client_max_size=1024**4)
    app.router.add_route("*", "/{tail:.*}", api.handle)
    runner, base = await start_site(app, host, port)
    try:
        await until_stopped(stop, base, on_ready)
    finally:
        registry.remove_all()
        await runner.cleanup()
        shutil.rmtree(root, ignore_errors=True)
