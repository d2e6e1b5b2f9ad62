"""Emulated sandboxes: records, their state machine, DTOs, and running commands in a clean environment.

A sandbox is a private host directory `<root>/<id>/` whose `home/` is the sandbox's home and working
directory (reported to the SDK as an absolute host path), whose `logs/` holds command logs and whose `python/`
is its own environment over the image (see `image`). Commands run as local processes with only PATH, HOME,
LANG, the sandbox's env and the command's own settings, on the network the create request asks for
(`emulated_network.SandboxNetwork`: `networkBlockAll`, `networkAllowList` and `domainAllowList` enforced).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from ..emulated_network import SandboxNetwork, allow_list
from .commands import Command, Session
from .envelope import SOURCE_DAEMON, SOURCE_PROXY, EmulatorError
from .faults import Faults, find_marker
from .image import Image, login_profile

#: How long after its marker line a `kill_on_marker` sandbox dies (time for the line to reach log followers).
MARKER_KILL_DELAY = 0.5

ORGANIZATION_ID = "emulator-organization"
DEFAULT_SIZES = {"cpu": 1, "memory": 1, "disk": 3, "gpu": 0}
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
TRASH_BATCH = 64  # deleted sandboxes' directories removed together


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def requested_network(body: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The egress the create request asks for: () for `networkBlockAll`, the entries of `networkAllowList`
    (CIDRs) and `domainAllowList` (names), or None (neither: Daytona's default, full egress)."""
    if body.get("networkBlockAll"):
        return ()
    entries: list[str] = []
    for key in ("networkAllowList", "domainAllowList"):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise EmulatorError(400, f"{key} must be a comma-separated string", code="BAD_REQUEST")
        entries += [entry.strip() for entry in (value or "").split(",") if entry.strip()]
    try:
        return allow_list(entries) or None
    except ValueError as error:
        raise EmulatorError(400, str(error), code="BAD_REQUEST") from None


