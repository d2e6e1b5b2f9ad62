"""Per-sandbox cgroups for memory and CPU limits, on cgroup v1 or v2, wherever one can be created.

A sandbox's cgroup is made as a child of this process's own cgroup or, failing that, next to it. Every
bwrap process of the sandbox joins it before exec (see `limits.SandboxLimits.prepare_child`), so the
limits cover the sandbox as a whole, not each process.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Every cgroup this package creates is named `<CGROUP_PREFIX><sandbox id>`.
CGROUP_PREFIX = "metaflow-sandbox-"
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy and this process's place in it."""

    version: int  # 1 or 2
    mount_point: str
    controllers: frozenset[str]  # v1: from the mount options; v2: what this process's cgroup offers
    own_dir: str  # this process's cgroup as a host path

    def candidate_parents(self) -> list[str]:
        """Our own cgroup, then its parent (v2 forbids children of a cgroup that has processes)."""
        parents = [self.own_dir]
        if os.path.normpath(self.own_dir) != os.path.normpath(self.mount_point):
            parents.append(os.path.dirname(self.own_dir.rstrip("/")))
        return parents


def _unescape(path: str) -> str:
    """Undo mountinfo's octal escapes (\\040 for a space)."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), path)


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount point, mount root, super options) of every cgroup mount."""
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            fields, _, tail = line.partition(" - ")
            parts, tail_parts = fields.split(), tail.split()
            if len(parts) >= 5 and len(tail_parts) >= 3 and tail_parts[0] in ("cgroup", "cgroup2"):
                mounts.append(
                    (tail_parts[0], _unescape(parts[4]), _unescape(parts[3]), set(tail_parts[2].split(",")))
                )
    return mounts


def _host_dir(mount_point: str, mount_root: str, cgroup_path: str) -> str:
    """Where cgroup `cgroup_path` of a hierarchy appears under its mount."""
    inside_root = cgroup_path == mount_root or cgroup_path.startswith(mount_root.rstrip("/") + "/")
    relative = posixpath.relpath(cgroup_path, mount_root) if inside_root else cgroup_path
    relative = "" if relative == "." else relative.lstrip("/")
    return os.path.join(mount_point, relative)


def _read_controllers(directory: str) -> frozenset[str]:
    try:
        with open(os.path.join(directory, "cgroup.controllers"), encoding="ascii") as file:
            return frozenset(file.read().split())
    except OSError:
        return frozenset()


def find_hierarchies() -> list[Hierarchy]:
    """Every cgroup hierarchy this process belongs to that is mounted here."""
    try:
        mounts = _mounts()
        with open("/proc/self/cgroup", encoding="utf-8") as cgroup_file:
            memberships = [line.rstrip("\n").split(":", 2) for line in cgroup_file if line.count(":") >= 2]
    except OSError:
        return []
    hierarchies = []
    for hierarchy_id, controller_list, path in memberships:
        if hierarchy_id == "0" and not controller_list:
            for fstype, mount_point, root, _ in mounts:
                if fstype == "cgroup2":
                    own = _host_dir(mount_point, root, path)
                    hierarchies.append(Hierarchy(2, mount_point, _read_controllers(own), own))
                    break
            continue
        wanted = {c for c in controller_list.split(",") if c and not c.startswith("name=")}
        for fstype, mount_point, root, options in mounts:
            if fstype == "cgroup" and wanted and wanted <= options:
                hierarchies.append(
                    Hierarchy(1, mount_point, frozenset(wanted), _host_dir(mount_point, root, path))
                )
                break
    return hierarchies


def _write(directory: str, name: str, value: str) -> None:
    with open(os.path.join(directory, name), "w", encoding="ascii") as file:
        file.write(value)


def _read_int(path: str, default: int) -> int:
    try:
        with open(path, encoding="ascii") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _read_key(path: str, key: str) -> int | None:
    """The number after `key` in a flat-keyed cgroup file ("oom_kill 1" lines), or None."""
    try:
        with open(path, encoding="ascii") as file:
            for line in file:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return None


def _set_limit(version: int, directory: str, controller: str, value: float) -> str:
    """Write one limit; returns the interface file that holds it."""
    if controller == "memory":
        limit, swap_file = (
            ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
            if version == 1
            else ("memory.max", "memory.swap.max")
        )
        _write(directory, limit, str(int(value)))
        try:  # no swapping past the limit either, where swap accounting exists
            _write(directory, swap_file, str(int(value)) if version == 1 else "0")
        except OSError:
            pass
        return limit
    if version == 1:
        period = _read_int(os.path.join(directory, "cpu.cfs_period_us"), CPU_PERIOD_US)
        _write(directory, "cpu.cfs_quota_us", str(max(1000, round(value * period))))
        return "cpu.cfs_quota_us"
    _write(directory, "cpu.max", f"{max(1000, round(value * CPU_PERIOD_US))} {CPU_PERIOD_US}")
    return "cpu.max"


