"""`BubblewrapSandbox`: a private host directory; every `run` is one fresh bwrap process over it."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence

from metaflow_sandbox_core import (
    ConfigError,
    OutputCallback,
    Sandbox,
    SandboxError,
    SandboxSpec,
    SandboxTimeoutError,
)

from .command import HostSystem, build_bwrap_argv, build_env, validate_argv
from .keyring import FreshKeyring
from .layout import SANDBOX_WORKDIR, SandboxLayout, SandboxUser, host_path_for, mount_binds
from .limits import SandboxLimits
from .probe import INSTALL_HINT
from .processes import ProcessRef, exit_code, kill_process_group
from .state import SandboxRecord, remove_tree
from .streaming import OutputPump

#: How long to keep collecting output of a killed command, and to wait for a killed bwrap to exit.
KILL_GRACE = 2.0

#: Sandboxes of this process by id, so `BubblewrapBackend.destroy(id)` can stop their commands cleanly.
LIVE_SANDBOXES: weakref.WeakValueDictionary[str, BubblewrapSandbox] = weakref.WeakValueDictionary()

Process = subprocess.Popen[bytes]


class BubblewrapSandbox(Sandbox):
    """One bubblewrap sandbox. Made by `BubblewrapBackend.create`; thread-safe.

    `/tmp`, `/home/sandbox` (HOME) and `/sandbox` (the default working directory) are private, writable and
    backed by the sandbox's host directory, so they outlive single commands; `upload`/`download` reach
    paths under those and under `spec.mounts`.
    """

    def __init__(
        self,
        *,
        record: SandboxRecord,
        spec: SandboxSpec,
        layout: SandboxLayout,
        bwrap: str,
        host: HostSystem,
        limits: SandboxLimits,
        user: SandboxUser,
    ):
        self.id = record.id
        self.spec = spec
        #: How each resource limit is enforced (see `SandboxLimits.enforcement`).
        self.limits = limits
        self.layout = layout
        self._record = record
        self._bwrap = bwrap
        self._host = host
        #: Who the sandboxed code runs as (see `SandboxUser`).
        self.user = user
        self._keyring = FreshKeyring()
        #: What upload/download reach: the private directories, then the mounts (innermost wins).
        self._file_binds = (*layout.private_binds(), *mount_binds(spec.mounts))
        self._binds = (*layout.identity_binds(), *self._file_binds)
        self._expires_at = time.monotonic() + spec.timeout if spec.timeout else None
        self._lock = threading.Lock()  # guards _running, _record and _destroyed
        self._destroy_lock = threading.Lock()  # a second destroy() waits for the first to finish
        self._running: set[Process] = set()
        self._destroyed = False
        LIVE_SANDBOXES[self.id] = self

    # -- files --------------------------------------------------------------------------------------

    def upload(self, data: bytes, sandbox_path: str) -> None:
        self._ensure_alive()
        target = host_path_for(sandbox_path, self._file_binds, for_write=True)
        self._make_parents(os.path.dirname(target))
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            self.user.give(file.fileno())

    def _make_parents(self, directory: str) -> None:
        """Create `directory` and missing parents, each the sandbox user's (it writes next to its files)."""
        if os.path.isdir(directory):
            return
        self._make_parents(os.path.dirname(directory))
        os.mkdir(directory)
        self.user.give(directory)

    def download(self, sandbox_path: str) -> bytes:
        self._ensure_alive()
        with open(host_path_for(sandbox_path, self._file_binds, for_write=False), "rb") as file:
            return file.read()

    # -- commands -----------------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> int:
        command = build_bwrap_argv(
            self._bwrap,
            host=self._host,
            network=self.spec.network,
            binds=self._binds,
            argv=validate_argv(argv),
            cwd=_checked_cwd(cwd),
            user=self.user,
        )
        command_env = build_env(self.spec.env, env)
        deadline, limit = self._deadline(timeout)
        process = self._start(command, command_env)
        assert process.stdout is not None and process.stderr is not None
        pump = OutputPump({"stdout": process.stdout.fileno(), "stderr": process.stderr.fileno()}, on_output)
        try:
            if pump.pump(deadline=deadline, exited=lambda: process.poll() is not None) and _wait(
                process, deadline
            ):
                return exit_code(process.returncode)
            kill_process_group(process)
            pump.pump(
                deadline=time.monotonic() + KILL_GRACE, exited=lambda: process.poll() is not None, grace=0.2
            )
            raise SandboxTimeoutError(
                f"Command {argv[0]!r} ran past {limit} and was killed. Give it more time."
            )
        finally:
            pump.close(deliver_partial=False)
            kill_process_group(process)  # still running only when an exception (e.g. from on_output) got here
            process.wait()
            process.stdout.close()
            process.stderr.close()
            self._forget(process)

    def _deadline(self, timeout: float | None) -> tuple[float | None, str]:
        """The monotonic time a command must end by, and what sets it (for the error message)."""
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"timeout={timeout!r} must be greater than 0 (or None for no limit).")
        bounds = []
        if timeout is not None:
            bounds.append((time.monotonic() + timeout, f"its timeout of {timeout:g} s"))
        if self._expires_at is not None:
            bounds.append(
                (self._expires_at, f"the sandbox's lifetime (SandboxSpec.timeout={self.spec.timeout:g} s)")
            )
        if not bounds:
            return None, ""
        deadline, limit = min(bounds)
        if deadline <= time.monotonic():
            raise SandboxTimeoutError(f"Sandbox {self.id} is past {limit}; create a new one.")
        return deadline, limit

    def _start(self, command: list[str], env: dict[str, str]) -> Process:
        with self._lock:
            self._ensure_alive_locked()
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                    cwd="/",
                    start_new_session=True,
                    preexec_fn=self._prepare_child,
                )
            except FileNotFoundError:
                raise ConfigError(
                    f"bubblewrap ({self._bwrap}) is no longer installed. Install it: {INSTALL_HINT}"
                )
            except (OSError, subprocess.SubprocessError) as error:
                raise SandboxError(f"Could not start bwrap for sandbox {self.id}: {error}")
            self._running.add(process)
            self._record.processes.append(ProcessRef.of(process.pid))
            self._save_record()
            return process

    def _prepare_child(self) -> None:
        """In the forked bwrap process, before exec: the resource limits and an empty session keyring."""
        self.limits.prepare_child()
        self._keyring.join()

    def _forget(self, process: Process) -> None:
        with self._lock:
            self._running.discard(process)
            self._record.processes = [ref for ref in self._record.processes if ref.pid != process.pid]
            if not self._destroyed:
                self._save_record()

    def _save_record(self) -> None:
        try:
            self._record.save(self.layout.record_file)
        except OSError:  # the directory was removed from outside (Backend.destroy in another process)
            pass

    # -- lifetime -----------------------------------------------------------------------------------

    def memory_exceeded(self) -> bool:
        """True when the memory cgroup killed a process of this sandbox (see `SandboxLimits`)."""
        return self.limits.memory_exceeded()

    def destroy(self) -> None:
        """Kill every running command (each bwrap's process group; its pid namespace dies with it),
        remove the sandbox's cgroups and host directory. Idempotent; safe from any thread."""
        with self._destroy_lock:
            with self._lock:
                if self._destroyed:
                    return
                self._destroyed = True
                running = list(self._running)
            for process in running:
                kill_process_group(process)
            for process in running:
                try:
                    process.wait(KILL_GRACE)
                except subprocess.TimeoutExpired:
                    pass
            self.limits.release()
            remove_tree(self.layout.host_dir)
            LIVE_SANDBOXES.pop(self.id, None)

    def _ensure_alive(self) -> None:
        with self._lock:
            self._ensure_alive_locked()

    def _ensure_alive_locked(self) -> None:
        if self._destroyed:
            raise SandboxError(f"Sandbox {self.id} has been destroyed; create a new one.")
        if not os.path.isdir(self.layout.host_dir):
            raise SandboxError(
                f"Sandbox {self.id} was destroyed from outside (its directory {self.layout.host_dir} is gone); "
                "create a new one."
            )


def _checked_cwd(cwd: str | None) -> str:
    if cwd is None:
        return SANDBOX_WORKDIR
    if not cwd.startswith("/"):
        raise ConfigError(
            f"cwd={cwd!r} must be an absolute path inside the sandbox, e.g. {SANDBOX_WORKDIR!r}."
        )
    return cwd


def _wait(process: Process, deadline: float | None) -> bool:
    """Wait for `process` to exit by `deadline`; False if it is still running then."""
    try:
        process.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True