class EmulatedSandbox:
    def __init__(self, registry: Registry, body: Mapping[str, Any], *, pending_reads: int, final_state: str):
        allow = requested_network(body)
        self.registry = registry
        self.id = str(uuid.uuid4())
        self.name = str(body.get("name") or self.id)
        self.labels = {str(k): str(v) for k, v in (body.get("labels") or {}).items()}
        self.env = {str(k): str(v) for k, v in (body.get("env") or {}).items()}
        self.snapshot = body.get("snapshot")
        build = body.get("buildInfo") or None
        self.sizes = {key: int(body.get(key) or default) for key, default in DEFAULT_SIZES.items()}
        self.network_block_all = bool(body.get("networkBlockAll") or False)
        self.request = dict(body)
        self.created_at = time.time()
        self.updated_at = self.created_at
        #: State reads still answered with `pending_state` (fault `create_polls`).
        self.pending_reads = pending_reads
        self.pending_state = "pending_build" if build else "creating"
        self.final_state = final_state
        self.error_reason = (
            None if final_state == "started" else f"emulated {final_state} (fault injection: broken_creates)"
        )
        self.build_info = (
            None
            if not build
            else {
                "dockerfileContent": build.get("dockerfileContent"),
                "contextHashes": build.get("contextHashes") or [],
                "createdAt": _iso(self.created_at),
                "updatedAt": _iso(self.created_at),
                "snapshotRef": f"emulator-build-{self.id[:8]}",
            }
        )
        self.destroyed = False
        self.root = os.path.join(registry.root, self.id)
        self.home = os.path.join(self.root, "home")
        self.log_dir = os.path.join(self.root, "logs")
        os.makedirs(self.home, mode=0o700)
        os.makedirs(self.log_dir, mode=0o700)
        self.bin_dir: str | None = None
        if registry.image is not None:
            self.bin_dir = registry.image.install(os.path.join(self.root, "python"))
            login_profile(self.home, self.bin_dir)
        self.sessions: dict[str, Session] = {}
        self._timers: list[asyncio.TimerHandle] = []
        #: The last bytes of each (command, stream), so a kill marker split across two reads is found.
        self._tails: dict[tuple[str, int], bytes] = {}
        self.network = SandboxNetwork(allow)  # last: closed by `Registry.delete_now`

    # -- state ----------------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.destroyed:
            return "destroyed"
        return self.pending_state if self.pending_reads > 0 else self.final_state

    def polled(self) -> None:
        """One read of the state by a client (`GET /api/sandbox/{id}`): a pending create gets one closer."""
        if self.pending_reads > 0:
            self.pending_reads -= 1

    def require_started(self) -> None:
        state = self.state
        if state != "started":
            raise EmulatorError(
                409,
                f"Sandbox {self.id} is not started (state: {state})",
                code="CONFLICT",
                source=SOURCE_PROXY,
            )

    def dto(self) -> dict[str, Any]:
        state = self.state
        return {
            **self.list_item(),
            "env": self.env,
            "kvm": False,
            "volumes": [],
            "buildInfo": self.build_info,
            "state": state,
        }

    def list_item(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "organizationId": ORGANIZATION_ID,
            "name": self.name,
            "snapshot": self.snapshot,
            "user": "daytona",
            "labels": self.labels,
            "public": bool(self.request.get("public") or False),
            "networkBlockAll": self.network_block_all,
            "networkAllowList": self.request.get("networkAllowList"),
            "domainAllowList": self.request.get("domainAllowList"),
            "target": str(self.request.get("target") or "emulator"),
            "cpu": self.sizes["cpu"],
            "gpu": self.sizes["gpu"],
            "memory": self.sizes["memory"],
            "disk": self.sizes["disk"],
            "state": self.state,
            "desiredState": "destroyed" if self.destroyed else "started",
            "errorReason": self.error_reason if self.state in ("error", "build_failed") else None,
            "recoverable": False,
            "autoStopInterval": self.request.get("autoStopInterval", 15),
            "autoArchiveInterval": self.request.get("autoArchiveInterval", 10080),
            "autoDeleteInterval": self.request.get("autoDeleteInterval", -1),
            "createdAt": _iso(self.created_at),
            "updatedAt": _iso(self.updated_at),
            "lastActivityAt": _iso(self.updated_at),
            "daemonVersion": "emulator",
            "toolboxProxyUrl": self.registry.toolbox_url,
        }

    def touch(self) -> None:
        self.updated_at = time.time()

    def admin_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "labels": self.labels,
            "home": self.home,
            "running_commands": sum(len(session.running) for session in self.sessions.values()),
            # What was asked for, as the API recorded it (for tests of a client's mapping).
            "snapshot": self.snapshot,
            "dockerfile": (self.build_info or {}).get("dockerfileContent"),
            **self.sizes,
            "network_block_all": self.network_block_all,
            "network_allow_list": self.request.get("networkAllowList"),
            "domain_allow_list": self.request.get("domainAllowList"),
            "egress": self.network.to_json(),
            "env": self.env,
            "auto_stop_interval": self.request.get("autoStopInterval"),
            "auto_delete_interval": self.request.get("autoDeleteInterval"),
            "ttl_minutes": self.request.get("ttlMinutes"),
            "last_activity": self.updated_at,
        }

    # -- sessions and commands ------------------------------------------------------------------------

    def session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise EmulatorError(
                404, f"session {session_id} not found", code="NOT_FOUND", source=SOURCE_DAEMON
            )
        return session

    def create_session(self, session_id: str) -> Session:
        if not session_id:
            raise EmulatorError(400, "sessionId is required", code="BAD_REQUEST", source=SOURCE_DAEMON)
        if session_id in self.sessions:
            raise EmulatorError(
                409, f"session {session_id} already exists", code="CONFLICT", source=SOURCE_DAEMON
            )
        log_dir = os.path.join(self.log_dir, uuid.uuid4().hex)
        os.mkdir(log_dir, 0o700)
        session = self.sessions[session_id] = Session(session_id, log_dir)
        return session

    def delete_session(self, session_id: str) -> None:
        self.session(session_id).kill()
        del self.sessions[session_id]

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The clean environment of a command: nothing from the emulator's own environment."""
        path = f"{self.bin_dir}:{SYSTEM_PATH}" if self.bin_dir else SYSTEM_PATH
        return {"PATH": path, "HOME": self.home, "LANG": "C.UTF-8", **self.env, **(extra or {})}

    async def run(
        self, session: Session, command: str, *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> Command:
        entry = session.new_command(command)
        workdir = self.resolve(cwd) if cwd else self.home
        entry.on_output = self._watch_output
        argv = self.network.wrap(["/bin/sh", "-c", command])
        await entry.start(argv, {**self.environment(env), **self.network.env()}, workdir)
        return entry

    def _watch_output(self, command: Command, stream: int, data: bytes) -> None:
        """Fault `kill_on_marker`: the sandbox dies as soon as one of its commands prints the marker."""
        faults = self.registry.faults
        if faults.kill_on_marker <= 0 or not faults.kill_marker or self.destroyed:
            return
        key = (command.id, stream)
        found, self._tails[key] = find_marker(self._tails.get(key, b""), data, faults.kill_marker.encode())
        if found:
            faults.kill_on_marker -= 1
            # The line holding the marker reaches the command's followers first (as output printed before
            # a host failure does), then the sandbox dies.
            asyncio.get_running_loop().call_later(MARKER_KILL_DELAY, self.registry.kill_now, self)

    def later(self, delay: float, callback: Any, *args: Any) -> None:
        """Run the coroutine function `callback(*args)` in `delay` seconds (unless the sandbox ends first)."""

        def fire() -> None:
            task = asyncio.ensure_future(callback(*args))
            self.registry.cleanups.add(task)
            task.add_done_callback(self.registry.cleanups.discard)

        self._timers.append(asyncio.get_running_loop().call_later(delay, fire))

    # -- files ----------------------------------------------------------------------------------------

    def resolve(self, path: str) -> str:
        """The host path of a sandbox path: relative to home, absolute inside home or inside one of the
        registry's `host_paths`. Anything else is refused."""
        if "\0" in path or not path:
            raise EmulatorError(400, f"invalid path {path!r}", code="INVALID_FILE_PATH", source=SOURCE_DAEMON)
        target = os.path.normpath(path if os.path.isabs(path) else os.path.join(self.home, path))
        home = os.path.realpath(self.home)
        # Resolve symlinks of the existing part, so a link made inside cannot lead outside.
        resolved = os.path.realpath(target)
        allowed = [home, *self.registry.host_paths]
        if not any(resolved == root or resolved.startswith(root + os.sep) for root in allowed):
            raise EmulatorError(
                403,
                f"path {path!r} is outside the sandbox's home {self.home!r}",
                code="FILE_ACCESS_DENIED",
                source=SOURCE_DAEMON,
            )
        return resolved

    # -- end ------------------------------------------------------------------------------------------

    def kill_everything(self) -> list[Command]:
        running: list[Command] = []
        for session in self.sessions.values():
            running += session.running
            session.kill()
        for timer in self._timers:
            timer.cancel()
        return running


class Registry:
    """All live sandboxes of one emulator."""

    def __init__(
        self,
        root: str,
        toolbox_url: str,
        faults: Faults,
        image: Image | None,
        host_paths: Sequence[str] = (),
    ):
        self.root = root
        self.trash = os.path.join(root, ".trash")
        self.host_paths = [os.path.realpath(path) for path in host_paths]
        self.toolbox_url = toolbox_url
        self.faults = faults
        self.image = image
        self.sandboxes: dict[str, EmulatedSandbox] = {}
        self.names: dict[str, str] = {}
        self.cleanups: set[asyncio.Future[None]] = set()
        self.stats = {
            "create_requests": 0,
            "creates_failed_by_fault": 0,
            "sandboxes_created": 0,
            "sandboxes_broken_by_fault": 0,
            "sandboxes_deleted": 0,
            "sandboxes_killed_by_fault": 0,
            "log_streams_dropped_by_fault": 0,
        }

    def get(self, id_or_name: str) -> EmulatedSandbox:
        sandbox = self.sandboxes.get(id_or_name) or self.sandboxes.get(self.names.get(id_or_name, ""))
        if sandbox is None:
            raise EmulatorError(404, f"Sandbox with ID or name {id_or_name} not found", code="NOT_FOUND")
        return sandbox

    def toolbox_sandbox(self, sandbox_id: str) -> EmulatedSandbox:
        """The sandbox a toolbox request is for (the proxy answers for missing ones)."""
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise EmulatorError(404, f"Sandbox {sandbox_id} not found", code="NOT_FOUND", source=SOURCE_PROXY)
        sandbox.require_started()
        return sandbox

    def create(self, body: Mapping[str, Any]) -> EmulatedSandbox:
        name = body.get("name")
        if name and name in self.names:
            raise EmulatorError(409, f"Sandbox with name {name} already exists", code="CONFLICT")
        faults = self.faults
        final_state = "started"
        if faults.broken_creates > 0:
            faults.broken_creates -= 1
            final_state = faults.broken_state
            self.stats["sandboxes_broken_by_fault"] += 1
        sandbox = EmulatedSandbox(self, body, pending_reads=faults.create_polls, final_state=final_state)
        self.sandboxes[sandbox.id] = sandbox
        self.names[sandbox.name] = sandbox.id
        self.stats["sandboxes_created"] += 1
        ttl = body.get("ttlMinutes")
        if isinstance(ttl, int) and ttl > 0:
            sandbox.later(ttl * 60.0, self.delete, sandbox)
        return sandbox

    async def delete(self, sandbox: EmulatedSandbox) -> None:
        """Remove at once (404 from now on), kill its processes, then its directory once they have ended."""
        self.delete_now(sandbox)

    def delete_now(self, sandbox: EmulatedSandbox) -> None:
        """`delete` for callers outside a coroutine (the directory is still removed in the background)."""
        if sandbox.destroyed:
            return
        sandbox.destroyed = True
        self.sandboxes.pop(sandbox.id, None)
        if self.names.get(sandbox.name) == sandbox.id:
            del self.names[sandbox.name]
        self.stats["sandboxes_deleted"] += 1
        running = sandbox.kill_everything()
        sandbox.network.close()
        task = asyncio.ensure_future(self._remove(sandbox, running))
        self.cleanups.add(task)
        task.add_done_callback(self.cleanups.discard)

    async def _remove(self, sandbox: EmulatedSandbox, running: list[Command]) -> None:
        """Once its killed commands have ended (their followers have everything), move the directory to the
        trash; the trash is emptied in batches, so deleting thousands of files does not slow down the
        sandboxes still working on this machine after every delete (a real sandbox's disk is elsewhere)."""
        if running:
            await asyncio.wait([asyncio.ensure_future(c.finished.wait()) for c in running], timeout=10)
        os.makedirs(self.trash, exist_ok=True)
        os.rename(sandbox.root, os.path.join(self.trash, sandbox.id))
        if len(os.listdir(self.trash)) >= TRASH_BATCH:
            await self.empty_trash()

    async def empty_trash(self) -> None:
        batch = os.path.join(self.root, f".trash-{uuid.uuid4().hex}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.trash, batch)
            await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, batch, True)

    async def kill(self, sandbox: EmulatedSandbox) -> None:
        """A sandbox that dies under its commands (the admin API)."""
        self.kill_now(sandbox)

    def kill_now(self, sandbox: EmulatedSandbox) -> None:
        """A sandbox that dies under its commands (fault `kill_on_marker`, the admin API): every process is
        SIGKILLed (exit code 137) and the sandbox is gone, as when its host fails."""
        if not sandbox.destroyed:
            self.stats["sandboxes_killed_by_fault"] += 1
            self.delete_now(sandbox)

    async def delete_all(self) -> None:
        for sandbox in list(self.sandboxes.values()):
            await self.delete(sandbox)
        if self.cleanups:
            await asyncio.wait(list(self.cleanups), timeout=15)
