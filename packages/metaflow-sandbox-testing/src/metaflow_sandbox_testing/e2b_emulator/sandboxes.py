"""Emulated E2B sandboxes: records, lifetimes (`endAt`), and processes run as the sandbox's user would see them.

A sandbox is a private host directory `<root>/<id>/`: `home/` and `tmp/` are what its commands see as
`/home/user` and `/tmp` (each command runs under `bwrap`, which binds them there over an empty `/home` and the
host's `/tmp`; the image's directories under the host's `/tmp` are bound back read-only; the rest of the host
stays visible; with `allow_internet_access=False` or `denyOut` it also gets an empty network namespace, behind a
filtering proxy for `allowOut`: `emulated_network.SandboxNetwork`), `python/` is its own environment over the image
(`daytona_emulator.image`) and `logs/` holds command output. A command's environment is only what envd would give: PATH, HOME, USER,
LANG, the sandbox's `envVars` and the command's own `envs`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from ..daytona_emulator.commands import Command, Session
from ..daytona_emulator.image import Image, login_profile
from ..emulated_network import SandboxNetwork, allow_list
from ..fault_knobs import find_marker
from .faults import Faults

HOME = "/home/user"
USER = "user"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENVD_VERSION = "0.6.4"
#: What E2B reports for its default sandbox size (cpu/memory come from the template).
DEFAULT_SIZES = {"cpuCount": 2, "memoryMB": 512, "diskSizeMB": 10240}
DEFAULT_TIMEOUT = 300
#: After its marker line, how long a `kill_on_marker` sandbox lives on (so the line reaches the stream first).
MARKER_KILL_DELAY = 0.5


class ApiError(Exception):
    """An error answered as E2B's `{"code": <status>, "message"}` (control plane) or envd's JSON."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


def iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


#: What `denyOut` holds to deny everything not in `allowOut` (as `allow_internet_access=False` does).
ALL_TRAFFIC = "0.0.0.0/0"


