"""`Sandbox`: one live sandbox. What is the same for every backend is done here, once.

The public methods (`run`, `start` + `Started.follow`, `upload`, `download`, `destroy`) are the contract the
extension uses. They check
their arguments, refuse work after `destroy`, bound commands by their timeout and the sandbox's lifetime,
cut output into lines (1 MiB pieces at most) and deliver it in order on the caller's thread, and make
`destroy` idempotent and safe from any thread. A backend implements the protected hooks:

| hook | does |
| --- | --- |
| `_start(argv, env, cwd)` | start one command, return a `Command` (`PipeCommand` for a local process, `aio.AsyncCommand` for a coroutine) |
| `_write_file(path, data)` / `_read_file(path)` | the file transfers (`FileNotFoundError` for a missing file) |
| `_destroy()` | kill what runs and release the sandbox (called once) |
| `_check_alive(doing)` | optional: raise `SandboxError` when the sandbox vanished from outside |
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TypeVar, Union

from .errors import ConfigError, SandboxError, SandboxTimeoutError
from .output import LineSplitter, OutputCallback
from .spec import SandboxSpec, env_problem

_S = TypeVar("_S", bound="Sandbox")

#: The exit code `run` returns for a command killed by `destroy()` (SIGKILL's 128 + 9).
KILLED = 137
#: How long `run` waits for output before it looks at its deadline and at `destroy()` again.
TICK = 0.1
#: After a time-out killed a command: how long what it still printed keeps being delivered.
KILL_GRACE = 2.0

#: What `Command.next` returns: a chunk of output, the exit code, or None (nothing yet).
Event = Union[tuple[str, bytes], int, None]  # noqa: UP007 - evaluated at run time, and core supports 3.9


class Command(abc.ABC):
    """One command started by `Sandbox._start`. `run` drives it from the caller's thread."""

    @abc.abstractmethod
    def next(self, timeout: float) -> Event:
        """Wait up to `timeout` seconds. Return the next chunk of output as (`"stdout"` | `"stderr"`, bytes
        split anywhere), the exit code (128 + N when killed by signal N) once the command has ended and all
        its output was returned, or None when nothing came in time."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop the command inside the sandbox (idempotent); `next` returns an exit code soon after."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the command holds locally; called once, last, however `run` ended."""


