"""Toolbox routes, `{toolboxProxyUrl}/{sandboxId}/...`: home/work dir, sessions, commands, logs, files."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSCloseCode, web

from . import files
from .commands import PREFIXES, STDERR, STDOUT, Command
from .envelope import SOURCE_DAEMON, EmulatorError
from .faults import cut_after_lines
from .sandboxes import EmulatedSandbox, Registry

routes = web.RouteTableDef()
PREFIX = "/toolbox/{sandbox_id}"


def _registry(request: web.Request) -> Registry:
    registry: Registry = request.app["registry"]
    return registry


def _sandbox(request: web.Request) -> EmulatedSandbox:
    return _registry(request).toolbox_sandbox(request.match_info["sandbox_id"])


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise EmulatorError(400, "invalid JSON body", code="INVALID_REQUEST_BODY", source=SOURCE_DAEMON)
    if not isinstance(body, dict):
        raise EmulatorError(400, "expected a JSON object", code="INVALID_REQUEST_BODY", source=SOURCE_DAEMON)
    return body


def _command(request: web.Request, sandbox: EmulatedSandbox) -> Command:
    session = sandbox.session(request.match_info["session_id"])
    command = session.commands.get(request.match_info["command_id"])
    if command is None:
        raise EmulatorError(404, "command not found", code="NOT_FOUND", source=SOURCE_DAEMON)
    return command


@routes.get(PREFIX + "/user-home-dir")
@routes.get(PREFIX + "/work-dir")
async def home_dir(request: web.Request) -> web.Response:
    return web.json_response({"dir": _sandbox(request).home})


@routes.get(PREFIX + "/version")
async def version(request: web.Request) -> web.Response:
    _sandbox(request)
    return web.json_response({"version": "emulator"})


# -- sessions ---------------------------------------------------------------------------------------


@routes.post(PREFIX + "/process/session")
async def create_session(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    body = await _json(request)
    sandbox.create_session(str(body.get("sessionId") or ""))
    sandbox.touch()
    return web.Response(status=201)


@routes.get(PREFIX + "/process/session")
async def list_sessions(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    return web.json_response([session.to_json() for session in sandbox.sessions.values()])


@routes.get(PREFIX + "/process/session/{session_id}")
async def get_session(request: web.Request) -> web.Response:
    return web.json_response(_sandbox(request).session(request.match_info["session_id"]).to_json())


@routes.delete(PREFIX + "/process/session/{session_id}")
async def delete_session(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    sandbox.delete_session(request.match_info["session_id"])
    sandbox.touch()
    return web.Response(status=204)


@routes.post(PREFIX + "/process/session/{session_id}/exec")
async def session_exec(request: web.Request) -> web.Response:
    sandbox = _sandbox(request)
    session = sandbox.session(request.match_info["session_id"])
    body = await _json(request)
    command_text = body.get("command")
    if not isinstance(command_text, str) or not command_text:
        raise EmulatorError(400, "command is required", code="BAD_REQUEST", source=SOURCE_DAEMON)
    command = await sandbox.run(session, command_text)
    sandbox.touch()
    if body.get("runAsync") or body.get("async"):
        return web.json_response({"cmdId": command.id}, status=202)
    await command.finished.wait()
    out, err, both = await _collect(command)
    return web.json_response(
        {"cmdId": command.id, "exitCode": command.exit_code, "output": both, "stdout": out, "stderr": err}
    )


@routes.get(PREFIX + "/process/session/{session_id}/command/{command_id}")
async def get_command(request: web.Request) -> web.Response:
    return web.json_response(_command(request, _sandbox(request)).to_json())


@routes.get(PREFIX + "/process/session/{session_id}/command/{command_id}/logs")
async def command_logs(request: web.Request) -> web.StreamResponse:
    command = _command(request, _sandbox(request))
    follow = request.query.get("follow", "").lower() == "true"
    socket = web.WebSocketResponse()
    if not socket.can_prepare(request).ok:
        if follow:
            raise EmulatorError(400, "follow=true needs a WebSocket upgrade", source=SOURCE_DAEMON)
        out, err, both = await _collect(command)
        return web.json_response({"output": both, "stdout": out, "stderr": err})
    await socket.prepare(request)
    registry = _registry(request)
    limit = registry.faults.drop_logs_after_lines  # fault: cut the stream after that many lines
    sent = 0
    try:
        if limit is not None and limit <= 0:
            return await _drop(socket, registry)
        async for stream, data in command.records(follow=follow):
            if limit is not None:
                data = cut_after_lines(data, limit - sent)
                sent += data.count(b"\n")
            await socket.send_bytes(PREFIXES[stream] + data)
            if limit is not None and sent >= limit:
                return await _drop(socket, registry)
        await socket.close(code=WSCloseCode.OK)
    except ConnectionError:  # the client went away
        pass
    return socket


async def _drop(socket: web.WebSocketResponse, registry: Registry) -> web.WebSocketResponse:
    """Fault `drop_logs_after_lines`: close the stream abnormally; the command runs on."""
    registry.stats["log_streams_dropped_by_fault"] += 1
    await socket.close(code=WSCloseCode.INTERNAL_ERROR, message=b"emulated log stream failure")
    return socket


async def _collect(command: Command) -> tuple[str, str, str]:
    parts: dict[int, list[bytes]] = {STDOUT: [], STDERR: []}
    both: list[bytes] = []
    async for stream, data in command.records(follow=False):
        parts[stream].append(data)
        both.append(data)
    text = [b"".join(parts[STDOUT]), b"".join(parts[STDERR]), b"".join(both)]
    out, err, merged = (chunk.decode("utf-8", "replace") for chunk in text)
    return out, err, merged


# -- one-shot execution -----------------------------------------------------------------------------


@routes.post(PREFIX + "/process/execute")
async def execute(request: web.Request) -> web.Response:
    """`{"command","cwd","envs","timeout"}` → `{"exitCode","result"}` (output of both streams merged)."""
    sandbox = _sandbox(request)
    body = await _json(request)
    session = sandbox.create_session(f"execute-{id(body)}-{len(sandbox.sessions)}")
    try:
        envs = {str(k): str(v) for k, v in (body.get("envs") or {}).items()}
        command = await sandbox.run(session, str(body.get("command") or ""), env=envs, cwd=body.get("cwd"))
        timeout = body.get("timeout") or 10 * 60
        try:
            await asyncio.wait_for(command.finished.wait(), timeout=float(timeout))
        except asyncio.TimeoutError:
            command.kill()
            raise EmulatorError(
                408, "command execution timeout", code="PROCESS_EXECUTION_TIMEOUT", source=SOURCE_DAEMON
            )
        _, _, merged = await _collect(command)
        return web.json_response({"exitCode": command.exit_code, "result": merged})
    finally:
        sandbox.sessions.pop(session.id, None)


# -- files --------------------------------------------------------------------------------------------


@routes.post(PREFIX + "/files/bulk-upload")
async def bulk_upload(request: web.Request) -> web.Response:
    return await files.bulk_upload(request, _sandbox(request))


@routes.post(PREFIX + "/files/bulk-download")
async def bulk_download(request: web.Request) -> web.StreamResponse:
    return await files.bulk_download(request, _sandbox(request))
