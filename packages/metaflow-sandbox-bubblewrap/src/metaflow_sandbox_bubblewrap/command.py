"""The `bwrap` command line and the sandbox environment, built from data (no I/O, unit-testable)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from metaflow_sandbox_core import ConfigError, NetworkPolicy

from .layout import SANDBOX_GID, SANDBOX_HOME, SANDBOX_HOSTNAME, SANDBOX_TMP, SANDBOX_UID, Bind

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


def namespace_args(network: NetworkPolicy) -> list[str]:
    """New namespaces for everything (the network too unless the policy needs the host's), an unprivileged
    user inside, and a sandbox that dies with its launcher and has no controlling terminal."""
    args = ["--unshare-all", "--unshare-user", "--unshare-pid"]
    if network is not NetworkPolicy.NONE:
        args.append("--share-net")
    args += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID), "--hostname", SANDBOX_HOSTNAME]
    return [*args, "--die-with-parent", "--new-session"]


def system_args(host: HostSystem) -> list[str]:
    """The host's system directories and selected /etc entries, read-only, plus fresh /proc and /dev."""
    args: list[str] = []
    for system_dir in host.system_dirs:
        if system_dir.symlink_target is not None:
            args += ["--symlink", system_dir.symlink_target, system_dir.path]
        else:
            args += ["--ro-bind", system_dir.path, system_dir.path]
    for entry in host.etc_entries:
        args += ["--ro-bind", entry, entry]
    return [*args, "--proc", "/proc", "--dev", "/dev"]


def bind_args(binds: Sequence[Bind]) -> list[str]:
    args: list[str] = []
    for bind in binds:
        args += ["--ro-bind" if bind.read_only else "--bind", bind.host_path, bind.sandbox_path]
    return args


def build_bwrap_argv(
    bwrap: str,
    *,
    host: HostSystem,
    network: NetworkPolicy,
    binds: Sequence[Bind],
    argv: Sequence[str],
    cwd: str,
) -> list[str]:
    """The full command line that runs `argv` in a sandbox.

    `binds` are applied in order after the system directories (private dirs first, then user mounts,
    so a mount inside /tmp lands on top of the private /tmp). The root is then made read-only.
    """
    return [
        bwrap,
        *namespace_args(network),
        *system_args(host),
        *bind_args(binds),
        "--remount-ro",
        "/",
        "--chdir",
        cwd,
        "--",
        *argv,
    ]


def build_env(spec_env: Mapping[str, str], run_env: Mapping[str, str] | None) -> dict[str, str]:
    """`BASE_ENV`, then `spec_env`, then `run_env` (later wins). Nothing comes from the host."""
    env = {**BASE_ENV, **spec_env, **(run_env or {})}
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"env[{key!r}]={value!r}: environment keys and values must be strings.")
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ConfigError(
                f"env[{key!r}]: names must be non-empty without '=' or NUL; values without NUL."
            )
    return env


def validate_argv(argv: Sequence[str]) -> list[str]:
    """`argv` as a list; `ConfigError` when it is empty or not a sequence of NUL-free strings."""
    if isinstance(argv, (str, bytes)) or not argv:
        raise ConfigError(f"argv={argv!r} must be a non-empty list of strings, e.g. ['sh', '-c', 'echo hi'].")
    for arg in argv:
        if not isinstance(arg, str) or "\0" in arg:
            raise ConfigError(f"argv item {arg!r} must be a string without NUL bytes.")
    return list(argv)