@dataclass
class SandboxCgroup:
    """The cgroup directories of one sandbox and which limit each holds."""

    #: controller ("memory" | "cpu") → the interface file holding its limit.
    limits: dict[str, str] = field(default_factory=dict)
    #: Why a wanted controller could not be limited, by controller.
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def dirs(self) -> list[str]:
        """The distinct cgroup directories (one per v1 hierarchy; one in all on v2)."""
        return list(dict.fromkeys(os.path.dirname(path) for path in self.limits.values()))

    def join(self, pid: int) -> None:
        """Move `pid` into every directory. Safe in a pre-exec hook (plain system calls only)."""
        data = str(pid).encode()
        for directory in self.dirs:
            fd = os.open(os.path.join(directory, "cgroup.procs"), os.O_WRONLY)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def memory_exceeded(self) -> bool:
        """True when the memory limit killed a process of this cgroup: `oom_kill` of memory.events (v2) or
        memory.oom_control (v1); on v1 kernels that do not count kills (before 4.13), memory.failcnt (the
        limit was hit). False without a memory cgroup, or once it is removed."""
        limit_file = self.limits.get("memory")
        if limit_file is None:
            return False
        directory = os.path.dirname(limit_file)
        if os.path.basename(limit_file) == "memory.max":
            return bool(_read_key(os.path.join(directory, "memory.events"), "oom_kill"))
        kills = _read_key(os.path.join(directory, "memory.oom_control"), "oom_kill")
        if kills is None:
            kills = _read_int(os.path.join(directory, "memory.failcnt"), 0)
        return bool(kills)

    def remove(self) -> None:
        remove_cgroup_dirs(self.dirs)


def create_sandbox_cgroup(name: str, wanted: Mapping[str, float]) -> SandboxCgroup:
    """A cgroup `name` limiting each of `wanted` ("memory": bytes, "cpu": CPUs) where one can be made."""
    cgroup = SandboxCgroup()
    hierarchies = find_hierarchies()
    for controller, value in wanted.items():
        hierarchy = next((h for h in hierarchies if controller in h.controllers), None)
        if hierarchy is None:
            cgroup.failures[controller] = f"no mounted cgroup hierarchy offers the {controller} controller"
            continue
        errors = []
        for parent in hierarchy.candidate_parents():
            directory = os.path.join(parent, name)
            created = False
            try:
                if hierarchy.version == 2:
                    _enable_controller(parent, controller)
                if not os.path.isdir(directory):
                    os.mkdir(directory)
                    created = True
                cgroup.limits[controller] = os.path.join(
                    directory, _set_limit(hierarchy.version, directory, controller, value)
                )
                break
            except OSError as error:
                errors.append(f"{directory}: {error.strerror or error}")
                if created:
                    _rmdir(directory)
        else:
            cgroup.failures[controller] = "could not create a cgroup (" + "; ".join(errors) + ")"
    return cgroup


def _enable_controller(parent: str, controller: str) -> None:
    """Make `controller` available to children of a v2 cgroup (no-op when it already is)."""
    with open(os.path.join(parent, "cgroup.subtree_control"), encoding="ascii") as file:
        if controller in file.read().split():
            return
    _write(parent, "cgroup.subtree_control", f"+{controller}")


def _kill_members(directory: str) -> None:
    try:
        _write(directory, "cgroup.kill", "1")  # cgroup v2, Linux >= 5.14
        return
    except OSError:
        pass
    try:
        with open(os.path.join(directory, "cgroup.procs"), encoding="ascii") as file:
            pids = [int(pid) for pid in file.read().split()]
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _rmdir(directory: str, wait: float = 0.0) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() >= deadline:
                return
            time.sleep(0.02)


def find_cgroup_dirs(name: str) -> list[str]:
    """Existing cgroups called `name` wherever `create_sandbox_cgroup` could have made them."""
    return [
        os.path.join(parent, name)
        for hierarchy in find_hierarchies()
        for parent in hierarchy.candidate_parents()
        if os.path.isdir(os.path.join(parent, name))
    ]


def remove_cgroup_dirs(dirs: Iterable[str]) -> None:
    """Kill whatever is left in each sandbox cgroup and remove it. Ignores anything not made by us."""
    for directory in dirs:
        if not os.path.basename(directory).startswith(CGROUP_PREFIX):
            continue
        _kill_members(directory)
        _rmdir(directory, wait=5.0)
