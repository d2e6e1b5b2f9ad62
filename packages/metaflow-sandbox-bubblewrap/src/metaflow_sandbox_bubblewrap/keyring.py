"""A fresh session keyring for each sandbox process tree.

bwrap keeps the caller's session keyring, and a process possesses every key its session keyring holds
(Kerberos caches, `keyctl` tokens, ...). Each bwrap process joins a new, empty, anonymous session keyring
before it execs, so nothing in the sandbox possesses the launcher's keys.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

from metaflow_sandbox_core import UnavailableError

#: keyctl(2)'s system call number per machine (the C library has no wrapper).
KEYCTL_SYSCALL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "i686": 288, "i386": 288}
KEYCTL_JOIN_SESSION_KEYRING = 1


class FreshKeyring:
    """Call in the forked child, before exec: plain system calls only."""

    def __init__(self) -> None:
        machine = platform.machine()
        number = KEYCTL_SYSCALL.get(machine)
        if number is None:
            raise UnavailableError(
                f"the bubblewrap backend cannot give sandboxes a fresh session keyring on {machine}; "
                "use another backend here.",
                retryable=False,
            )
        self._number = number
        self._syscall = ctypes.CDLL(None, use_errno=True).syscall

    def join(self) -> None:
        if self._syscall(self._number, KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
            error = ctypes.get_errno()
            if error != errno.ENOSYS:  # a kernel without keys has nothing to leak
                raise OSError(error, f"joining a new session keyring: {os.strerror(error)}")
