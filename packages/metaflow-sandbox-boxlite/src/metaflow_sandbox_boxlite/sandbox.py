"""`BoxliteSandbox`: one box. Commands stream through boxlite's execution API; files travel as tar
(`copy_in`/`copy_out`) to and from the box's home directory, which is on the box's own disk (boxlite refuses
paths under guest mounts such as /tmp)."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from typing import Any

from metaflow_sandbox_core import KILLED, Sandbox, SandboxError, SandboxSpec, call_with_retries_async
from metaflow_sandbox_core.aio import AsyncCommand, Emit, call

from .sdk import is_not_found, translate

log = logging.getLogger(__name__)


def exit_status(code: int | None) -> int:
    """boxlite reports a signal as -N (a killed execution: -9); the contract says 128 + N."""
    if code is None:
        return KILLED
    return 128 - code if code < 0 else code


class BoxliteSandbox(Sandbox):
    def __init__(self, backend: Any, box: Any, spec: SandboxSpec, workdir: str):
        super().__init__(box.id, spec)
        self._backend = backend  # BoxliteBackend: its runtime removes the box
        self._box = box  # boxlite.Box: only touched on core's event loop
        self._workdir = workdir
        self._lost = False

    @property
    def workdir(self) -> str:
        return self._workdir

    def _check_alive(self, doing: str) -> None:
        if self._lost:
            raise SandboxError(
                f"boxlite box {self.id} no longer exists (removed, or it died); cannot {doing}."
            )

    # -- commands ---------------------------------------------------------------------------------------

    def _start(self, argv: list[str], env: dict[str, str], cwd: str) -> AsyncCommand:
        running: list[Any] = []

        async def body(emit: Emit) -> int:
            try:
                execution = await self._box.exec(argv[0], argv[1:], env=list(env.items()), cwd=cwd)
            except Exception as error:
                if is_not_found(error):
                    self._lost = True
                raise translate(error, "start a command", f"box {self.id}") from error
            running.append(execution)

            async def pump(stream: str, lines: Any) -> None:
                async for text in lines:  # the SDK decodes UTF-8; encoding restores the bytes
                    await emit(stream, text.encode("utf-8", "surrogateescape"))

            try:
                await asyncio.gather(pump("stdout", execution.stdout()), pump("stderr", execution.stderr()))
                result = await execution.wait()
                problem = getattr(result, "error_message", None)  # the SDK lost the execution's stream
                if problem is None:
                    return exit_status(result.exit_code)
                failure: Exception = SandboxError(problem)
            except Exception as error:
                failure = error
            if self.destroyed:
                return KILLED
            if await self._gone():
                self._lost = True
                log.warning("boxlite box %s disappeared while its command ran (exit 137).", self.id)
                return KILLED
            raise translate(failure, "follow a command", f"box {self.id}") from failure

        async def kill() -> None:
            for execution in running:
                await execution.kill()

        return AsyncCommand(body, kill=kill)

    async def _gone(self) -> bool:
        try:
            runtime = await self._backend.runtime()
            return await runtime.get_info(self.id) is None
        except Exception as error:
            return is_not_found(error)

    # -- files ------------------------------------------------------------------------------------------

    def _write_file(self, path: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="mfs-boxlite-") as local:
            source = os.path.join(local, os.path.basename(path) or "file")
            with open(source, "wb") as out:
                out.write(data)

            async def attempt() -> None:
                try:
                    await self._box.copy_in(source, path)
                except Exception as error:
                    raise translate(error, f"upload {path}", f"box {self.id}") from error

            call(call_with_retries_async(attempt, attempts=3))

    def _read_file(self, path: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="mfs-boxlite-") as local:
            target = os.path.join(local, "file")

            async def attempt() -> None:
                try:
                    await self._box.copy_out(path, target)
                except Exception as error:
                    if is_not_found(error):
                        raise FileNotFoundError(f"{path} does not exist in box {self.id}") from None
                    raise translate(error, f"download {path}", f"box {self.id}") from error

            call(call_with_retries_async(attempt, attempts=3))
            if os.path.isdir(target):
                raise SandboxError(f"{path} in box {self.id} is a directory, not a file.")
            with open(target, "rb") as result:
                return result.read()

    # -- end --------------------------------------------------------------------------------------------

    def _destroy(self) -> None:
        """Remove the box (kills what runs in it)."""
        try:
            self._backend.destroy(self.id)
        except Exception as error:
            log.warning("Could not remove boxlite box %s (%s); `sandbox sweep` removes it.", self.id, error)
