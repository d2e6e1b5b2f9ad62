"""`DaytonaSandbox`: one Daytona sandbox; commands run in sessions and stream through the log WebSocket."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from metaflow_sandbox_core import (
    OutputCallback,
    Sandbox,
    SandboxError,
    SandboxSpec,
    SandboxTimeoutError,
    call_with_retries,
)

from .command import shell_command
from .connection import DaytonaConnection
from .errors import is_daytona_error, is_not_found, translate
from .plan import DEFAULT_AUTO_STOP_MINUTES
from .sdk import sdk
from .streaming import DONE, LineSplitter, OutputBridge

if TYPE_CHECKING:
    from .backend import DaytonaBackend

log = logging.getLogger(__name__)

#: Exit code of a command whose sandbox was destroyed (or died) under it: SIGKILL's 128 + 9.
KILLED = 137
#: How often run() looks at its deadline and at destroy() while no output arrives.
TICK = 0.1
#: Polling the command's status once its log stream has ended (or broken).
POLL_START, POLL_MAX = 0.05, 1.0
#: Background tasks on the loop (referenced until done, so they are not garbage collected mid-flight).
_BACKGROUND: set[asyncio.Future[None]] = set()


@dataclass
class _Job:
    """One run(): its session (named before it exists, so it can be killed at any moment)."""

    session_id: str
    command_id: str | None = None
    killed: bool = False


class DaytonaSandbox(Sandbox):
    """A live Daytona sandbox. `workdir` is the sandbox user's home directory as Daytona reports it."""

    def __init__(
        self,
        backend: DaytonaBackend,
        connection: DaytonaConnection,
        remote: Any,
        spec: SandboxSpec,
        workdir: str,
    ):
        self.id: str = remote.id
        self._backend = backend
        self._connection = connection
        self._remote = remote  # daytona.AsyncSandbox: only touched on the connection's loop
        self._spec = spec
        self._workdir = workdir
        self._created = time.monotonic()
        self._lock = threading.RLock()  # re-entrant: destroy() may run in a signal handler during run()
        self._destroyed = False
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

    def _alive(self, doing: str) -> None:
        if self._destroyed:
            raise SandboxError(f"Daytona sandbox {self.id} was destroyed; cannot {doing}.")
        if self._lost:
            raise SandboxError(
                f"Daytona sandbox {self.id} no longer exists (deleted, or it died); cannot {doing}."
            )

    def _translate(self, error: BaseException, action: str, control_plane: bool = False) -> SandboxError:
        return translate(
            error, api_url=self.api_url, action=f"{action} in sandbox {self.id}", control_plane=control_plane
        )

    # -- files ------------------------------------------------------------------------------------------

    def upload(self, data: bytes, sandbox_path: str) -> None:
        self._alive(f"upload {sandbox_path}")

        def attempt() -> None:
            try:
                self._connection.call(self._remote.fs.upload_file(bytes(data), sandbox_path))
            except Exception as error:
                raise self._translate(error, f"upload {sandbox_path}") from error

        call_with_retries(attempt, attempts=3)

    def download(self, sandbox_path: str) -> bytes:
        self._alive(f"download {sandbox_path}")

        def attempt() -> bytes:
            try:
                data: bytes = self._connection.call(self._remote.fs.download_file(sandbox_path))
                return data
            except Exception as error:
                if isinstance(error, sdk().DaytonaFileNotFoundError) or (
                    is_not_found(error) and getattr(error, "source", None) == "DAYTONA_DAEMON"
                ):
                    raise FileNotFoundError(f"{sandbox_path} does not exist in sandbox {self.id}") from None
                raise self._translate(error, f"download {sandbox_path}") from error

        return call_with_retries(attempt, attempts=3)

    # -- commands ---------------------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> int:
        self._alive("run a command")
        command = shell_command(argv, {**self._spec.env, **(env or {})}, cwd or self._workdir)
        deadline, limit = self._deadline(timeout)
        if deadline is not None and time.monotonic() >= deadline:
            raise SandboxTimeoutError(f"{limit}; the command was not started.")
        connection = self._connection
        bridge = OutputBridge(connection.loop)
        job = _Job(session_id=f"mfs-{uuid.uuid4().hex}")
        future = connection.submit(self._execute(job, command, bridge))
        future.add_done_callback(lambda _: bridge.finish())
        lines = LineSplitter(on_output)
        settled = False
        try:
            while True:
                wait = TICK if deadline is None else min(TICK, deadline - time.monotonic())
                item = bridge.get(wait)
                if item is DONE:
                    break
                if isinstance(item, tuple):
                    lines.feed(*item)
                # Checked after output too: a command that never stops printing must still time out.
                if self._destroyed:
                    settled = True
                    future.cancel()
                    return KILLED
                if deadline is not None and time.monotonic() >= deadline:
                    self._kill(job, future)
                    raise SandboxTimeoutError(f"{limit}; the command was killed.")
            lines.flush()
            settled = True
            return future.result()
        finally:
            if not settled:  # on_output raised, a signal handler raised, or the time ran out
                self._kill(job, future)

    def _deadline(self, timeout: float | None) -> tuple[float | None, str]:
        deadlines = []
        if timeout is not None:
            deadlines.append(
                (time.monotonic() + timeout, f"The command ran past its {timeout:g} s time limit")
            )
        if self._spec.timeout is not None:
            deadlines.append(
                (
                    self._created + self._spec.timeout,
                    f"Sandbox {self.id} reached its {self._spec.timeout:g} s lifetime",
                )
            )
        if not deadlines:
            return None, ""
        return min(deadlines)

    def _kill(self, job: _Job, future: concurrent.futures.Future[int]) -> None:
        """Stop the command: deleting its session kills its processes; then stop waiting for it."""
        if job.killed:
            return
        job.killed = True
        try:
            self._connection.call(self._delete_session(job.session_id), timeout=15)
        except BaseException as error:
            log.debug("Could not delete session %s of sandbox %s: %s", job.session_id, self.id, error)
        future.cancel()

    async def _execute(self, job: _Job, command: str, bridge: OutputBridge) -> int:
        """On the loop: start the command in its own session, stream its logs, return its exit code."""
        process = self._remote.process
        heartbeat: asyncio.Task[None] | None = None
        started = False
        try:
            await process.create_session(job.session_id)
            started = True
            request = sdk().SessionExecuteRequest(command=command, run_async=True)
            job.command_id = (await process.execute_session_command(job.session_id, request)).cmd_id
            if self._heartbeat is not None:
                heartbeat = asyncio.ensure_future(self._keep_alive(self._heartbeat))
            try:
                await process.get_session_command_logs_async(
                    job.session_id, job.command_id, bridge.stdout, bridge.stderr
                )
            except Exception as error:
                if not is_daytona_error(error) or self._destroyed or job.killed:
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
            if self._destroyed or job.killed:
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
                cleanup = asyncio.ensure_future(self._delete_session(job.session_id))
                _BACKGROUND.add(cleanup)
                cleanup.add_done_callback(_BACKGROUND.discard)

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
        state = str(getattr(self._remote.state, "value", self._remote.state) or "")
        return state in (
            "destroyed",
            "destroying",
            "error",
            "build_failed",
            "stopped",
            "stopping",
            "archived",
        )

    async def _delete_session(self, session_id: str) -> None:
        try:
            await self._remote.process.delete_session(session_id)
        except Exception as error:
            log.debug("Session %s of Daytona sandbox %s not deleted: %s", session_id, self.id, error)

    # -- end --------------------------------------------------------------------------------------------

    def destroy(self) -> None:
        """Delete the sandbox (kills what runs in it). Idempotent; safe from another thread or a signal handler."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        try:
            self._connection.call(self._delete(), timeout=60)
        except Exception as error:
            log.warning(
                "Could not delete Daytona sandbox %s (%s); it stops and deletes itself once idle, or remove it "
                "with `sandbox sweep`.",
                self.id,
                error,
            )

    async def _delete(self) -> None:
        for attempt in range(3):
            try:
                await self._remote.delete()
                return
            except Exception as error:
                if is_not_found(error):
                    return
                retryable = self._translate(error, "delete the sandbox", control_plane=True).retryable
                if not retryable or attempt == 2:
                    raise
                await asyncio.sleep(0.5 * 2**attempt)
