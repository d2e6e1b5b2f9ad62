"""The `bwrap` command line and the sandbox environment, built from data (no I/O, unit-testable)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from metaflow_sandbox_core import NetworkPolicy

from .layout import (
    NAMESPACED_USER,
    READER_GID,
    SANDBOX_HOME,
    SANDBOX_HOSTNAME,
    SANDBOX_TMP,
    Bind,
    SandboxUser,
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: The only variables a command gets besides the ones it is given.
BASE_ENV = {"PATH": DEFAULT_PATH, "HOME": SANDBOX_HOME, "LANG": "C.UTF-8", "TMPDIR": SANDBOX_TMP}


@dataclass(frozen=True)
class SystemDir:
    """A top-level host system directory; recreated as a symlink when it is one (merged /usr)."""

    path: str
    symlink_target: str | None = None


@dataclass(frozen=True)
class HostSystem:
    """The parts of the host made visible read-only: system directories and selected /etc entries."""

    system_dirs: tuple[SystemDir, ...]
    etc_entries: tuple[str, ...]


#: Where `setpriv` (util-linux) is, on the host and so inside the sandbox (the host's /usr is bound read-only).
SETPRIV = "/usr/bin/setpriv"


def namespace_args(network: NetworkPolicy, user: SandboxUser = NAMESPACED_USER) -> list[str]:
    """New namespaces for everything (the network too unless the policy is FULL) and a sandbox that
    dies with its launcher and has no controlling terminal. An unprivileged launcher adds a user namespace
    with the sandbox user inside; a root launcher makes none (see `SandboxUser`) and drops privileges instead
    (`privilege_drop`)."""
    if user.drop_from_root:
        args = ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        if network is not NetworkPolicy.FULL:  # DATASTORE: an empty netns too, egress goes via the proxy
            args.append("--unshare-net")
    else:
        args = ["--unshare-all", "--unshare-user", "--unshare-pid"]
        if network is NetworkPolicy.FULL:
            args.append("--share-net")
        args += ["--uid", str(user.uid), "--gid", str(user.gid)]
    return [*args, "--hostname", SANDBOX_HOSTNAME, "--die-with-parent", "--new-session"]


def privilege_drop(user: SandboxUser) -> list[str]:
    """The argv prefix that turns a root launcher's sandbox process into the sandbox's unprivileged host user:
    only the readers' group as a supplementary group, no capabilities (none inheritable, an empty bounding set), no_new_privs (setuid
    binaries in the sandbox gain nothing)."""
    if not user.drop_from_root:
        return []
    return [
        SETPRIV,
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        f"--groups={READER_GID}",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


def _parent_dirs(path: str, made: set[str]) -> list[str]:
    """`--dir` operations (mode 0755) for the missing ancestors of `path`: bwrap would otherwise create them
    0700 and owned by the launcher, which a root launcher's sandbox user cannot enter."""
    args: list[str] = []
    parts = path.strip("/").split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        ancestor = "/" + "/".join(parts[:depth])
        if ancestor not in made:
            made.add(ancestor)
            args += ["--perms", "0755", "--dir", ancestor]
    return args


def system_args(host: HostSystem, made: set[str] | None = None) -> list[str]:
    """The host's system directories and selected /etc entries, read-only, plus fresh /proc (its kernel
    settings under /proc/sys read-only, whoever the sandbox user is), /dev and /dev/shm. `made` collects the
    directories that exist in the sandbox afterwards."""
    made = set() if made is None else made
    args: list[str] = []
    for system_dir in host.system_dirs:
        if system_dir.symlink_target is not None:
            args += ["--symlink", system_dir.symlink_target, system_dir.path]
        else:
            args += ["--ro-bind", system_dir.path, system_dir.path]
        made.add(system_dir.path)
    for entry in host.etc_entries:
        args += [*_parent_dirs(entry, made), "--ro-bind", entry, entry]
        made.add(entry)
    made.update(("/proc", "/proc/sys", "/dev", "/dev/shm"))
    proc = ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys"]
    # A private /dev/shm that any sandbox user can write (multiprocessing's semaphores live there).
    return [*args, *proc, "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm"]


def bind_args(binds: Sequence[Bind], made: set[str] | None = None) -> list[str]:
    made = set() if made is None else made
    args: list[str] = []
    for bind in binds:
        args += _parent_dirs(bind.sandbox_path, made)
        args += ["--ro-bind" if bind.read_only else "--bind", bind.host_path, bind.sandbox_path]
        made.add(bind.sandbox_path)
    return args


def build_bwrap_argv(
    bwrap: str,
    *,
    host: HostSystem,
    network: NetworkPolicy,
    binds: Sequence[Bind],
    argv: Sequence[str],
    cwd: str,
    user: SandboxUser = NAMESPACED_USER,
    seccomp_fd: int | None = None,
) -> list[str]:
    """The full command line that runs `argv` in a sandbox (under the seccomp filter bwrap reads from
    `seccomp_fd`, when given; see `seccomp.py`).

    `binds` are applied in order after the system directories (private dirs first, then user mounts,
    so a mount inside /tmp lands on top of the private /tmp). The root is then made read-only.
    """
    made: set[str] = set()
    return [
        bwrap,
        *namespace_args(network, user),
        *system_args(host, made),
        *bind_args(binds, made),
        "--remount-ro",
        "/",
        "--chdir",
        cwd,
        *([] if seccomp_fd is None else ["--seccomp", str(seccomp_fd)]),
        "--",
        *privilege_drop(user),
        *argv,
    ]
