"""Where a sandbox's files live: its private host directory and how sandbox paths map onto it."""

from __future__ import annotations

import errno
import functools
import operator
import os
import posixpath
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from metaflow_sandbox_core import ConfigError, Mount

SANDBOX_USER = "sandbox"
#: The sandbox user's ids inside a user namespace (an unprivileged launcher: they map onto the launcher's own).
SANDBOX_UID = 1000
SANDBOX_GID = 1000
#: A root launcher runs each sandbox as its own unprivileged host uid/gid from this range (not in /etc/passwd).
HOST_ID_BASE = 2_000_000_000
HOST_ID_COUNT = 1 << 20
#: ...and gives each a supplementary group, through which the files a sandbox must read (`SandboxSpec.readable`)
#: are made readable to sandboxes without widening them to other host users.
READER_GID = HOST_ID_BASE - 1
SANDBOX_HOSTNAME = "sandbox"
SANDBOX_HOME = "/home/sandbox"
SANDBOX_TMP = "/tmp"
#: The default working directory of commands.
SANDBOX_WORKDIR = "/sandbox"


@dataclass(frozen=True)
class SandboxUser:
    """Who sandboxed code runs as.

    An unprivileged launcher: bwrap makes a user namespace in which the sandbox user (1000) is the launcher's
    own uid. A root launcher: no user namespace (its uid 0 would be host root inside); bwrap sets up the
    mounts as root and `setpriv` then drops to an unprivileged host uid/gid of the sandbox's own, with no
    capabilities and no_new_privs, before any sandboxed code runs.
    """

    uid: int
    gid: int
    drop_from_root: bool

    @classmethod
    def for_sandbox(cls, sandbox_id: str) -> SandboxUser:
        if os.geteuid() != 0:
            return cls(SANDBOX_UID, SANDBOX_GID, drop_from_root=False)
        host_id = HOST_ID_BASE + int(sandbox_id[-8:], 16) % HOST_ID_COUNT
        return cls(host_id, host_id, drop_from_root=True)

    def passwd(self) -> str:
        return (
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"{SANDBOX_USER}:x:{self.uid}:{self.gid}:{SANDBOX_USER}:{SANDBOX_HOME}:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        )

    def group(self) -> str:
        return f"root:x:0:\n{SANDBOX_USER}:x:{self.gid}:\nnogroup:x:65534:\n"

    def grant_read(self, paths: Sequence[str], root_dirs: Sequence[str]) -> None:
        """Make `paths` (files of the launcher's, under one of `root_dirs`) readable to the sandbox user:
        group `READER_GID` with read access, and search access on their directories up to the root dir.
        Nothing to do when the sandbox user is the launcher (a user namespace)."""
        if not self.drop_from_root:
            return
        done: set[str] = set()
        for path in paths:
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            _grant(path, 0o040)
            directory = os.path.dirname(path)
            while directory not in done and any(_inside(directory, root) for root in root_dirs):
                done.add(directory)
                _grant(directory, 0o050)
                directory = os.path.dirname(directory)

    def give(self, path: str | int) -> None:
        """Make `path` (or an open file descriptor; created by the launcher) the sandbox user's, when that is
        another host user."""
        if not self.drop_from_root:
            return
        if isinstance(path, int):
            os.fchown(path, self.uid, self.gid)
        else:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


ACL_XATTR = "system.posix_acl_access"
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = (
    0x01,
    0x02,
    0x04,
    0x08,
    0x10,
    0x20,
)
_NO_ID = 0xFFFFFFFF


def _grant(path: str, bits: int) -> None:
    """Let the readers' group do `bits` (0o040 read, 0o050 read + search) on `path`, unless everyone may:
    a named-group entry in its POSIX ACL (owner, group and mode stay the launcher's); where the filesystem
    has no ACLs, the file's group becomes the readers' group instead."""
    info = os.lstat(path)
    if info.st_mode & (bits >> 3) == bits >> 3:
        return
    perm = bits >> 3
    try:
        current: bytes | None = os.getxattr(path, ACL_XATTR, follow_symlinks=False)
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            if info.st_gid != READER_GID:
                os.chown(path, -1, READER_GID, follow_symlinks=False)
            os.chmod(path, (info.st_mode & 0o7777 & ~0o6000) | bits)
            return
        if error.errno != errno.ENODATA:
            raise
        current = None
    entries = _acl_entries(current, info.st_mode)
    if entries.get((_ACL_GROUP, READER_GID), 0) & perm == perm:
        return
    entries[(_ACL_GROUP, READER_GID)] = entries.get((_ACL_GROUP, READER_GID), 0) | perm
    entries[(_ACL_MASK, _NO_ID)] = 0
    entries[(_ACL_MASK, _NO_ID)] = functools.reduce(
        operator.or_,
        (p for (tag, _), p in entries.items() if tag in (_ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP)),
        0,
    )
    packed = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, permission, ident) for (tag, ident), permission in sorted(entries.items())
    )
    os.setxattr(path, ACL_XATTR, packed, follow_symlinks=False)


