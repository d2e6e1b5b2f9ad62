"""The thin client the Metaflow runtime spawns per sandboxed task when the warm host is on (standard library only).

`entrypoint() + [argv of flow.py]`: hands the task to the user's sandbox host (starting one if none answers),
writes the task's output to its own stdout/stderr unchanged, forwards SIGINT/SIGTERM/SIGHUP, and exits with the
step's code.

Every task pays this process's start, so it starts without `site` (only the extension's own directory is put on
its path) and imports C modules where their Python wrappers cost more than they give (`_socket`, `_signal`:
`socket` and `signal` import `enum` and `selectors`).
"""

from __future__ import annotations

import os
import sys
import time
from _signal import SIGHUP, SIGINT, SIGTERM, signal
from _socket import AF_UNIX, SOCK_STREAM, socket

from . import host_protocol as wire

TYPE_CHECKING = False  # not `typing`: every task pays this module's imports

if TYPE_CHECKING:
    import subprocess

SOCKET_ENV = "METAFLOW_SANDBOX_HOST_SOCKET"
CODE_ENV = "METAFLOW_SANDBOX_HOST_CODE"
IDLE_ENV = "METAFLOW_SANDBOX_HOST_IDLE"
MODULE = "metaflow_extensions.sandbox.plugins.sandbox.host_client"
HOST_MODULE = "metaflow_extensions.sandbox.plugins.sandbox.sandbox_host"
START_TIMEOUT = 60.0
HANDSHAKE_TIMEOUT = 15.0
EXIT_INFRASTRUCTURE = 202


def _say(message: str) -> None:
    sys.stderr.write(f"[sandbox] {message}\n")
    sys.stderr.flush()


def entrypoint() -> list[str]:
    """The command line that starts the thin client (the runtime appends the task's argv)."""
    root = os.path.abspath(__file__)
    for _ in MODULE.split("."):  # up to the directory that holds `metaflow_extensions`
        root = os.path.dirname(root)
    start = (
        f"import sys; sys.path.insert(0, {root!r}); from {MODULE} import main; sys.exit(main(sys.argv[1:]))"
    )
    return [sys.executable, "-S", "-c", start]


def _connect(path: str) -> socket | None:
    sock = socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def _start_host(path: str) -> subprocess.Popen[bytes]:
    """Start a host on `path` in its own session (it outlives this task); it logs next to its socket."""
    import subprocess  # only here: most tasks find a host running, and every import is paid per task

    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    with open(path + ".log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", HOST_MODULE, "--socket", path],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )


def _handed_over(path: str, hello: wire.Hello) -> socket:
    """A connection whose host accepted the task: a running host, else a new one (replacing a stale one)."""
    deadline = time.monotonic() + START_TIMEOUT
    host: subprocess.Popen[bytes] | None = None
    while time.monotonic() < deadline:
        sock = _connect(path)
        if sock is None:
            # None started, or the one started gave way (another host held the lock, e.g. one that was
            # exiting when we came): start one.
            if host is None or host.poll() is not None:
                host = _start_host(path)
            time.sleep(0.02)
            continue
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT)  # a host that took the connection but never answers: retry
            wire.send(sock, wire.HELLO, hello.encode())
            kind, _ = wire.receive(sock)
            sock.settimeout(None)
        except (OSError, wire.ConnectionClosed):
            sock.close()
            time.sleep(0.05)
            continue
        if kind == wire.ACCEPT:
            return sock
        sock.close()  # STALE: that host retires and frees the socket; the next round starts the current one
        time.sleep(0.05)
    raise OSError(f"no sandbox host answered on {path} within {START_TIMEOUT:.0f} s (see {path}.log)")


def main(argv: list[str]) -> int:
    path, code = os.environ.get(SOCKET_ENV), os.environ.get(CODE_ENV, "")
    if not path:
        _say(f"{SOCKET_ENV} is not set; the runtime sets it when it hands tasks to the sandbox host.")
        return EXIT_INFRASTRUCTURE
    hello = wire.Hello(code, os.getcwd(), argv)
    try:
        sock = _handed_over(path, hello)
    except OSError as error:
        _say(f"Sandbox infrastructure failure: {error}")
        return EXIT_INFRASTRUCTURE

    def forward(signum: int, _frame: object) -> None:
        try:
            wire.send(sock, wire.SIGNAL, signum)
        except OSError:
            pass

    for signum in (SIGINT, SIGTERM, SIGHUP):
        signal(signum, forward)
    streams = {wire.OUT: sys.stdout.buffer, wire.ERR: sys.stderr.buffer}
    try:
        while True:
            kind, payload = wire.receive(sock)
            if kind == wire.EXIT:
                return wire.number(payload, EXIT_INFRASTRUCTURE)
            stream = streams.get(kind)
            if stream is not None:
                stream.write(payload)
                stream.flush()
    except (OSError, wire.ConnectionClosed):
        _say("The sandbox host went away before the task ended; its sandbox was destroyed with it.")
        return EXIT_INFRASTRUCTURE
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
