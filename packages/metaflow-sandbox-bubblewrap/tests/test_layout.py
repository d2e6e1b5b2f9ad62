"""Mapping sandbox paths to host files for upload/download (no bwrap needed)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from metaflow_sandbox_bubblewrap.layout import (
    READER_GID,
    Bind,
    SandboxLayout,
    SandboxUser,
    host_path_for,
    mount_binds,
)
from metaflow_sandbox_core import ConfigError, Mount


@pytest.fixture
def layout(tmp_path: Path) -> SandboxLayout:
    layout = SandboxLayout(str(tmp_path / "box"))
    layout.create()
    return layout


@pytest.fixture
def binds(layout: SandboxLayout, tmp_path: Path) -> tuple[Bind, ...]:
    (tmp_path / "ro").mkdir()
    (tmp_path / "rw").mkdir()
    mounts = (
        Mount(str(tmp_path / "ro"), "/data/ro"),
        Mount(str(tmp_path / "rw"), "/tmp/rw", read_only=False),
    )
    return (*layout.private_binds(), *mount_binds(mounts))


@pytest.mark.parametrize(
    ("sandbox_path", "host_relative"),
    [
        ("/tmp/a.txt", "box/tmp/a.txt"),
        ("/home/sandbox/.cache/x", "box/home/.cache/x"),
        ("/sandbox/deep/er/file", "box/work/deep/er/file"),
        ("/sandbox/../tmp/./b", "box/tmp/b"),
        ("/tmp/rw/out.bin", "rw/out.bin"),  # the mount inside /tmp wins over the private /tmp
        ("/data/ro/in.csv", "ro/in.csv"),
    ],
)
def test_maps_reachable_paths(
    binds: tuple[Bind, ...], tmp_path: Path, sandbox_path: str, host_relative: str
) -> None:
    assert host_path_for(sandbox_path, binds, for_write=False) == str(tmp_path / host_relative)


@pytest.mark.parametrize(
    "sandbox_path", ["/etc/passwd", "/root/x", "/tmpfoo", "/sandbox/../etc/shadow", "relative/path"]
)
def test_rejects_paths_outside_the_binds(binds: tuple[Bind, ...], sandbox_path: str) -> None:
    with pytest.raises(ConfigError):
        host_path_for(sandbox_path, binds, for_write=False)


def test_rejects_writes_to_read_only_mounts(binds: tuple[Bind, ...]) -> None:
    assert host_path_for("/data/ro/x", binds, for_write=False)
    with pytest.raises(ConfigError, match="read-only"):
        host_path_for("/data/ro/x", binds, for_write=True)


def test_symlink_planted_inside_cannot_reach_host_files(
    binds: tuple[Bind, ...], layout: SandboxLayout, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("secret")
    os.symlink(str(secret), os.path.join(layout.host_dir, "tmp", "link"))
    os.symlink("/", os.path.join(layout.host_dir, "work", "root"))
    with pytest.raises(ConfigError, match="symlink"):
        host_path_for("/tmp/link", binds, for_write=False)
    with pytest.raises(ConfigError, match="symlink"):
        host_path_for("/sandbox/root/etc/shadow", binds, for_write=True)


def test_layout_synthesizes_passwd_without_host_accounts(layout: SandboxLayout) -> None:
    passwd = Path(layout.passwd_file).read_text()
    assert "sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/sh" in passwd
    assert Path("/etc/passwd").read_text() != passwd
    assert oct(os.stat(layout.host_dir).st_mode & 0o777) == "0o700"


def test_grant_read_adds_the_readers_group_without_changing_owner_group_or_others():
    """What a root launcher's sandbox must read (Metaflow writes 0600) becomes readable to the readers' group
    through an ACL entry; nobody else gains anything and ownership stays the launcher's."""
    base = Path(tempfile.mkdtemp(dir="/tmp"))  # parents the sandbox user can pass, as mounts make them
    base.chmod(0o755)
    try:
        root = base / "mount"
        (root / "run" / "task").mkdir(parents=True)
        secret = root / "run" / "task" / "0.data.json"
        secret.write_text("{}")
        secret.chmod(0o600)
        (root / "run").chmod(0o700)
        before = secret.stat()
        SandboxUser(2_000_000_001, 2_000_000_001, drop_from_root=True).grant_read([str(secret)], [str(root)])
        after = secret.stat()
        assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
        assert not stat.S_IMODE(after.st_mode) & 0o007  # others: still nothing
        if os.geteuid() == 0:  # read it as a sandbox user would, with and without the group
            as_user = ["setpriv", "--reuid=2000000001", "--regid=2000000001"]
            script = ["sh", "-c", f"cat {secret} && echo READ"]
            allowed = subprocess.run(
                [*as_user, f"--groups={READER_GID}", *script], capture_output=True, text=True
            )
            denied = subprocess.run([*as_user, "--clear-groups", *script], capture_output=True, text=True)
            assert allowed.stdout.endswith("READ\n"), allowed.stderr
            assert "READ" not in denied.stdout
    finally:
        shutil.rmtree(base)
