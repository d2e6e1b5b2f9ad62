"""Which sandbox host serves a task: its socket (per user, machine and environment) and its code fingerprint.

Both are computed once per run by the Metaflow runtime and handed to each task's thin client; the host
computes its own code fingerprint when it starts, and a client with another one replaces it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import sys

from metaflow_sandbox_core import default_state_dir

from .host_protocol import PROTOCOL

HOST_DIR_ENV = "METAFLOW_SANDBOX_HOST_DIR"
#: Set per task or per run by the runtime or this extension, or by the shell as it moves about: not part of
#: the host's identity (everything else is: a backend may read any variable).
VOLATILE_ENV = frozenset(
    {
        "METAFLOW_RUN_ID",
        "PYTHONUNBUFFERED",
        "TRACEPARENT",
        "TRACESTATE",
        "METAFLOW_SANDBOX_HOST_SOCKET",
        "METAFLOW_SANDBOX_HOST_CODE",
        "METAFLOW_SANDBOX_HOST_IDLE",
        "METAFLOW_SANDBOX_VALIDATED",  # the runtime's pid (decorators.VALIDATED_ENV)
        *("_", "PWD", "OLDPWD", "SHLVL", "COLUMNS", "LINES", "PS1", "PS2", "PROMPT_COMMAND"),
        *("TERM_SESSION_ID", "WINDOWID", "SSH_TTY", "SSH_CLIENT", "SSH_CONNECTION"),
    }
)
PACKAGES = (
    "metaflow_sandbox_core",
    "metaflow_sandbox_runtime",
    "metaflow_sandbox_relay",
    "metaflow_sandbox_bubblewrap",
    "metaflow_sandbox_daytona",
    "metaflow_sandbox_boxlite",
    "metaflow_sandbox_e2b",
)


def code_fingerprint() -> str:
    """A digest of the extension's and the sandbox packages' source files (path, size, mtime): an upgrade
    or an edited checkout changes it."""
    roots = [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots += list(spec.submodule_search_locations)
    digest = hashlib.sha1()
    for root in sorted(roots):
        for directory, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".py"):
                    info = os.stat(os.path.join(directory, name))
                    digest.update(f"{directory}/{name}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def environment_fingerprint(environ: dict[str, str] | None = None) -> str:
    environ = dict(os.environ if environ is None else environ)
    digest = hashlib.sha1(sys.executable.encode() + b"\0")
    for key in sorted(set(environ) - VOLATILE_ENV):
        digest.update(f"{key}={environ[key]}\0".encode())
    return digest.hexdigest()[:16]


def host_socket(environ: dict[str, str] | None = None) -> str:
    """The socket of the host for this user, machine, Python, environment and wire protocol (in a 0700
    directory)."""
    directory = default_state_dir("host", HOST_DIR_ENV)
    return os.path.join(directory, f"{environment_fingerprint(environ)}-p{PROTOCOL}.sock")


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), so a reused pid is not mistaken for it; None where
    /proc is not available (then the pid alone is checked)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else fields[19].decode()


def host_label() -> str:
    """The label value that marks a sandbox as this host process's (machine, pid, start time)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid()) or ''}"


def host_alive(label: str) -> bool:
    """Whether the host process a label names still runs (a label of another machine counts as alive)."""
    machine, _, rest = label.partition(":")
    pid_text, _, start = rest.partition(":")
    if machine != socket.gethostname():
        return True
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return not start or _start_time(pid) == start
