"""`EmulatorProcess`: an emulator server run as a child process and driven from tests (standard library only).

The Daytona and E2B emulators are each a module run with `python -m <module> --port N ...` that prints its URL
on the first line of its output and serves until SIGTERM. This base starts one, waits for that line, stops it,
and talks to its admin API under `/_emulator/` (faults, stats, live sandboxes, kill).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

_P = TypeVar("_P", bound="EmulatorProcess")


def _die_with_parent(prctl: Callable[[int, int], int]) -> Callable[[], None]:
    """For the child, before exec: receive SIGTERM when the process that started the emulator dies."""

    def arm() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return arm


def preexec() -> Callable[[], None] | None:
    """What a child runs before exec so that it gets SIGTERM when its parent dies (Linux), or None."""
    if sys.platform != "linux":
        return None
    import ctypes

    return _die_with_parent(ctypes.CDLL(None, use_errno=True).prctl)  # looked up here, not in the child


class EmulatorProcess:
    """An emulator module as a child process on 127.0.0.1. Subclasses name the module, the variables of the
    caller's environment the emulator must not see, and their own command-line arguments."""

    #: `python -m <module>` starts the emulator.
    module: ClassVar[str]
    #: Prefixes of variables removed from the emulator's environment (the SDK's settings).
    private_env_prefixes: ClassVar[tuple[str, ...]] = ()
    #: The extra to install when the emulator does not start.
    extra: ClassVar[str] = ""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        python: str | None = None,
        faults: Mapping[str, Any] | None = None,
        port: int = 0,
        startup_timeout: float = 30.0,
    ):
        self.api_key = api_key  # the only key the emulator accepts (None: any)
        self.python = python  # the interpreter sandboxes get as `python3`/`python`
        self.initial_faults = dict(faults or {})
        self.port = port
        self.startup_timeout = startup_timeout
        self.url = ""  # the first line's last word
        self.base_url = ""  # scheme, host and port
        self._process: subprocess.Popen[bytes] | None = None

    def arguments(self) -> list[str]:
        """Command-line arguments after `--port N`; a subclass adds its own to these."""
        command: list[str] = []
        if self.api_key is not None:
            command += ["--api-key", self.api_key]
        if self.python is not None:
            command += ["--python", self.python]
        if self.initial_faults:
            command += ["--faults", json.dumps(self.initial_faults)]
        return command

    def env(self) -> dict[str, str]:
        """The variables the provider's SDK reads to reach this emulator."""
        raise NotImplementedError

    # -- lifetime -------------------------------------------------------------------------------------

    def start(self: _P) -> _P:
        command = [sys.executable, "-m", self.module, "--port", str(self.port), *self.arguments()]
        env = {k: v for k, v in os.environ.items() if not k.startswith(self.private_env_prefixes)}
        self._process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,
            start_new_session=True,
            preexec_fn=preexec(),
        )
        assert self._process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._process.poll() is not None:
                self.stop()
                raise RuntimeError(f"the emulator {self.module} did not start (is {self.extra} installed?)")
            # Unbuffered reads of the pipe itself: a buffered reader could hide the line from select().
            ready, _, _ = select.select([self._process.stdout.fileno()], [], [], min(remaining, 0.5))
            if ready:
                line += os.read(self._process.stdout.fileno(), 4096)
        self.url = line.decode().splitlines()[0].strip().rsplit(" ", 1)[-1]
        scheme, _, rest = self.url.partition("://")
        self.base_url = f"{scheme}://{rest.split('/', 1)[0]}"
        self.port = int(self.base_url.rsplit(":", 1)[-1])
        return self

    def stop(self) -> None:
        """SIGTERM: the emulator kills every sandbox's processes and removes their directories."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self: _P) -> _P:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- admin API ------------------------------------------------------------------------------------

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """`method /_emulator/<path>` with a JSON body; the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}/_emulator/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise ValueError(f"emulator admin {method} {path}: HTTP {error.code}: {detail}") from None

    def live_sandboxes(self) -> list[dict[str, Any]]:
        """The sandboxes that exist now (one JSON object each)."""
        result: list[dict[str, Any]] = self.admin("GET", "sandboxes")
        return result

    def faults(self, **knobs: Any) -> dict[str, Any]:
        """Change fault knobs (the others keep their value) and return them all; no arguments: just read."""
        result: dict[str, Any] = self.admin("POST", "faults", knobs) if knobs else self.admin("GET", "faults")
        return result

    def reset_faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self.admin("DELETE", "faults")
        return result

    def stats(self) -> dict[str, int]:
        """The emulator's counters (create requests, sandboxes created and deleted, faults fired, ...)."""
        result: dict[str, int] = self.admin("GET", "stats")
        return result

    def kill_sandbox(self, sandbox_id: str) -> None:
        """The sandbox dies now, as if its host failed: its commands exit 137 and it is gone."""
        self.admin("POST", f"sandboxes/{sandbox_id}/kill", {})
