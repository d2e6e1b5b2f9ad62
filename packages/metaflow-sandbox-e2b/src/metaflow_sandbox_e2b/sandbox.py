"""`E2BSandbox`: one E2B sandbox, driven through the SDK's `AsyncSandbox` on core's event loop.

A command is one envd process, started as `bash -l -c <string>` (the SDK's form): argv is quoted with `shlex`
into `exec sh -c '"$@"; <save $? in a file>; exit' sh <argv...>`, so nothing is re-split, the exit status is
the shell's (128 + N for a signal) and survives a dropped stream. The stream is followed with the SDK's own
`timeout=0` (its 60 s default would cut long steps; core bounds the command instead). When the stream breaks
while the sandbox lives, the backend re-attaches (`commands.connect(pid)`); when the process has ended
meanwhile, its saved status is read. The sandbox's lifetime is a lease renewed every third of it (see `plan`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import shlex
import time
import uuid
from dataclasses import dataclass
from typing import Any

from metaflow_sandbox_core import KILLED, Sandbox, SandboxError, SandboxSpec, call_with_retries_async
from metaflow_sandbox_core.aio import AsyncCommand, Emit, call, submit

from .errors import sdk, translate
from .plan import CreatePlan

log = logging.getLogger(__name__)

HOME = "/home/user"  # the home of E2B's default user, where every template lets it write


@dataclass
class _Job:
    pid: int | None = None
    killed: bool = False


def wrapped(argv: list[str], status_file: str) -> str:
    """The command string for `bash -l -c`: argv unsplit, its exit status saved in `status_file`."""
    script = f'"$@"; s=$?; echo "$s" > {shlex.quote(status_file)}; exit "$s"'
    return f"exec sh -c {shlex.quote(script)} sh {shlex.join(argv)}"


class E2BSandbox(Sandbox):
    """A live E2B sandbox; `workdir` is the default user's home, `/home/user`."""

    def __init__(self, remote: Any, spec: SandboxSpec, plan: CreatePlan):
        super().__init__(remote.sandbox_id, spec)
        self._remote = remote  # e2b.AsyncSandbox: only touched on the event loop
        self._plan = plan
        now = time.time()
        self._last_end = now + plan.first_timeout  # when E2B will end it unless renewed
        self._final_end = now + plan.lifetime
        self._renew_error: BaseException | None = None
        self._lost = False
        self._keeper = submit(self._keep_alive())

    @property
    def workdir(self) -> str:
        return HOME

    def _check_alive(self, doing: str) -> None:
        if self._lost:
            raise SandboxError(
                f"E2B sandbox {self.id} no longer exists ({self._why_gone()}); cannot {doing}."
            )

    # -- lifetime ---------------------------------------------------------------------------------------

    async def _keep_alive(self) -> None:
        """Renew the lease every third of it, up to the planned lifetime (cancelled by destroy)."""
        interval = self._plan.lease / 3
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            seconds = math.ceil(min(self._plan.lease, self._final_end - now))
            if seconds < 1:
                return
            try:
                await self._remote.set_timeout(seconds)
                self._last_end, self._renew_error = now + seconds, None
            except Exception as error:
                self._renew_error = error
                log.warning("Could not extend the lifetime of E2B sandbox %s: %s", self.id, error)

    def _why_gone(self) -> str:
        if time.time() < self._last_end - 1:
            return "killed, or it died"
        if self._renew_error is not None:
            return f"its lifetime ran out: extending it failed ({self._renew_error})"
        if self._last_end >= self._final_end - 1 and self._plan.lifetime >= self._plan.max_lifetime:
            return (
                f"it reached E2B's maximum lifetime, options['max_lifetime']={self._plan.max_lifetime:g} s; "
                "the step runs longer than that"
            )
        return "its lifetime ran out"

    async def _gone(self) -> bool:
        try:
            return not await self._remote.is_running()
        except Exception:
            try:
                await sdk().AsyncSandbox.get_info(self.id)
            except sdk().NotFoundException:
                return True
            except Exception:
                return False
            return False

    # -- files ------------------------------------------------------------------------------------------

    def _write_file(self, path: str, data: bytes) -> None:
        async def attempt() -> None:
            try:
                await self._remote.files.write(path, bytes(data))
            except Exception as error:
                raise translate(error, f"upload {path} to sandbox {self.id}") from error

        call(call_with_retries_async(attempt, attempts=3))

    def _read_file(self, path: str) -> bytes:
        async def attempt() -> bytes:
            try:
                return bytes(await self._remote.files.read(path, format="bytes"))
            except sdk().FileNotFoundException:
                raise FileNotFoundError(f"{path} does not exist in sandbox {self.id}") from None
            except Exception as error:
                raise translate(error, f"download {path} from sandbox {self.id}") from error

        return call(call_with_retries_async(attempt, attempts=3))

    # -- commands ---------------------------------------------------------------------------------------

    def _start(self, argv: list[str], env: dict[str, str], cwd: str) -> AsyncCommand:
        job = _Job()
        status_file = f"{HOME}/.mfs-exit-{uuid.uuid4().hex}"

        async def kill() -> None:
            job.killed = True
            if job.pid is not None:
                await self._remote.commands.kill(job.pid)

        async def body(emit: Emit) -> int:
            return await self._execute(job, wrapped(argv, status_file), env, cwd, status_file, emit)

        return AsyncCommand(body, kill=kill)

    async def _execute(
        self, job: _Job, command: str, env: dict[str, str], cwd: str, status_file: str, emit: Emit
    ) -> int:
        e2b = sdk()

        # The SDK decodes output as UTF-8 (invalid bytes become U+FFFD); encoding gives back the bytes.
        async def stdout(text: str) -> None:
            await emit("stdout", text.encode("utf-8"))

        async def stderr(text: str) -> None:
            await emit("stderr", text.encode("utf-8"))

        streams = {"on_stdout": stdout, "on_stderr": stderr, "timeout": 0, "retain_output": False}
        try:
            handle = await self._remote.commands.run(command, background=True, envs=env, cwd=cwd, **streams)
        except Exception as error:
            if await self._gone():
                self._lost = True
                raise SandboxError(f"E2B sandbox {self.id} no longer exists ({self._why_gone()}).") from error
            raise translate(error, f"run a command in sandbox {self.id}") from error
        job.pid = handle.pid
        while True:
            try:
                return _exit_code((await handle.wait()).exit_code)
            except e2b.CommandExitException as error:
                return _exit_code(error.exit_code)
            except Exception as error:
                if self.destroyed or job.killed:
                    return KILLED
                if await self._gone():
                    self._lost = True
                    why = self._why_gone()
                    if why == "killed, or it died":
                        log.warning("E2B sandbox %s disappeared while its command ran (exit 137).", self.id)
                        return KILLED
                    raise SandboxError(f"E2B sandbox {self.id} ended while the step ran: {why}.") from error
                log.warning("Lost the output stream of E2B sandbox %s (%s); re-attaching.", self.id, error)
            try:
                handle = await self._remote.commands.connect(job.pid, **streams)
            except e2b.NotFoundException:  # it ended while the stream was down: its saved status
                return int((await self._remote.files.read(status_file)).strip())

    # -- end --------------------------------------------------------------------------------------------

    def _destroy(self) -> None:
        """Kill the sandbox (and what runs in it)."""
        self._keeper.cancel()
        try:
            call(call_with_retries_async(self._kill, attempts=3), timeout=60)
        except Exception as error:
            log.warning(
                "Could not kill E2B sandbox %s (%s); it ends on its own within %g s, or remove it with "
                "`sandbox sweep`.",
                self.id,
                error,
                self._plan.lease,
            )

    async def _kill(self) -> None:
        try:
            await self._remote.kill()
        except Exception as error:
            raise translate(error, f"kill sandbox {self.id}") from error


def _exit_code(code: int | None) -> int:
    """envd reports a process ended by a signal (only our own kill here) as -1."""
    return KILLED if code is None or code < 0 else int(code)