class Sandbox(abc.ABC):
    """One live sandbox. `destroy` is idempotent; using it as a context manager always destroys.

    Paths: `upload`/`download` support absolute paths under `workdir`, where the extension puts the
    bootstrap and its plan. `download` of a missing file raises `FileNotFoundError`.
    After `destroy`, `run`/`upload`/`download` raise `SandboxError`; a command killed by `destroy` returns 137.
    """

    id: str
    spec: SandboxSpec

    def __init__(self, sandbox_id: str, spec: SandboxSpec) -> None:
        self.id = sandbox_id
        self.spec = spec
        self._expires_at = time.monotonic() + spec.timeout if spec.timeout else None
        # Both re-entrant: destroy() may be called by on_output or a signal handler on the thread in run().
        self._lock = threading.RLock()  # guards _destroyed and _commands
        self._destroy_lock = threading.RLock()  # a second destroy() waits until the first is done
        self._destroyed = False
        self._commands: set[Command] = set()

    # -- what backends may override -----------------------------------------------------------------

    @property
    def workdir(self) -> str:
        """A private, writable directory inside the sandbox (absolute). The extension keeps its bootstrap,
        plan, package and logs below it. Backends whose sandboxes have their own home say so here."""
        return "/tmp"

    @property
    def default_cwd(self) -> str:
        """Where commands run when `run` gets no `cwd`."""
        return self.workdir

    def _check_alive(self, doing: str) -> None:  # noqa: B027 - optional hook
        """Raise `SandboxError` if the sandbox is gone although `destroy` was not called (removed from
        outside, died). Called under the sandbox's lock before every operation."""

    def memory_exceeded(self) -> bool:
        """True when the sandbox's memory limit killed a process in it (since it was created).

        Optional: callers ask after a command ended by a signal, before `destroy`, to tell the user why.
        Backends that cannot tell return False (the default).
        """
        return False

    @abc.abstractmethod
    def _start(self, argv: list[str], env: dict[str, str], cwd: str) -> Command:
        """Start `argv` with exactly `env` (the spec's, then the run's; checked) in `cwd` (absolute).
        Called under the sandbox's lock, so `destroy` cannot miss it: return quickly."""

    @abc.abstractmethod
    def _write_file(self, path: str, data: bytes) -> None:
        """Write `data` to `path`, creating parent directories."""

    @abc.abstractmethod
    def _read_file(self, path: str) -> bytes:
        """The whole file at `path`; `FileNotFoundError` if there is none."""

    @abc.abstractmethod
    def _destroy(self) -> None:
        """Kill everything running in the sandbox and release it. Called once, from any thread."""

    # -- the contract -------------------------------------------------------------------------------

    @property
    def destroyed(self) -> bool:
        return self._destroyed

    def running_commands(self) -> list[Command]:
        """The commands started and not yet finished (for `_destroy`)."""
        with self._lock:
            return list(self._commands)

    def upload(self, data: bytes, sandbox_path: str) -> None:
        """Write `data` to `sandbox_path` (parent directories are created)."""
        path = check_path(sandbox_path)
        self._ensure_alive(f"upload {path}")
        self._write_file(path, data)

    def download(self, sandbox_path: str) -> bytes:
        """Read the whole file at `sandbox_path`."""
        path = check_path(sandbox_path)
        self._ensure_alive(f"download {path}")
        return self._read_file(path)

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> int:
        """Run `argv`, streaming each line to `on_output` as it arrives; return the exit code.

        Output is never accumulated: memory stays flat whatever the command prints. A command still running
        after `timeout` seconds, or at the end of the sandbox's lifetime (`SandboxSpec.timeout` from its
        creation), is killed and `SandboxTimeoutError` is raised. A command killed by a signal returns
        128 + the signal number; one killed by `destroy` returns 137. An exception raised by `on_output` (or
        by a signal handler while `run` waits) kills the command and propagates.
        """
        deadline = self._deadline(timeout)  # a command that could not finish in time is not started
        return self.start(argv, env=env, cwd=cwd)._follow(deadline, on_output)

    def start(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> Started:
        """Start `argv` now and follow it later (`Started.follow`), e.g. a command that prepares and then
        waits for its work. Its output waits for the follower (`Started.read_until` can consume a first
        line). Checks and limits as for `run`; `Started.close` releases one never followed."""
        command_argv = check_argv(argv)
        command_env = check_env({**self.spec.env, **(env or {})})
        command_cwd = self.default_cwd if cwd is None else check_cwd(cwd)
        self._deadline(None)
        with self._lock:
            self._ensure_alive("run a command")
            command = self._start(command_argv, command_env, command_cwd)
            self._commands.add(command)
        return Started(self, command, command_argv[0])

    def destroy(self) -> None:
        """Kill everything running in the sandbox and release it. Idempotent; safe from any thread (a `run`
        in progress returns 137 promptly) and from `on_output` or a signal handler."""
        with self._destroy_lock:
            with self._lock:
                if self._destroyed:
                    return
                self._destroyed = True
            self._destroy()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- the machinery ------------------------------------------------------------------------------

    def _ensure_alive(self, doing: str) -> None:
        with self._lock:
            if self._destroyed:
                raise SandboxError(f"Sandbox {self.id} has been destroyed; cannot {doing}. Create a new one.")
            self._check_alive(doing)

    def _deadline(self, timeout: float | None) -> tuple[float | None, str]:
        """The monotonic time a command must end by, and what sets it (for the error message)."""
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            raise ConfigError(f"timeout={timeout!r} must be a number of seconds greater than 0 (or None).")
        now = time.monotonic()
        bounds = []
        if timeout is not None:
            bounds.append((now + timeout, f"its timeout of {timeout:g} s"))
        if self._expires_at is not None:
            bounds.append(
                (self._expires_at, f"the sandbox's lifetime (SandboxSpec.timeout={self.spec.timeout:g} s)")
            )
        if not bounds:
            return None, ""
        deadline, limit = min(bounds)
        if deadline <= now:
            raise SandboxTimeoutError(
                f"Sandbox {self.id} is past {limit}; the command was not started. Create a new sandbox."
            )
        return deadline, limit

    def _follow(
        self, command: Command, program: str, bound: tuple[float | None, str], lines: LineSplitter
    ) -> int:
        """Deliver `command`'s output until it ends, times out or the sandbox is destroyed."""
        deadline, limit = bound
        settled = False  # False while an exception (from on_output, a signal handler) must kill the command
        try:
            while not self._destroyed:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    settled = True
                    command.kill()
                    self._drain(command, lines)
                    raise SandboxTimeoutError(
                        f"Command {program!r} ran past {limit} and was killed. Give it more time."
                    )
                event = command.next(TICK if deadline is None else min(TICK, deadline - now))
                if isinstance(event, int):
                    settled = True
                    lines.flush()
                    return event
                if event is not None:
                    lines.feed(*event)  # checked after output too: endless output must still time out
            settled = True
            return KILLED
        finally:
            if not settled:
                command.kill()

    def _drain(self, command: Command, lines: LineSplitter) -> None:
        """After a kill: deliver what the command printed before it died, for up to `KILL_GRACE`."""
        until = time.monotonic() + KILL_GRACE
        while not self._destroyed and (now := time.monotonic()) < until:
            try:
                event = command.next(min(TICK, until - now))
            except SandboxError:
                break
            if isinstance(event, int):
                break
            if event is not None:
                lines.feed(*event)
        lines.flush()


def check_argv(argv: Sequence[str]) -> list[str]:
    """`argv` as a list; `ConfigError` unless it is a non-empty sequence of strings without NUL bytes."""
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence) or not argv:
        raise ConfigError(f"argv={argv!r} must be a non-empty list of strings, e.g. ['sh', '-c', 'echo hi'].")
    for arg in argv:
        if not isinstance(arg, str) or "\0" in arg:
            raise ConfigError(f"argv item {arg!r} must be a string without NUL bytes.")
    return list(argv)


