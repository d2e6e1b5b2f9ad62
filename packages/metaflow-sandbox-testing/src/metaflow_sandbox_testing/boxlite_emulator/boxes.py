"""Boxes and their executions: each box is a private directory, each execution a local process group.

An execution's output goes through a bounded queue to the one attached WebSocket (a slow client slows the
pipe readers down, as a real pipe would); the execution keeps running when the socket closes, and a new
attach resumes where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
import sys
import tarfile
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..daytona_emulator.image import Image
from ..emulated_network import SandboxNetwork, allow_list

STDOUT, STDERR = 1, 2
#: Largest frame (one pipe read; one item of the SDK's output stream).
MAX_FRAME = 64 * 1024
QUEUE_FRAMES = 256
#: After a process exits, how long pipes held open by what it left behind are still read.
PIPE_GRACE = 2.0


class ApiError(Exception):
    """An error answered with boxlite's envelope `{"error": {"message", "type", "code"}}`."""

    def __init__(
        self, status: int, message: str, kind: str, code: str, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code
        self.headers = headers or {}


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found", "NotFoundError", "not_found")


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "InvalidArgumentError", "invalid_argument")


def now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _prctl() -> Callable[[int, int], int] | None:
    if sys.platform != "linux":
        return None
    import ctypes

    prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


#: Looked up here: between fork and exec the child only calls it.
_PRCTL = _prctl()


def _die_with_emulator() -> None:
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: a crashed emulator leaves no process behind


