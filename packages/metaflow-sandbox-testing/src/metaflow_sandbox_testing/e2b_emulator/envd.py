"""envd, the daemon in every E2B sandbox: the Connect RPC `process.Process` service and the `/files` and
`/health` HTTP routes, for all sandboxes on one port (the SDK names the sandbox in `E2b-Sandbox-Id`, as it
does behind `E2B_SANDBOX_URL`).

Messages are the SDK's own generated protobuf classes (`e2b.envd.process.process_pb`) in the Connect JSON
codec the SDK uses. Connect framing: a request body of one envelope `flags(1) | length(4, BE) | JSON`; a
server stream answers `200 application/connect+json` with one envelope per event and a last envelope with
flag 0x02 holding `{}` or `{"error": {"code", "message"}}`; unary calls are plain `application/json`.

| route | |
| --- | --- |
| `POST /process.Process/Start` | stream: `start{pid}`, `data{stdout|stderr}` (everything from the start), `keepalive` every `Keepalive-Ping-Interval` s while idle, `end{exitCode, exited, status}` |
| `POST /process.Process/Connect` `{process:{pid}}` | the same for a running process, from now on; `not_found` once it has ended |
| `POST /process.Process/SendSignal` | SIGKILL / SIGTERM to the process's group |
| `POST /process.Process/List` | running processes |
| `POST /files?path=` | multipart part `file` or `application/octet-stream` body; parents made; `[{"name","type","path"}]` |
| `GET /files?path=` | the bytes; 404 `{"code","message"}` when missing |
| `GET /health` | 204 |

A sandbox that does not exist (killed, expired) is answered by the edge proxy: 502 `The sandbox <id> was not
found`. A wrong `X-Access-Token` is 401. An exit by signal N is reported as Go's envd does: `exitCode` -1,
`exited` false, `status` "signal: <name>".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
from typing import Any

from aiohttp import BodyPartReader, web
from e2b.envd.process import process_pb as pb
from protobuf import Oneof

from ..daytona_emulator.commands import STDOUT, Command
from ..fault_knobs import cut_after_lines
from .control import registry_of
from .sandboxes import ApiError, EmulatedSandbox

routes = web.RouteTableDef()
STREAM_TYPE = "application/connect+json"
END_STREAM = 0x02
#: Go's names of signals (syscall.Signal.String), as envd's `status` carries them.
SIGNAL_NAMES = {
    1: "hangup", 2: "interrupt", 3: "quit", 4: "illegal instruction", 5: "trace/breakpoint trap",
    6: "aborted", 7: "bus error", 8: "floating point exception", 9: "killed", 10: "user defined signal 1",
    11: "segmentation fault", 12: "user defined signal 2", 13: "broken pipe", 14: "alarm clock",
    15: "terminated",
}  # fmt: skip
Event = pb.ProcessEvent


class RpcError(Exception):
    """A Connect error: `{"code", "message"}` (HTTP status for unary calls, end-of-stream for streams)."""

    STATUS = {"not_found": 404, "invalid_argument": 400, "unauthenticated": 401, "unavailable": 503}

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    def response(self) -> web.Response:
        body = {"code": self.code, "message": self.message}
        return web.json_response(body, status=self.STATUS.get(self.code, 500))


class SandboxGone(Exception):
    """The sandbox named by `E2b-Sandbox-Id` does not exist: the edge proxy's 502."""

    def __init__(self, sandbox_id: str):
        super().__init__(sandbox_id)
        self.sandbox_id = sandbox_id

    def response(self) -> web.Response:
        message = f"The sandbox {self.sandbox_id} was not found"
        return web.json_response({"sandboxId": self.sandbox_id, "message": message, "code": 502}, status=502)


def sandbox_of(request: web.Request) -> EmulatedSandbox:
    sandbox_id = request.headers.get("E2b-Sandbox-Id", "")
    sandbox = registry_of(request).sandboxes.get(sandbox_id)
    if sandbox is None:
        raise SandboxGone(sandbox_id)
    if request.headers.get("X-Access-Token") != sandbox.access_token:
        raise ApiError(401, "invalid or missing X-Access-Token")
    return sandbox


# -- Connect framing ------------------------------------------------------------------------------------


async def read_envelope(request: web.Request) -> bytes:
    body = await request.read()
    if request.content_type.startswith(STREAM_TYPE):
        if len(body) < 5:
            raise RpcError("invalid_argument", "missing request envelope")
        _flags, length = struct.unpack(">BI", body[:5])
        return body[5 : 5 + length]
    return body


def envelope(message: Any, flags: int = 0) -> bytes:
    data = message if isinstance(message, bytes) else message.to_json().encode()
    return struct.pack(">BI", flags, len(data)) + data


def end_of_stream(error: RpcError | None = None) -> bytes:
    body = {} if error is None else {"error": {"code": error.code, "message": error.message}}
    return envelope(json.dumps(body).encode(), END_STREAM)


def event(kind: str, value: Any, response: type = pb.StartResponse) -> Any:
    return response(event=Event(event=Oneof(kind, value)))  # type: ignore[arg-type]


def end_event(command: Command) -> Any:
    returncode = command.process.returncode if command.process is not None else None
    if returncode is None:
        returncode = command.exit_code or 0
    # bwrap reports its child's death by signal N as exit 128 + N; envd (Go) says "signal: <name>", exit -1.
    signum = -returncode if returncode < 0 else (returncode - 128 if 128 < returncode <= 128 + 15 else 0)
    if signum:
        name = SIGNAL_NAMES.get(signum, f"signal {signum}")
        return Event.EndEvent(exit_code=-1, exited=False, status=f"signal: {name}")
    return Event.EndEvent(exit_code=returncode, exited=True, status=f"exit status {returncode}")


