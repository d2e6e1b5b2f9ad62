"""`PipeCommand`: a local child process as a `Command`, for backends whose commands are host processes
(bubblewrap's `bwrap`, or a provider's command-line tool)."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable

from .sandbox import Command, Event

READ_SIZE = 64 * 1024


def exit_code(returncode: int) -> int:
    """A Popen return code as a shell would report it: 128 + signal number when killed by a signal."""
    return 128 - returncode if returncode < 0 else returncode


def kill_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group `process` leads (started with `start_new_session=True`), if still ours."""
    if process.poll() is not None:  # reaped: the pid may already belong to someone else
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class PipeCommand(Command):
    """A child started with `start_new_session=True`, `stdout=PIPE` and `stderr=PIPE`.

    Both pipes are read with a selector as output arrives. Once the process has exited, pipes still held
    open by a descendant that outlived it are read for `linger` more seconds, then abandoned. `kill` sends
    SIGKILL to the process group; `close` kills what is left, reaps the process and calls `on_close`.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        on_close: Callable[[], None] | None = None,
        linger: float = 2.0,
    ):
        assert process.stdout is not None and process.stderr is not None
        self.process = process
        self._on_close = on_close
        self._linger = linger
        self._exited_at: float | None = None
        self._selector = selectors.DefaultSelector()
        self._streams: dict[int, str] = {}
        for stream, pipe in (("stdout", process.stdout), ("stderr", process.stderr)):
            self._selector.register(pipe.fileno(), selectors.EVENT_READ)
            self._streams[pipe.fileno()] = stream
        self._closed = False

    def next(self, timeout: float) -> Event:
        until = time.monotonic() + timeout
        while self._streams and not self._closed:
            now = time.monotonic()
            if self._exited_at is None and self.process.poll() is not None:
                self._exited_at = now
            if self._exited_at is not None and now - self._exited_at > self._linger:
                self._forget_pipes()
                break
            ready = self._selector.select(max(0.0, until - now))
            if not ready:
                return None
            for key, _ in ready:
                try:
                    chunk = os.read(key.fd, READ_SIZE)
                except BlockingIOError:
                    continue
                if chunk:
                    return self._streams[key.fd], chunk
                self._selector.unregister(key.fd)
                del self._streams[key.fd]
        try:
            return exit_code(self.process.wait(max(0.0, until - time.monotonic())))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        kill_process_group(self.process)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        kill_process_group(self.process)  # still running only when run() ended early
        self.process.wait()
        self._forget_pipes()
        self._selector.close()
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        if self._on_close is not None:
            self._on_close()

    def _forget_pipes(self) -> None:
        for fd in list(self._streams):
            self._selector.unregister(fd)
        self._streams.clear()