def _utf8_boundary(data: bytes) -> int:
    """How much of `data` ends on a character boundary (an incomplete trailing UTF-8 sequence is held back)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:  # a lead byte: complete when its sequence is
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)


class Execution:
    def __init__(self, box: Box, request: dict[str, Any]):
        self.id = f"exec-{uuid.uuid4().hex[:16]}"
        self.box = box
        self.request = request
        self.status = "running"
        self.exit_code: int | None = None
        self.started_at = now()
        self.attached = False
        #: A frame taken from the queue that the last attached client did not get.
        self.pending: list[tuple[int, bytes] | int] = []
        self.frames: asyncio.Queue[tuple[int, bytes] | int] = asyncio.Queue(QUEUE_FRAMES)
        self.process: asyncio.subprocess.Process | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "execution_id": self.id,
            "status": self.status,
            "exit_code": self.exit_code,
            "started_at": self.started_at,
        }

    async def start(self, env: dict[str, str], cwd: str) -> None:
        network = self.box.network
        command = self.request["command"]
        if network.isolated and shutil.which(command, path=env.get("PATH")) is None:
            raise FileNotFoundError(f"{command}: command not found")  # as when run unwrapped
        self.process = await asyncio.create_subprocess_exec(
            *network.wrap([command, *(self.request.get("args") or [])]),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env={**env, **network.env()},
            start_new_session=True,
            preexec_fn=_die_with_emulator,
        )
        self._supervisor = asyncio.ensure_future(self._supervise(self.request.get("timeout_seconds")))

    async def _supervise(self, timeout: float | None) -> None:
        process = self.process
        assert process is not None and process.stdout is not None and process.stderr is not None
        pumps = [
            asyncio.ensure_future(self._pump(process.stdout, STDOUT)),
            asyncio.ensure_future(self._pump(process.stderr, STDERR)),
        ]
        try:
            returncode = await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            self.kill("timed_out")
            returncode = await process.wait()
        _, pending = await asyncio.wait(pumps, timeout=PIPE_GRACE)
        for pump in pending:
            pump.cancel()
        if self.status == "running":
            self.status = "completed"
        if self.exit_code is None:
            self.exit_code = 128 - returncode if returncode < 0 else returncode
        await self.frames.put(self.exit_code)

    async def _pump(self, reader: asyncio.StreamReader, channel: int) -> None:
        """One frame per pipe read (as a guest agent forwards them), never ending inside a UTF-8 character:
        the SDK decodes each frame on its own."""
        pending = b""
        while True:
            chunk = await reader.read(MAX_FRAME)
            if not chunk:
                break
            pending += chunk
            cut = _utf8_boundary(pending)
            if cut:
                await self._emit(channel, pending[:cut])
                pending = pending[cut:]
        if pending:
            await self._emit(channel, pending)

    async def _emit(self, channel: int, data: bytes) -> None:
        await self.frames.put((channel, data))
        self.box.registry.saw_output(self.box, data)

    def kill(self, status: str = "killed") -> None:
        if self.process is not None and self.process.returncode is None:
            self.status = status
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.killpg(self.process.pid, signum)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


def requested_network(request: dict[str, Any]) -> tuple[str, ...] | None:
    """The egress the create request asks for: () for outbound `mode: disabled`, the `allow_net` entries, or
    None (no rules: boxlite's default, full egress)."""
    network = request.get("network") or {}
    if not isinstance(network, dict) or network.get("mode", "enabled") not in ("enabled", "disabled"):
        raise bad_request("network must be {'mode': 'enabled' | 'disabled', 'allow_net': [...]}")
    if network.get("mode") == "disabled":
        return ()
    allow = network.get("allow_net") or []
    if not isinstance(allow, list):
        raise bad_request("network.allow_net must be a list")
    try:
        return allow_list(allow) or None
    except ValueError as error:
        raise bad_request(f"network.allow_net: {error}") from None


class Box:
    def __init__(self, registry: Registry, request: dict[str, Any]):
        allow = requested_network(request)
        self.registry = registry
        self.id = uuid.uuid4().hex[:12]
        self.request = request
        self.name = request.get("name")
        self.status = "configured"
        self.created_at = self.updated_at = now()
        self.root = os.path.join(registry.root, self.id)
        self.home = os.path.join(self.root, "root")
        os.makedirs(self.home)
        self.bin_dir = registry.image.install(os.path.join(self.root, "image")) if registry.image else None
        self.executions: dict[str, Execution] = {}
        self.network = SandboxNetwork(allow)  # last: closed by `Registry.remove`

    def to_json(self) -> dict[str, Any]:
        request = self.request
        return {
            "box_id": self.id,
            "name": self.name,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "pid": None,
            "image": request.get("image") or "alpine:latest",
            "cpus": request.get("cpus") or 2,
            "memory_mib": request.get("memory_mib") or 512,
            "labels": {},
            "auto_stop": request.get("auto_stop", 900),
            "auto_delete": request.get("auto_delete", 0),
            "auto_resume": request.get("auto_resume", True),
        }

    def set_status(self, status: str) -> None:
        self.status, self.updated_at = status, now()

    async def execute(self, request: dict[str, Any]) -> Execution:
        if not isinstance(request.get("command"), str) or not request["command"]:
            raise bad_request("command is required")
        if self.status in ("configured", "stopped"):
            self.set_status("running")  # started lazily by the first exec
        path = ":".join(p for p in (self.bin_dir, "/usr/local/bin:/usr/bin:/bin") if p)
        env = {"PATH": path, "HOME": self.home, "LANG": "C.UTF-8"}
        env.update(self.request.get("env") or {})
        env.update(request.get("env") or {})
        cwd = request.get("working_dir") or self.request.get("working_dir") or self.home
        execution = Execution(self, request)
        try:
            await execution.start(env, self.resolve(cwd) if cwd != self.home else cwd)
        except OSError as error:
            raise ApiError(400, f"execution failed: {error}", "ExecutionError", "execution_failed") from None
        self.executions[execution.id] = execution
        return execution

    def kill_all(self) -> None:
        for execution in self.executions.values():
            execution.kill()

    # -- files ----------------------------------------------------------------------------------------

    def resolve(self, path: str) -> str:
        """A path of the box as a host path; 400 outside the box's own directory (as boxlite refuses paths
        at or under a mount, such as /tmp)."""
        real = os.path.realpath(path)
        if not os.path.isabs(path) or not (real + "/").startswith(self.root + "/"):
            raise bad_request(
                f"path {path!r} is not in the box's root filesystem (at or under a mount, or outside the box); "
                f"use a path under {self.home}"
            )
        return real

    def put_tar(self, path: str, data: bytes, single_file: bool) -> None:
        target = self.resolve(path)
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as archive:
                members = archive.getmembers()
                for member in members:
                    if member.name.startswith("/") or ".." in member.name.split("/"):
                        raise bad_request(f"tar entry {member.name!r} leaves the destination")
                files = [m for m in members if m.isfile()]
                if single_file and len(files) == 1 and len(members) == 1:  # a file, named by `path`
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    source = archive.extractfile(files[0])
                    assert source is not None
                    with open(target, "wb") as out:
                        shutil.copyfileobj(source, out)
                    return
                os.makedirs(target, exist_ok=True)
                archive.extractall(target, filter="data")
        except tarfile.TarError as error:
            raise bad_request(f"body is not a tar archive: {error}") from None

    def get_tar(self, path: str) -> bytes:
        source = self.resolve(path)
        if not os.path.exists(source):
            raise not_found(f"path {path}")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            archive.add(source, arcname=os.path.basename(source.rstrip("/")) or ".")
        return buffer.getvalue()


class Registry:
    """Every box of the emulator, the fault knobs and the counters."""

    def __init__(self, root: str, image: Image | None, faults: Any):
        self.root = root
        self.image = image
        self.faults = faults
        self.boxes: dict[str, Box] = {}
        self.stats = {
            "create_requests": 0,
            "boxes_created": 0,
            "boxes_removed": 0,
            "executions": 0,
            "creates_failed_by_fault": 0,
            "boxes_killed_by_fault": 0,
        }
        self.on_kill: Callable[[Box], None] | None = None

    def find(self, box_id: str) -> Box:
        box = self.boxes.get(box_id) or next((b for b in self.boxes.values() if b.name == box_id), None)
        if box is None:
            raise not_found(f"box {box_id}")
        return box

    def create(self, request: dict[str, Any]) -> Box:
        name = request.get("name")
        if name is not None and any(b.name == name for b in self.boxes.values()):
            raise ApiError(409, f"box name already exists: {name}", "AlreadyExistsError", "already_exists")
        box = Box(self, request)
        self.boxes[box.id] = box
        self.stats["boxes_created"] += 1
        return box

    def remove(self, box: Box) -> None:
        box.kill_all()
        box.network.close()
        self.boxes.pop(box.id, None)
        self.stats["boxes_removed"] += 1
        shutil.rmtree(box.root, ignore_errors=True)

    def saw_output(self, box: Box, data: bytes) -> None:
        faults = self.faults
        marked = faults.kill_on_marker and faults.kill_marker and faults.kill_marker.encode() in data
        if marked and box.id in self.boxes:
            faults.kill_on_marker -= 1
            self.stats["boxes_killed_by_fault"] += 1
            self.remove(box)

    def remove_all(self) -> None:
        for box in list(self.boxes.values()):
            self.remove(box)
