"""Unit tests of the pure bwrap argv / environment builder (no bwrap needed)."""

from __future__ import annotations

import os

from metaflow_sandbox_bubblewrap.command import (
    BASE_ENV,
    HostSystem,
    SystemDir,
    build_bwrap_argv,
)
from metaflow_sandbox_bubblewrap.layout import Bind, SandboxLayout, SandboxUser, mount_binds
from metaflow_sandbox_core import Mount, NetworkPolicy

HOST = HostSystem(
    system_dirs=(SystemDir("/usr"), SystemDir("/bin", "usr/bin"), SystemDir("/lib64")),
    etc_entries=("/etc/ssl", "/etc/resolv.conf"),
)
LAYOUT = SandboxLayout("/state/bwrap-0123456789abcdef")


def build(
    network: NetworkPolicy = NetworkPolicy.NONE, mounts: tuple[Mount, ...] = (), cwd: str = "/sandbox"
) -> list[str]:
    binds = (*LAYOUT.identity_binds(), *LAYOUT.private_binds(), *mount_binds(mounts))
    return build_bwrap_argv(
        "/usr/bin/bwrap", host=HOST, network=network, binds=binds, argv=["sh", "-c", "echo hi"], cwd=cwd
    )


def test_root_launcher_drops_to_an_unprivileged_host_user() -> None:
    """No user namespace (its uid 0 would be host root inside): setpriv drops to the sandbox's own host uid."""
    user = SandboxUser.for_sandbox("bwrap-00000000000000ff") if os.geteuid() == 0 else None
    user = user or SandboxUser(2_000_000_255, 2_000_000_255, drop_from_root=True)
    binds = (*LAYOUT.identity_binds(), *LAYOUT.private_binds())
    argv = build_bwrap_argv(
        "/usr/bin/bwrap", host=HOST, network=NetworkPolicy.NONE, binds=binds, argv=["id"], cwd="/", user=user
    )
    assert "--unshare-user" not in argv and "--uid" not in argv
    assert "--unshare-net" in argv and "--unshare-pid" in argv
    assert argv[argv.index("--") + 1 :] == [
        "/usr/bin/setpriv", "--reuid=2000000255", "--regid=2000000255", "--groups=1999999999",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", "id",
    ]  # fmt: skip
    shared = build_bwrap_argv(
        "/usr/bin/bwrap", host=HOST, network=NetworkPolicy.FULL, binds=binds, argv=["id"], cwd="/", user=user
    )
    assert "--unshare-net" not in shared and "--share-net" not in shared


def pairs(argv: list[str], flag: str, arity: int = 2) -> list[tuple[str, ...]]:
    """Every occurrence of `flag` with its `arity` arguments."""
    return [tuple(argv[i + 1 : i + 1 + arity]) for i, arg in enumerate(argv) if arg == flag]


def test_exact_shape() -> None:
    assert build() == [
        "/usr/bin/bwrap",
        "--unshare-all", "--unshare-user", "--unshare-pid",
        "--uid", "1000", "--gid", "1000", "--hostname", "sandbox",
        "--die-with-parent", "--new-session",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin",
        "--ro-bind", "/lib64", "/lib64",
        "--perms", "0755", "--dir", "/etc",
        "--ro-bind", "/etc/ssl", "/etc/ssl",
        "--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf",
        "--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys",
        "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm",
        "--ro-bind", f"{LAYOUT.host_dir}/etc/passwd", "/etc/passwd",
        "--ro-bind", f"{LAYOUT.host_dir}/etc/group", "/etc/group",
        "--bind", f"{LAYOUT.host_dir}/tmp", "/tmp",
        "--perms", "0755", "--dir", "/home",
        "--bind", f"{LAYOUT.host_dir}/home", "/home/sandbox",
        "--bind", f"{LAYOUT.host_dir}/work", "/sandbox",
        "--remount-ro", "/",
        "--chdir", "/sandbox",
        "--", "sh", "-c", "echo hi",
    ]  # fmt: skip


def test_network_none_unshares_everything() -> None:
    argv = build(NetworkPolicy.NONE)
    assert "--unshare-all" in argv
    assert "--share-net" not in argv


def test_network_shared_only_for_full() -> None:
    argv = build(NetworkPolicy.FULL)
    assert argv.index("--share-net") > argv.index("--unshare-all")
    assert "--share-net" not in build(NetworkPolicy.DATASTORE)  # filtered egress: an empty netns + the proxy


def test_never_binds_whole_root_or_shadow() -> None:
    argv = build()
    sources = [source for source, _ in pairs(argv, "--ro-bind") + pairs(argv, "--bind")]
    assert "/" not in sources
    assert not [s for s in sources if "shadow" in s or s in ("/etc", "/root", "/home")]


def test_mounts_follow_private_dirs_and_keep_read_only_flag() -> None:
    argv = build(
        mounts=(Mount("/data/ro", "/tmp/in", read_only=True), Mount("/data/rw", "/out", read_only=False))
    )
    assert ("/data/ro", "/tmp/in") in pairs(argv, "--ro-bind")
    assert ("/data/rw", "/out") in pairs(argv, "--bind")
    private_tmp = argv.index(f"{LAYOUT.host_dir}/tmp")
    assert argv.index("/data/ro") > private_tmp, "a mount inside /tmp must come after the private /tmp"
    assert argv.index("/data/rw") < argv.index("--remount-ro")


def test_command_follows_separator_and_cwd() -> None:
    argv = build(cwd="/tmp/work")
    assert pairs(argv, "--chdir", 1) == [("/tmp/work",)]
    assert argv[argv.index("--") + 1 :] == ["sh", "-c", "echo hi"]


def test_base_env_is_minimal() -> None:
    """Under the checked spec + run environment (`Sandbox.run` merges and checks it; core's tests)."""
    assert set(BASE_ENV) == {"PATH", "HOME", "LANG", "TMPDIR"}


def test_bind_of_layout_is_private() -> None:
    assert [b.sandbox_path for b in LAYOUT.private_binds()] == ["/tmp", "/home/sandbox", "/sandbox"]
    assert all(isinstance(b, Bind) and not b.read_only for b in LAYOUT.private_binds())