# -- process.Process ------------------------------------------------------------------------------------


@routes.post("/process.Process/Start")
async def start(request: web.Request) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    message = pb.StartRequest.from_json(await read_envelope(request), ignore_unknown_fields=True)
    config = message.process
    if config is None or not config.cmd:
        raise RpcError("invalid_argument", "process.cmd is required")
    cwd = config.cwd if config.has_field("cwd") else None
    command = await sandbox.start(config.cmd, list(config.args), dict(config.envs), cwd)
    return await _stream(request, sandbox, command, pb.StartResponse, offset=0)


@routes.post("/process.Process/Connect")
async def connect(request: web.Request) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    message = pb.ConnectRequest.from_json(await read_envelope(request), ignore_unknown_fields=True)
    command = _process(sandbox, message.process)
    return await _stream(request, sandbox, command, pb.ConnectResponse, offset=command.logged)


def _process(sandbox: EmulatedSandbox, selector: Any) -> Command:
    pid = selector.selector.value if selector is not None and selector.selector is not None else None
    command = sandbox.processes.get(pid) if isinstance(pid, int) else None
    if command is None or not command.running:
        raise RpcError("not_found", f"process with pid {pid} not found")
    return command


async def _stream(
    request: web.Request, sandbox: EmulatedSandbox, command: Command, kind: type, offset: int
) -> web.StreamResponse:
    registry = registry_of(request)
    response = web.StreamResponse(status=200, headers={"Content-Type": STREAM_TYPE})
    await response.prepare(request)
    lock = asyncio.Lock()

    async def send(data: bytes) -> None:
        async with lock:
            await response.write(data)

    async def keepalive(interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await send(envelope(event("keepalive", Event.KeepAlive(), kind)))

    interval = float(request.headers.get("Keepalive-Ping-Interval") or 0)
    pinger = asyncio.ensure_future(keepalive(interval)) if interval > 0 else None
    limit = registry.faults.drop_stream_after_lines if kind is pb.StartResponse else None
    sent = 0
    try:
        assert command.process is not None
        await send(envelope(event("start", Event.StartEvent(pid=command.process.pid), kind)))
        async for stream, data in command.records(follow=True, offset=offset):
            if limit is not None:
                data = cut_after_lines(data, limit - sent)
                sent += data.count(b"\n")
            if data:
                name = "stdout" if stream == STDOUT else "stderr"
                output = Event.DataEvent(output=Oneof(name, data))  # type: ignore[arg-type]
                await send(envelope(event("data", output, kind)))
            if limit is not None and sent >= limit:
                registry.stats["streams_dropped_by_fault"] += 1
                if request.transport is not None:
                    request.transport.close()  # mid-body: the client sees the connection drop
                return response
        if sandbox.state != "running":  # killed or expired: the proxy cuts the stream
            await send(end_of_stream(RpcError("unavailable", f"The sandbox {sandbox.id} was not found")))
        else:
            await send(envelope(event("end", end_event(command), kind)))
            await send(end_of_stream())
        await response.write_eof()
    except (ConnectionError, asyncio.CancelledError):  # the client went away: the process runs on
        pass
    finally:
        if pinger is not None:
            pinger.cancel()
    return response


@routes.post("/process.Process/SendSignal")
async def send_signal(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    message = pb.SendSignalRequest.from_json(await read_envelope(request), ignore_unknown_fields=True)
    command = _process(sandbox, message.process)
    signum = signal.SIGTERM if message.signal == pb.Signal.SIGTERM else signal.SIGKILL
    if command.process is not None and command.process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(command.process.pid, signum)
    return web.json_response({})


@routes.post("/process.Process/List")
async def list_processes(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    processes = [
        {"pid": pid, "config": {"cmd": command.command.split(" ", 1)[0], "args": [], "envs": {}}}
        for pid, command in sandbox.processes.items()
        if command.running
    ]
    return web.json_response({"processes": processes})


@routes.post("/{service:[a-z]+\\.[A-Za-z]+}/{method}")
async def unimplemented(request: web.Request) -> web.Response:
    await request.read()
    raise RpcError("unimplemented", f"{request.path} is not emulated")


# -- HTTP API -------------------------------------------------------------------------------------------


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    sandbox_of(request)
    return web.Response(status=204)


@routes.post("/files")
async def upload(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    written: list[dict[str, str]] = []
    if request.content_type == "application/octet-stream":
        path = request.query.get("path", "")
        await _write(sandbox, path, request.content)
        written.append(_entry(path))
    else:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name != "file":
                continue
            path = request.query.get("path") or part.filename or ""
            await _write(sandbox, path, part)
            written.append(_entry(path))
    if not written:
        raise ApiError(400, "no file in the request")
    return web.json_response(written)


def _entry(path: str) -> dict[str, str]:
    return {"name": os.path.basename(path), "type": "file", "path": path}


async def _write(sandbox: EmulatedSandbox, path: str, source: Any) -> None:
    target = sandbox.host_path(path)
    if os.path.isdir(target):
        raise ApiError(400, f"{path} is a directory")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as out:
        while True:
            chunk = await (source.read_chunk() if isinstance(source, BodyPartReader) else source.read(65536))
            if not chunk:
                break
            out.write(chunk)


@routes.get("/files")
async def download(request: web.Request) -> web.StreamResponse:
    sandbox = sandbox_of(request)
    path = request.query.get("path", "")
    target = sandbox.host_path(path)
    if not os.path.isfile(target):
        raise ApiError(404, f"path '{path}' does not exist")
    return web.FileResponse(target, headers={"Content-Type": "application/octet-stream"})