def _acl_entries(packed: bytes | None, mode: int) -> dict[tuple[int, int], int]:
    """(tag, id) → permission of an access ACL (as the kernel stores it), or the mode's minimal ACL."""
    if not packed:
        return {
            (_ACL_USER_OBJ, _NO_ID): (mode >> 6) & 7,
            (_ACL_GROUP_OBJ, _NO_ID): (mode >> 3) & 7,
            (_ACL_OTHER, _NO_ID): mode & 7,
        }
    return {(tag, ident): permission for tag, permission, ident in struct.iter_unpack("<HHI", packed[4:])}


#: The sandbox user of an unprivileged launcher (what tests of the argv shape use).
NAMESPACED_USER = SandboxUser(SANDBOX_UID, SANDBOX_GID, drop_from_root=False)


@dataclass(frozen=True)
class Bind:
    """A host path visible at `sandbox_path`."""

    host_path: str
    sandbox_path: str
    read_only: bool


@dataclass(frozen=True)
class SandboxLayout:
    """The private host directory of one sandbox.

    `tmp/`, `home/` and `work/` back the sandbox's writable `/tmp`, `/home/sandbox` and `/sandbox`;
    `etc/` holds the synthesized `passwd` and `group`; `sandbox.json` is the sandbox's record.
    """

    host_dir: str

    @property
    def record_file(self) -> str:
        return os.path.join(self.host_dir, "sandbox.json")

    @property
    def passwd_file(self) -> str:
        return os.path.join(self.host_dir, "etc", "passwd")

    @property
    def group_file(self) -> str:
        return os.path.join(self.host_dir, "etc", "group")

    def private_binds(self) -> tuple[Bind, ...]:
        """The sandbox's own writable directories."""
        return (
            Bind(os.path.join(self.host_dir, "tmp"), SANDBOX_TMP, read_only=False),
            Bind(os.path.join(self.host_dir, "home"), SANDBOX_HOME, read_only=False),
            Bind(os.path.join(self.host_dir, "work"), SANDBOX_WORKDIR, read_only=False),
        )

    def identity_binds(self) -> tuple[Bind, ...]:
        """The synthesized `/etc/passwd` and `/etc/group`."""
        return (
            Bind(self.passwd_file, "/etc/passwd", read_only=True),
            Bind(self.group_file, "/etc/group", read_only=True),
        )

    def create(self, user: SandboxUser = NAMESPACED_USER) -> None:
        """Make the directory tree (private to the caller; the writable directories the sandbox user's) and
        write the identity files."""
        os.mkdir(self.host_dir, 0o700)
        os.mkdir(os.path.join(self.host_dir, "etc"), 0o755)
        for bind in self.private_binds():
            os.mkdir(bind.host_path, 0o700 if user.drop_from_root else 0o755)
            user.give(bind.host_path)
        for path, text in ((self.passwd_file, user.passwd()), (self.group_file, user.group())):
            with open(path, "w", encoding="utf-8") as file:
                file.write(text)


def mount_binds(mounts: Sequence[Mount]) -> tuple[Bind, ...]:
    """`SandboxSpec.mounts` as binds."""
    return tuple(Bind(m.host_path, posixpath.normpath(m.sandbox_path), m.read_only) for m in mounts)


def host_path_for(sandbox_path: str, binds: Sequence[Bind], *, for_write: bool) -> str:
    """The host file behind `sandbox_path`; `ConfigError` unless it lies in one of `binds`.

    The innermost bind wins (a mount inside `/tmp` shadows the private `/tmp`). Symlinks are resolved
    on the host and must stay inside the bind, so a link planted by sandboxed code cannot reach host files.
    """
    if not sandbox_path.startswith("/"):
        raise ConfigError(f"Sandbox path {sandbox_path!r} must be absolute.")
    path = posixpath.normpath(sandbox_path)
    matches = [
        b for b in binds if path == b.sandbox_path or path.startswith(b.sandbox_path.rstrip("/") + "/")
    ]
    if not matches:
        places = ", ".join(sorted({b.sandbox_path for b in binds}))
        raise ConfigError(
            f"{sandbox_path!r} is not in a directory this backend can reach from the host; use a path under {places}."
        )
    bind = max(matches, key=lambda b: len(b.sandbox_path))
    if for_write and bind.read_only:
        raise ConfigError(f"{sandbox_path!r} is on the read-only mount {bind.sandbox_path!r}.")
    relative = posixpath.relpath(path, bind.sandbox_path)
    host_path = bind.host_path if relative == "." else os.path.join(bind.host_path, relative)
    base = os.path.realpath(bind.host_path)
    resolved = os.path.realpath(host_path)
    if resolved != base and not resolved.startswith(base.rstrip("/") + "/"):
        raise ConfigError(f"{sandbox_path!r} resolves through a symlink to outside {bind.sandbox_path!r}.")
    return resolved
