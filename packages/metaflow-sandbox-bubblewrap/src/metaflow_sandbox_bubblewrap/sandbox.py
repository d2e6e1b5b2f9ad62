"""`BubblewrapSandbox`: a private host directory; every `run` is one fresh bwrap process over it."""

from __future__ import annotations

import os
import subprocess
import weakref

from metaflow_sandbox_core import (
    ConfigError,
    PipeCommand,
    Sandbox,
    SandboxError,
    SandboxSpec,
    kill_process_group,
)

from .command import BASE_ENV, HostSystem, build_bwrap_argv
from .egress import SandboxEgress
from .keyring import FreshKeyring
from .layout import SANDBOX_WORKDIR, SandboxLayout, SandboxUser, host_path_for, mount_binds
from .limits import SandboxLimits
from .probe import INSTALL_HINT
from .processes import ProcessRef, spawn
from .seccomp import filter_bytes, filter_fd
from .state import SandboxRecord, remove_tree

#: How long destroy() waits for a killed bwrap to exit.
KILL_GRACE = 2.0

#: Sandboxes of this process by id, so `BubblewrapBackend.destroy(id)` can stop their commands cleanly.
LIVE_SANDBOXES: weakref.WeakValueDictionary[str, BubblewrapSandbox] = weakref.WeakValueDictionary()


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
        super().__init__(record.id, spec)
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
        #: The filtering proxy of a sandbox with `NetworkPolicy.DATASTORE` (see `egress.py`), else None.
        self.egress = SandboxEgress.start(spec, user, layout.host_dir)
        egress_binds = self.egress.binds() if self.egress else ()
        self._binds = (*layout.identity_binds(), *self._file_binds, *egress_binds)
        LIVE_SANDBOXES[self.id] = self

    @property
    def default_cwd(self) -> str:
        return SANDBOX_WORKDIR

    def _check_alive(self, doing: str) -> None:
        if not os.path.isdir(self.layout.host_dir):
            raise SandboxError(
                f"Sandbox {self.id} was destroyed from outside (its directory {self.layout.host_dir} is gone); "
                f"cannot {doing}. Create a new one."
            )

    # -- files --------------------------------------------------------------------------------------

    def _write_file(self, path: str, data: bytes) -> None:
        target = host_path_for(path, self._file_binds, for_write=True)
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

    def _read_file(self, path: str) -> bytes:
        with open(host_path_for(path, self._file_binds, for_write=False), "rb") as file:
            return file.read()

    # -- commands -----------------------------------------------------------------------------------

    def _start(self, argv: list[str], env: dict[str, str], cwd: str) -> PipeCommand:
        if self.egress is not None:
            argv, env = self.egress.wrap(argv), {**self.egress.env(), **env}
        seccomp = filter_bytes()
        seccomp_fd = None if seccomp is None else filter_fd(seccomp)
        try:
            return self._start_bwrap(argv, env, cwd, seccomp_fd)
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)

    def _start_bwrap(
        self, argv: list[str], env: dict[str, str], cwd: str, seccomp_fd: int | None
    ) -> PipeCommand:
        command = build_bwrap_argv(
            self._bwrap,
            host=self._host,
            network=self.spec.network,
            binds=self._binds,
            argv=argv,
            cwd=cwd,
            user=self.user,
            seccomp_fd=seccomp_fd,
        )
        try:
            process = spawn(
                lambda: subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env={**BASE_ENV, **env},
                    cwd="/",
                    start_new_session=True,
                    pass_fds=() if seccomp_fd is None else (seccomp_fd,),
                    preexec_fn=self._prepare_child,
                )
            )
        except FileNotFoundError:
            raise ConfigError(
                f"bubblewrap ({self._bwrap}) is no longer installed. Install it: {INSTALL_HINT}"
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise SandboxError(f"Could not start bwrap for sandbox {self.id}: {error}")
        self._record.processes.append(ProcessRef.of(process.pid))
        self._save_record()
        return PipeCommand(process, on_close=lambda: self._forget(process.pid))

    def _prepare_child(self) -> None:
        """In the forked bwrap process, before exec: the resource limits and an empty session keyring."""
        self.limits.prepare_child()
        self._keyring.join()

    def _forget(self, pid: int) -> None:
        with self._lock:
            self._record.processes = [ref for ref in self._record.processes if ref.pid != pid]
            if not self.destroyed:
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

    def _destroy(self) -> None:
        """Kill every running command (each bwrap's process group; its pid namespace dies with it),
        remove the sandbox's cgroups and host directory."""
        processes = [c.process for c in self.running_commands() if isinstance(c, PipeCommand)]
        for process in processes:
            kill_process_group(process)
        for process in processes:
            try:
                process.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                pass
        self.limits.release()
        if self.egress is not None:
            self.egress.close()
        remove_tree(self.layout.host_dir)
        LIVE_SANDBOXES.pop(self.id, None)