def requested_network(body: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The egress the create request asks for: `allowOut` when everything else is denied (`denyOut` holds
    0.0.0.0/0, or `allow_internet_access` is false), or None (E2B's default, full egress). A `denyOut` of
    some addresses only is refused (400): this emulator does not model it."""
    network = body.get("network") or {}
    if not isinstance(network, dict):
        raise ApiError(400, "network must be an object")
    deny, allow = network.get("denyOut") or [], network.get("allowOut") or []
    if not isinstance(deny, list) or not isinstance(allow, list):
        raise ApiError(400, "network.denyOut and network.allowOut must be lists")
    if body.get("allow_internet_access") is False or ALL_TRAFFIC in deny:
        try:
            return allow_list(allow)
        except ValueError as error:
            raise ApiError(400, f"network.allowOut: {error}") from None
    if deny:
        raise ApiError(400, f"the emulator models denyOut [{ALL_TRAFFIC!r}] only, not {deny}")
    return None


class EmulatedSandbox:
    def __init__(self, registry: Registry, body: Mapping[str, Any]):
        allow = requested_network(body)
        self.registry = registry
        self.id = secrets.token_hex(10)
        self.client_id = "emulator"
        self.template_id = str(body.get("templateID") or "base")
        self.metadata = {str(k): str(v) for k, v in (body.get("metadata") or {}).items()}
        self.env_vars = {str(k): str(v) for k, v in (body.get("envVars") or {}).items()}
        self.request = dict(body)
        self.access_token = secrets.token_hex(16)
        self.started_at = time.time()
        self.end_at = self.started_at
        self.state = "running"
        self.ended_by: str | None = None
        self.root = os.path.join(registry.root, self.id)
        self.home = os.path.join(self.root, "home")
        os.makedirs(self.home, mode=0o700)
        self.tmp = os.path.join(self.root, "tmp")
        os.makedirs(self.tmp, mode=0o700)
        self.bin_dir: str | None = None
        if registry.image is not None:
            self.bin_dir = registry.image.install(os.path.join(self.root, "python"))
            login_profile(self.home, self.bin_dir)
        log_dir = os.path.join(self.root, "logs")
        os.makedirs(log_dir, mode=0o700)
        self.session = Session(self.id, log_dir)
        self.processes: dict[int, Command] = {}
        self._tails: dict[tuple[str, int], bytes] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self.lifetime_frozen = False  # fault `freeze_lifetime_marker`: timeout updates are refused
        self.set_timeout(int(body.get("timeout") or DEFAULT_TIMEOUT))
        self.network = SandboxNetwork(allow)  # last: closed by `stop`

    # -- lifetime -------------------------------------------------------------------------------------

    def set_timeout(self, seconds: float) -> None:
        """The sandbox ends `seconds` from now (E2B's `timeout` counts from the request)."""
        self.end_at = time.time() + seconds
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = asyncio.get_running_loop().call_later(seconds, self.registry.end, self, "timeout")

    def detail(self) -> dict[str, Any]:
        """`GET /sandboxes/{id}` (SandboxDetail) and the items of `GET /v2/sandboxes` (ListedSandbox)."""
        network = self.request.get("network")
        return {
            "templateID": self.template_id,
            "alias": self.template_id,
            "sandboxID": self.id,
            "clientID": self.client_id,
            "startedAt": iso(self.started_at),
            "endAt": iso(self.end_at),
            "envdVersion": ENVD_VERSION,
            "envdAccessToken": self.access_token,
            **DEFAULT_SIZES,
            "state": self.state,
            "metadata": self.metadata,
            "allowInternetAccess": self.request.get("allow_internet_access"),
            **({"network": network} if isinstance(network, dict) else {}),
        }

    def admin_json(self) -> dict[str, Any]:
        return {
            **self.detail(),
            "home": self.home,
            "env_vars": self.env_vars,
            "request": self.request,
            "egress": self.network.to_json(),
            "running_commands": len(self.session.running),
        }

    # -- processes ------------------------------------------------------------------------------------

    def environment(self, envs: Mapping[str, str]) -> dict[str, str]:
        base = {"PATH": SYSTEM_PATH, "HOME": HOME, "USER": USER, "LANG": "C.UTF-8"}
        return {**base, **self.env_vars, **envs, **self.network.env()}

    def host_path(self, path: str) -> str:
        """Where a sandbox path lives on the host: `/home/user/...` (or a relative path) in the sandbox's home,
        `/tmp/...` in its private tmp. Elsewhere the sandbox's user may not write (403)."""
        if not path or "\0" in path:
            raise ApiError(400, f"invalid path {path!r}")
        full = os.path.normpath(path if path.startswith("/") else os.path.join(HOME, path))
        for inside, host in ((HOME, self.home), ("/tmp", self.tmp)):
            if full == inside or full.startswith(inside + "/"):
                resolved = os.path.realpath(host + full[len(inside) :])
                top = os.path.realpath(host)
                if resolved != top and not resolved.startswith(top + os.sep):
                    raise ApiError(403, f"permission denied: {path} leads outside {inside}")
                return resolved
        raise ApiError(403, f"permission denied: {path} is outside {HOME} and /tmp")

    def _bwrap(self) -> list[str]:
        """The sandbox's view: its own /home/user and /tmp; the image's directories under /tmp bound back; the
        network its policy asks for (`SandboxNetwork`)."""
        argv = ["bwrap", *self.network.namespaces(), "--dev-bind", "/", "/", "--tmpfs", "/home"]
        argv += ["--bind", self.home, HOME]
        argv += ["--bind", self.tmp, "/tmp"]
        image = self.registry.image
        keep: list[str] = []
        if image is not None:  # the sandbox's environment over the image, and the image's own directories
            keep += [os.path.join(self.root, "python"), os.path.dirname(image.executable), *image.site_dirs]
        for path in sorted({os.path.realpath(p) for p in keep}):
            if path == "/tmp" or path.startswith("/tmp/"):
                argv += ["--ro-bind", path, path]
        return argv + self.network.binds()

    async def start(self, cmd: str, args: list[str], envs: Mapping[str, str], cwd: str | None) -> Command:
        workdir = cwd or HOME
        if not os.path.isdir(self.host_path(workdir)):
            raise ApiError(400, f"cwd {workdir!r}: no such directory")
        command = self.session.new_command(" ".join([cmd, *args]))
        command.on_output = self._watch_output
        argv = [*self._bwrap(), "--chdir", workdir, "--", *self.network.command([cmd, *args])]
        await command.start(argv, self.environment(envs), self.home)
        assert command.process is not None
        self.processes[command.process.pid] = command
        return command

    def _watch_output(self, command: Command, stream: int, data: bytes) -> None:
        """Faults `kill_on_marker` (the sandbox dies) and `freeze_lifetime_marker` (its lifetime can no longer
        be extended) fire when one of its commands prints their marker."""
        faults = self.registry.faults
        if self.state != "running":
            return
        if faults.freeze_lifetime_marker and not self.lifetime_frozen:
            key = (command.id, -stream)
            marker = faults.freeze_lifetime_marker.encode()
            self.lifetime_frozen, self._tails[key] = find_marker(self._tails.get(key, b""), data, marker)
        if faults.kill_on_marker <= 0 or not faults.kill_marker:
            return
        key = (command.id, stream)
        found, self._tails[key] = find_marker(self._tails.get(key, b""), data, faults.kill_marker.encode())
        if found:
            faults.kill_on_marker -= 1
            asyncio.get_running_loop().call_later(
                MARKER_KILL_DELAY, self.registry.end, self, "killed by fault"
            )

    def stop(self) -> None:
        self.state = "killed"
        if self._expiry is not None:
            self._expiry.cancel()
        self.session.kill()
        self.network.close()


class Registry:
    """All live sandboxes of one emulator; a sandbox that ended is gone (404), as on E2B."""

    def __init__(self, root: str, faults: Faults, image: Image | None):
        self.root = root
        self.faults = faults
        self.image = image
        self.sandboxes: dict[str, EmulatedSandbox] = {}
        self.release = asyncio.Event()  # wakes held creates (fault `hold_creates`)
        self.cleanups: set[asyncio.Future[None]] = set()
        self.stats = {
            "create_requests": 0,
            "creates_failed_by_fault": 0,
            "creates_held_by_fault": 0,
            "sandboxes_created": 0,
            "sandboxes_killed": 0,
            "sandboxes_expired": 0,
            "sandboxes_killed_by_fault": 0,
            "streams_dropped_by_fault": 0,
            "timeout_updates": 0,
            "timeout_updates_refused_by_fault": 0,
        }

    def get(self, sandbox_id: str) -> EmulatedSandbox:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise ApiError(404, f"sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it")
        return sandbox

    def create(self, body: Mapping[str, Any]) -> EmulatedSandbox:
        sandbox = EmulatedSandbox(self, body)
        self.sandboxes[sandbox.id] = sandbox
        self.stats["sandboxes_created"] += 1
        return sandbox

    def end(self, sandbox: EmulatedSandbox, why: str) -> None:
        """Kill and forget a sandbox: `kill` (DELETE), `timeout` (its endAt passed) or a fault."""
        if self.sandboxes.pop(sandbox.id, None) is None:
            return
        sandbox.ended_by = why
        key = {"kill": "sandboxes_killed", "timeout": "sandboxes_expired"}.get(
            why, "sandboxes_killed_by_fault"
        )
        self.stats[key] += 1
        running = sandbox.session.running
        sandbox.stop()
        task = asyncio.ensure_future(self._remove(sandbox, running))
        self.cleanups.add(task)
        task.add_done_callback(self.cleanups.discard)

    async def _remove(self, sandbox: EmulatedSandbox, running: list[Command]) -> None:
        if running:
            await asyncio.wait([asyncio.ensure_future(c.finished.wait()) for c in running], timeout=10)
        await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, sandbox.root, True)

    async def end_all(self) -> None:
        for sandbox in list(self.sandboxes.values()):
            self.end(sandbox, "kill")
        if self.cleanups:
            await asyncio.wait(list(self.cleanups), timeout=15)
