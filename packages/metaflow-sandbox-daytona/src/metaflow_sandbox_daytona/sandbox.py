"""`DaytonaSandbox`: one Daytona sandbox; commands run in sessions and stream through the log WebSocket."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from metaflow_sandbox_core import (
    KILLED,
    Sandbox,
    SandboxError,
    SandboxSpec,
    call_with_retries_async,
)
from metaflow_sandbox_core.aio import AsyncCommand, Emit, call, spawn

from .command import shell_command
from .connection import DaytonaConnection
from .errors import is_daytona_error, is_not_found, translate
from .plan import DEFAULT_AUTO_STOP_MINUTES
from .sdk import sdk

log = logging.getLogger(__name__)

#: Polling the command's status once its log stream has ended (or broken).
POLL_START, POLL_MAX = 0.05, 1.0
#: States of a sandbox that is no more (deleted, or died).
GONE_STATES = ("destroyed", "destroying", "error", "build_failed", "stopped", "stopping", "archived")


@dataclass
class _Job:
    """One run(): its session (named before it exists, so it can be killed at any moment)."""

    session_id: str
    command_id: str | None = None
    killed: bool = False


class DaytonaSandbox(Sandbox):
    """A live Daytona sandbox. `workdir` is the sandbox user's home directory as Daytona reports it."""

    def __init__(self, connection: DaytonaConnection, remote: Any, spec: SandboxSpec, workdir: str):
        super().__init__(remote.id, spec)
        self._connection = connection
        self._remote = remote  # daytona.AsyncSandbox: only touched on the event loop
        self._workdir = workdir
        self._lost = False  # found gone (deleted elsewhere, or died) while a command ran
        auto_stop = spec.options.get("auto_stop_minutes", DEFAULT_AUTO_STOP_MINUTES)
        # Keep Daytona's auto-stop from stopping a sandbox whose command is still running.
        self._heartbeat = max(10.0, min(float(auto_stop) * 60 / 3, 300.0)) if auto_stop else None

    @property
    def workdir(self) -> str:
        return self._workdir

    @property
    def api_url(self) -> str:
        return self._connection.api_url

    def _check_alive(self, doing: str) -> None:
        if self._lost:
            raise SandboxError(
                f"Daytona sandbox {self.id} no longer exists (deleted, or it died); cannot {doing}."
            )

    def _translate(self, error: BaseException, action: str, control_plane: bool = False) -> SandboxError:
        return translate(
            error, api_url=self.api_url, action=f"{action} in sandbox {self.id}", control_plane=control_plane
        )

    # -- files ------------------------------------------------------------------------------------------

    def _write_file(self, path: str, data: bytes) -> None:
        async def attempt() -> None:
            try:
                await self._remote.fs.upload_file(bytes(data), path)
            except Exception as error:
                raise self._translate(error, f"upload {path}") from error

        call(call_with_retries_async(attempt, attempts=3))

    def _read_file(self, path: str) -> bytes:
        async def attempt() -> bytes:
            try:
                return bytes(await self._remote.fs.download_file(path))
            except Exception as error:
                if isinstance(error, sdk().DaytonaFileNotFoundError) or (
                    is_not_found(error) and getattr(error, "source", None) == "DAYTONA_DAEMON"
                ):
                    raise FileNotFoundError(f"{path} does not exist in sandbox {self.id}") from None
                raise self._translate(error, f"download {path}") from error

        return call(call_with_retries_async(attempt, attempts=3))

    # -- commands ---------------------------------------------------------------------------------------

    def _start(self, argv: list[str], env: dict[str, str], cwd: str) -> AsyncCommand:
        job = _Job(session_id=f"mfs-{uuid.uuid4().hex}")
        command = shell_command(argv, env, cwd)

        async def kill() -> None:
            job.killed = True  # deleting its session kills the command's processes
            await self._delete_session(job.session_id)

        return AsyncCommand(lambda emit: self._execute(job, command, emit), kill=kill)

    async def _execute(self, job: _Job, command: str, emit: Emit) -> int:
        """On the loop: start the command in its own session, stream its logs, return its exit code."""
        process = self._remote.process
        heartbeat: asyncio.Task[None] | None = None
        started = False

        # The SDK decodes the stream as UTF-8 (invalid bytes become U+FFFD); encoding restores the bytes.
        async def stdout(text: str) -> None:
            await emit("stdout", text.encode("utf-8"))

        async def stderr(text: str) -> None:
            await emit("stderr", text.encode("utf-8"))

        try:
            await process.create_session(job.session_id)
            started = True
            request = sdk().SessionExecuteRequest(command=command, run_async=True)
            job.command_id = (await process.execute_session_command(job.session_id, request)).cmd_id
            if self._heartbeat is not None:
                heartbeat = asyncio.ensure_future(self._keep_alive(self._heartbeat))
            try:
                await process.get_session_command_logs_async(job.session_id, job.command_id, stdout, stderr)
            except Exception as error:
                if not is_daytona_error(error) or self.destroyed or job.killed:
                    raise
                # The command runs on (and keeps its own log files): wait for its exit without the stream.
                log.warning(
                    "Lost the log stream of the command in Daytona sandbox %s (%s); waiting for it to end "
                    "without live output.",
                    self.id,
                    error,
                )
            return await self._exit_code(job)
        except Exception as error:
            if self.destroyed or job.killed:
                return KILLED
            if is_daytona_error(error) and await self._gone():
                self._lost = True
                if job.command_id is not None:
                    log.warning("Daytona sandbox %s disappeared while its command ran (exit 137).", self.id)
                    return KILLED
                raise SandboxError(
                    f"Daytona sandbox {self.id} no longer exists (deleted, or it died)."
                ) from error
            raise self._translate(error, "run a command") from error
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            if started and not job.killed:
                # The command has ended: its session only holds its logs now (deleted in the background).
                spawn(self._delete_session(job.session_id))

    async def _exit_code(self, job: _Job) -> int:
        process = self._remote.process
        delay = POLL_START
        while True:
            status = await process.get_session_command(job.session_id, job.command_id)
            if status.exit_code is not None:
                return int(status.exit_code)
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    async def _keep_alive(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._remote.refresh_activity()
            except Exception as error:
                log.debug("Could not refresh the activity of Daytona sandbox %s: %s", self.id, error)

    async def _gone(self) -> bool:
        """Whether the sandbox no longer exists (deleted, or died)."""
        try:
            await self._remote.refresh_data()
        except Exception as error:
            return is_not_found(error)
        return str(getattr(self._remote.state, "value", self._remote.state) or "") in GONE_STATES

    async def _delete_session(self, session_id: str) -> None:
        try:
            await self._remote.process.delete_session(session_id)
        except Exception as error:
            log.debug("Session %s of Daytona sandbox %s not deleted: %s", session_id, self.id, error)

    # -- end --------------------------------------------------------------------------------------------

    def _destroy(self) -> None:
        """Delete the sandbox (kills what runs in it)."""
        try:
            call(call_with_retries_async(self._delete, attempts=3), timeout=60)
        except Exception as error:
            log.warning(
                "Could not delete Daytona sandbox %s (%s); it stops and deletes itself once idle, or remove it "
                "with `sandbox sweep`.",
                self.id,
                error,
            )

    async def _delete(self) -> None:
        try:
            await self._remote.delete()
        except Exception as error:
            if not is_not_found(error):
                raise self._translate(error, "delete the sandbox", control_plane=True) from error
