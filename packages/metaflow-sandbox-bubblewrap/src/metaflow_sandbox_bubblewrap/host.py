"""What of the host system a sandbox sees: found once per process."""

from __future__ import annotations

import functools
import os

from .command import HostSystem, SystemDir

#: Top-level directories holding programs and libraries (never the whole of /).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")

#: /etc entries programs need to run, resolve names and verify TLS. Never shadow, gshadow, sudoers,
#: ssh keys and the like; /etc/passwd and /etc/group are synthesized per sandbox.
ETC_ENTRIES = (
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/pki",
    "/etc/ssl",
    "/etc/crypto-policies",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/nsswitch.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/mime.types",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/os-release",
)


@functools.lru_cache(maxsize=1)
def detect_host_system() -> HostSystem:
    """The system directories and /etc entries present on this host."""
    system_dirs = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            if os.path.isdir(path):  # e.g. /bin -> usr/bin on merged-/usr systems
                system_dirs.append(SystemDir(path, os.readlink(path)))
        elif os.path.isdir(path):
            system_dirs.append(SystemDir(path))
    etc_entries = tuple(path for path in ETC_ENTRIES if os.path.exists(path))  # follows links; skips dangling
    return HostSystem(tuple(system_dirs), etc_entries)
