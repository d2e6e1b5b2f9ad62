"""Runs a flow command for tests/test_security_escapes.py, with what the attack needs set up around it.

    python attack_wrapper.py [--keyring CANARY] [--maxrss-file PATH] -- python flow.py run ...

--keyring CANARY   join a fresh session keyring and add a "user" key named and holding CANARY; the flow run
                   (and every launcher it starts) inherits that session keyring, as a user's shell would
--maxrss-file PATH after the run, write the peak resident set size (KiB) of the largest process of the
                   whole run tree (the runtime, each task's launcher, ...) to PATH

Exits with the flow run's exit code.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import subprocess
import sys

SYS_ADD_KEY = 248  # x86_64
SYS_KEYCTL = 250
KEYCTL_JOIN_SESSION_KEYRING = 1
KEY_SPEC_SESSION_KEYRING = -3


def join_keyring_with_canary(canary: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        raise OSError(ctypes.get_errno(), "keyctl(JOIN_SESSION_KEYRING)")
    payload = canary.encode()
    key = libc.syscall(
        SYS_ADD_KEY, b"user", canary.encode(), payload, len(payload), ctypes.c_long(KEY_SPEC_SESSION_KEYRING)
    )
    if key < 0:
        raise OSError(ctypes.get_errno(), "add_key(user)")
    with open("/proc/keys") as f:
        assert canary in f.read(), "the canary key is not visible to the process that added it"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keyring")
    parser.add_argument("--maxrss-file")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.keyring:
        join_keyring_with_canary(args.keyring)
    code = subprocess.call(command)
    if args.maxrss_file:
        with open(args.maxrss_file, "w") as f:
            f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
    return code


if __name__ == "__main__":
    sys.exit(main())
