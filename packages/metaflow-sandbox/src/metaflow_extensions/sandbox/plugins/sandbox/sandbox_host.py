"""The warm sandbox host: one long-lived process per user, machine and environment that runs sandboxed tasks.

`python -m metaflow_extensions.sandbox.plugins.sandbox.sandbox_host --socket PATH` (started on demand by the
first task's thin client). It owns warm backend instances (SDK clients imported once), runs each task's
executor on a thread, streams the task's output back in order, destroys a task's sandbox when its client
disappears (a SIGKILLed run included), replaces itself when a client brings other code, destroys cloud
sandboxes a dead host left behind, and exits after an idle period.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import stat
import sys
import threading
import time
import traceback

from metaflow_sandbox_core import Backend, housekeeping, load_backend

from . import host_protocol as wire
from .host_client import EXIT_INFRASTRUCTURE, IDLE_ENV
from .host_identity import code_fingerprint, host_alive, host_label
from .warm_pool import WarmPool

DEFAULT_IDLE = 600.0
HOST_LABEL = "metaflow-sandbox.host"


class SandboxHost:
    """Accepts tasks on a unix socket that only this user can reach."""

    def __init__(self, path: str, idle_seconds: float):
        self.path = path
        self.idle_seconds = idle_seconds
        self.code = code_fingerprint()
        self.label = host_label()
        self._backends: dict[str, Backend] = {}
        self._backends_lock = threading.Lock()
        self._tasks = 0
        self._tasks_lock = threading.Lock()
        self._last_active = time.monotonic()
        self._retired = threading.Event()
        self._listener: socket.socket | None = None
        self._socket_inode = -1
        #: Sandboxes prepared ahead for the foreach splits still to come.
        self.warm_pool = WarmPool(self._log)

    # -- lifetime -------------------------------------------------------------------------------------

    def serve(self) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.lstat(directory)
        if info.st_uid != os.getuid() or not stat.S_ISDIR(info.st_mode):
            raise SystemExit(f"{directory} is not a directory of this user's; refusing to serve there")
        os.chmod(directory, 0o700)
        with open(self.path + ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # another host is starting on this socket; the client will reach that one
            if _answers(self.path):
                return
            if os.path.lexists(self.path):
                os.unlink(self.path)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.path)
            os.chmod(self.path, 0o600)
            self._socket_inode = os.stat(self.path).st_ino
            listener.listen(128)
            listener.settimeout(0.5)
            self._listener = listener
            self._log(f"serving on {self.path} (code {self.code})")
            try:
                self._accept_until_idle(listener)
            finally:
                self.warm_pool.close()
                housekeeping.drain()  # the removals queued after tasks' results

    def _accept_until_idle(self, listener: socket.socket) -> None:
        while True:
            with self._tasks_lock:
                idle = self._tasks == 0 and time.monotonic() - self._last_active > self.idle_seconds
                if (idle or self._retired.is_set()) and self._tasks == 0:
                    break
            self.warm_pool.expire()
            if self._retired.is_set():
                time.sleep(0.1)
                continue
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._retired.is_set():
                    continue
                raise
            conn.settimeout(None)
            with self._tasks_lock:
                self._tasks += 1
                self._last_active = time.monotonic()
            threading.Thread(target=self._serve_task, args=(conn,), daemon=True).start()
        self._release_socket()
        self._log("exiting")

    def _retire(self) -> None:
        """Stop taking tasks (a client brought other code) and free the socket for the new host."""
        if not self._retired.is_set():
            self._retired.set()
            self._release_socket()
            self._log("retired: a client runs other code")

    def _release_socket(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        try:
            if os.stat(self.path).st_ino == self._socket_inode:  # not a newer host's socket
                os.unlink(self.path)
        except OSError:
            pass
        listener.close()

    # -- one task -------------------------------------------------------------------------------------

    def _serve_task(self, conn: socket.socket) -> None:
        try:
            kind, payload = wire.receive(conn)
            hello = wire.Hello.decode(payload) if kind == wire.HELLO else None
            if (
                hello is None
                or hello.protocol != wire.PROTOCOL
                or hello.code != self.code
                or self._retired.is_set()
            ):
                wire.send(conn, wire.STALE, self.code)
                self._retire()
                return
            wire.send(conn, wire.ACCEPT, self.code)
            try:
                code = self._run_task(conn, hello)
            except Exception as error:  # a bug or a broken task file: the task fails, the host goes on
                self._log(f"task {hello.argv[:4]} failed in the host: {error!r}\n{traceback.format_exc()}")
                message = f"[sandbox] The sandbox host could not run the task: {error}\n".encode()
                wire.send(conn, wire.ERR, message)
                code = EXIT_INFRASTRUCTURE
            wire.send(conn, wire.EXIT, code)
        except (OSError, wire.ConnectionClosed) as error:
            self._log(f"lost a client: {error!r}")
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # also wakes the thread reading the client's signals
            except OSError:
                pass
            conn.close()
            with self._tasks_lock:
                self._tasks -= 1
                self._last_active = time.monotonic()

    def _run_task(self, conn: socket.socket, hello: wire.Hello) -> int:
        from .executor import TaskExecutor, load_task

        send_lock = threading.Lock()
        client_gone = threading.Event()

        def send(kind: bytes, data: bytes) -> None:
            if client_gone.is_set():
                return
            try:
                with send_lock:
                    wire.send(conn, kind, data)
            except OSError:
                client_gone.set()

        launch, command = load_task(hello.argv)
        executor = TaskExecutor(
            launch,
            command,
            cwd=hello.cwd or os.getcwd(),
            say=lambda message: send(wire.ERR, f"[sandbox] {message}\n".encode()),
            output=lambda stream, line: send(wire.OUT if stream == "stdout" else wire.ERR, line),
            backends=self._backend,
            extra_labels={HOST_LABEL: self.label},
            warm_pool=self.warm_pool,
        )

        def listen() -> None:
            """Signals from the client; its disappearance (EOF) counts as SIGKILL: destroy the sandbox."""
            try:
                while True:
                    kind, payload = wire.receive(conn)
                    if kind == wire.SIGNAL:
                        executor.interrupt(wire.number(payload, 15))
            except (OSError, wire.ConnectionClosed, ValueError):
                client_gone.set()
                executor.interrupt(9)

        threading.Thread(target=listen, daemon=True).start()
        return executor.run(install_signal_handlers=False)

    def _backend(self, name: str) -> Backend:
        """One warm instance per backend; the first use also destroys sandboxes a dead host left behind."""
        with self._backends_lock:
            backend = self._backends.get(name)
            if backend is None:
                backend = self._backends[name] = load_backend(name)
                threading.Thread(target=self._sweep_orphans, args=(backend,), daemon=True).start()
            return backend

    def _sweep_orphans(self, backend: Backend) -> None:
        try:
            for info in backend.list():
                owner = info.labels.get(HOST_LABEL)
                if owner and not host_alive(owner):
                    self._log(f"destroying {backend.name} sandbox {info.id} of a host that is gone ({owner})")
                    backend.destroy(info.id)
        except Exception as error:  # a backend that cannot be listed here: nothing to sweep
            self._log(f"could not look for {backend.name} sandboxes of dead hosts: {error}")

    def _log(self, message: str) -> None:
        sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [host {os.getpid()}] {message}\n")
        sys.stderr.flush()


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sandbox_host")
    parser.add_argument("--socket", required=True)
    args = parser.parse_args(argv)
    idle = float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE)
    SandboxHost(os.path.abspath(args.socket), idle).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