def check_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` as a dict; `ConfigError` for what no environment can carry (see `env_problem`)."""
    for key, value in env.items():
        problem = env_problem(key, value)
        if problem:
            raise ConfigError(f"env[{key!r}]: {problem}.")
    return dict(env)


def check_cwd(cwd: str) -> str:
    if not isinstance(cwd, str) or not cwd.startswith("/") or "\0" in cwd:
        raise ConfigError(f"cwd={cwd!r} must be an absolute path inside the sandbox, e.g. '/tmp'.")
    return cwd


def check_path(path: str) -> str:
    if not isinstance(path, str) or not path or "\0" in path:
        raise ConfigError(f"sandbox path {path!r} must be a non-empty string without NUL bytes.")
    return path


#: The most output `Started.read_until` keeps from before its marker (for the error when it never comes).
_READ_UNTIL_TAIL = 4096


class Started:
    """A command `Sandbox.start` started. Follow it once with `follow`; `read_until` may first consume its
    opening output up to a marker line. `close` releases one that is never followed (after `destroy`)."""

    def __init__(self, sandbox: Sandbox, command: Command, program: str) -> None:
        self.sandbox = sandbox
        self._command = command
        self._program = program
        self._pending: list[tuple[str, bytes]] = []  # output read past a marker, delivered first
        self._closed = False

    def read_until(self, marker: bytes, timeout: float) -> None:
        """Consume stdout up to and including the line `marker` (output before it is dropped). Raises
        `SandboxError` with the command's last output when it ends first, `SandboxTimeoutError` after
        `timeout` seconds (the command is killed) or past the sandbox's lifetime."""
        deadline, limit = self.sandbox._deadline(timeout)
        line = b"\n" + marker.rstrip(b"\n") + b"\n"
        stdout, tail = b"\n", b""  # stdout starts at a line's start
        while not self.sandbox.destroyed:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                self._command.kill()
                raise SandboxTimeoutError(
                    f"Command {self._program!r} did not say it was ready within {limit}."
                )
            event = self._command.next(TICK if deadline is None else min(TICK, deadline - now))
            if isinstance(event, int):
                shown = tail.decode("utf-8", "replace").strip()[-500:]
                raise SandboxError(f"Command {self._program!r} exited {event} before it was ready: {shown}")
            if event is None:
                continue
            stream, chunk = event
            tail = (tail + chunk)[-_READ_UNTIL_TAIL:]
            if stream != "stdout":
                continue
            stdout += chunk
            found = stdout.find(line)
            if found >= 0:
                rest = stdout[found + len(line) :]
                if rest:
                    self._pending.append(("stdout", rest))
                return
            stdout = stdout[-len(line) :]  # enough to find a marker split across chunks
        raise SandboxError(f"Sandbox {self.sandbox.id} was destroyed before {self._program!r} was ready.")

    def follow(self, *, timeout: float | None = None, on_output: OutputCallback | None = None) -> int:
        """As `Sandbox.run` from here on: deliver its output (in lines) until it ends; its exit code.
        `timeout` counts from now."""
        return self._follow(self.sandbox._deadline(timeout), on_output)

    def _follow(self, bound: tuple[float | None, str], on_output: OutputCallback | None) -> int:
        lines = LineSplitter(on_output)
        try:
            for stream, chunk in self._pending:
                lines.feed(stream, chunk)
            self._pending = []
            return self.sandbox._follow(self._command, self._program, bound, lines)
        finally:
            self.close()

    def close(self) -> None:
        """Release what the command holds here (idempotent); it goes on running until `destroy`."""
        if self._closed:
            return
        self._closed = True
        with self.sandbox._lock:
            self.sandbox._commands.discard(self._command)
        self._command.close()
