"""Sessions and their commands: local processes, each in its own process session, with logs on disk.

A command's output is kept in a log file of records `[stream: 1 byte][length: 4 bytes BE][data]`, written
as it arrives from the pipes, so a follower (the log WebSocket) can start at any time, replay everything
and then keep up. Followers turn each record into one frame with Daytona's stream prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping

STDOUT = 1
STDERR = 2
#: Daytona's stream markers on the log WebSocket.
PREFIXES = {STDOUT: b"\x01\x01\x01", STDERR: b"\x02\x02\x02"}
_HEADER = struct.Struct(">BI")
READ_SIZE = 64 * 1024
#: After a command's process exits, how long its pipes may stay open (held by something it left running).
PIPE_GRACE = 2.0


def _prctl() -> Callable[[int, int], int] | None:
    if sys.platform != "linux":
        return None
    import ctypes

    prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


#: Looked up once here: the child (between fork and exec) only calls it, never loads a library.
_PRCTL = _prctl()


def _die_with_emulator() -> None:
    """In the child: SIGKILL when the emulator dies (so a crashed emulator does not leave shells behind)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def exit_code_of(returncode: int) -> int:
    """A shell's view of an exit status: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Command:
    """One command of a session: its process, its log file and its exit code (None while running)."""

    def __init__(self, session: Session, command_id: str, command: str, log_path: str):
        self.id = command_id
        self.session = session
        self.command = command
        self.log_path = log_path
        self.exit_code: int | None = None
        self.process: asyncio.subprocess.Process | None = None
        self._log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._waiters: list[asyncio.Future[None]] = []
        self.finished = asyncio.Event()
        #: Called with (command, stream, data) after each chunk of output is logged (fault injection).
        self.on_output: Callable[[Command, int, bytes], None] | None = None

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "command": self.command, "exitCode": self.exit_code}

    # -- running --------------------------------------------------------------------------------------

    async def start(self, argv: list[str], env: Mapping[str, str], cwd: str) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,  # its own process group: killable as a whole
            preexec_fn=_die_with_emulator if _PRCTL is not None else None,
        )
        asyncio.get_running_loop().create_task(self._supervise())

    async def _supervise(self) -> None:
        process = self.process
        assert process is not None and process.stdout is not None and process.stderr is not None
        pumps = [
            asyncio.ensure_future(self._pump(process.stdout, STDOUT)),
            asyncio.ensure_future(self._pump(process.stderr, STDERR)),
        ]
        returncode = await process.wait()
        _, pending = await asyncio.wait(pumps, timeout=PIPE_GRACE)
        for pump in pending:
            pump.cancel()
        self._finish(exit_code_of(returncode))

    async def _pump(self, reader: asyncio.StreamReader, stream: int) -> None:
        while True:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                return
            self._append(stream, chunk)

    def _append(self, stream: int, data: bytes) -> None:
        record = _HEADER.pack(stream, len(data)) + data
        view = memoryview(record)
        while view:
            written = os.write(self._log_fd, view)
            view = view[written:]
        self._notify()
        if self.on_output is not None:
            self.on_output(self, stream, data)

    def _finish(self, exit_code: int) -> None:
        if self.exit_code is None:
            self.exit_code = exit_code
        with contextlib.suppress(OSError):
            os.close(self._log_fd)
        self.finished.set()
        self._notify()

    def kill(self) -> None:
        """SIGKILL the command's whole process group (its exit code becomes 137)."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    @property
    def running(self) -> bool:
        return not self.finished.is_set()

    # -- following ------------------------------------------------------------------------------------

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _changed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    @property
    def logged(self) -> int:
        """Bytes logged so far (an offset for `records`: what comes after now)."""
        return os.path.getsize(self.log_path)

    async def records(self, follow: bool, offset: int = 0) -> AsyncIterator[tuple[int, bytes]]:
        """(stream, data) records from `offset` (a record boundary: 0 or a past `logged`); with `follow`, until
        the command has exited."""
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            while True:
                header = log.read(_HEADER.size)
                if len(header) == _HEADER.size:
                    stream, length = _HEADER.unpack(header)
                    yield stream, log.read(length)
                    continue
                # Records are written whole by this event loop, so a short read is the end of the file.
                log.seek(-len(header), os.SEEK_CUR)
                if not follow or self.finished.is_set():
                    return
                await self._changed()


class Session:
    """A named group of commands; deleting it kills what still runs."""

    def __init__(self, session_id: str, log_dir: str):
        self.id = session_id
        self.log_dir = log_dir
        self.commands: dict[str, Command] = {}

    def new_command(self, command: str) -> Command:
        command_id = str(uuid.uuid4())
        entry = Command(self, command_id, command, os.path.join(self.log_dir, f"{command_id}.log"))
        self.commands[entry.id] = entry
        return entry

    def kill(self) -> None:
        for command in self.commands.values():
            command.kill()

    @property
    def running(self) -> list[Command]:
        return [command for command in self.commands.values() if command.running]

    def to_json(self) -> dict[str, object]:
        return {"sessionId": self.id, "commands": [command.to_json() for command in self.commands.values()]}
