"""`DaytonaEmulator`: the emulator as a child process, driven from tests (standard library only).

with DaytonaEmulator(python="/path/to/venv/bin/python") as daytona:
    os.environ.update(daytona.env())           # DAYTONA_API_URL, DAYTONA_API_KEY
    daytona.faults(fail_creates=1, fail_status=429, retry_after=0.2)
    ...
    assert daytona.live_sandboxes() == []
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
from typing import Any

#: The key a `DaytonaEmulator` accepts unless told otherwise.
DEFAULT_API_KEY = "daytona-emulator-key"


def _die_with_parent(prctl: Callable[[int, int], int]) -> Callable[[], None]:
    """For the child, before exec: receive SIGTERM when the process that started the emulator dies."""

    def arm() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return arm


def _preexec() -> Callable[[], None] | None:
    if sys.platform != "linux":
        return None
    import ctypes

    return _die_with_parent(ctypes.CDLL(None, use_errno=True).prctl)  # looked up here, not in the child


class DaytonaEmulator:
    """The Daytona emulator as a child process on 127.0.0.1 (a free port unless `port` is given).

    `api_key`: the only accepted Bearer key (None: any key). `python`: the interpreter sandboxes get as
    `python3`/`python` (default: whatever `/usr/local/bin:/usr/bin:/bin` has). `faults`: initial fault knobs
    (see `faults.Faults`). `state_dir`: where sandbox directories live (default: a temporary directory).
    `host_paths`: directories (e.g. `/tmp`) the file API may reach besides each sandbox's home.
    """

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        python: str | None = None,
        port: int = 0,
        faults: Mapping[str, Any] | None = None,
        state_dir: str | None = None,
        host_paths: tuple[str, ...] = (),
        startup_timeout: float = 30.0,
    ):
        self.api_key = api_key
        self.python = python
        self.port = port
        self.initial_faults = dict(faults or {})
        self.state_dir = state_dir
        self.host_paths = host_paths
        self.startup_timeout = startup_timeout
        self.url = ""  # http://127.0.0.1:<port>/api once started
        self.base_url = ""
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifetime -------------------------------------------------------------------------------------

    def start(self) -> DaytonaEmulator:
        command = [
            sys.executable,
            "-m",
            "metaflow_sandbox_testing.daytona_emulator",
            "--port",
            str(self.port),
        ]
        if self.api_key is not None:
            command += ["--api-key", self.api_key]
        if self.python is not None:
            command += ["--python", self.python]
        if self.state_dir is not None:
            command += ["--state-dir", self.state_dir]
        for path in self.host_paths:
            command += ["--host-path", path]
        if self.initial_faults:
            command += ["--faults", json.dumps(self.initial_faults)]
        # The emulator never needs the caller's Daytona settings (nor passes anything on to sandboxes).
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAYTONA_")}
        self._process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=None,
            start_new_session=True,
            preexec_fn=_preexec(),
        )
        assert self._process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._process.poll() is not None:
                self.stop()
                raise RuntimeError(
                    "the Daytona emulator did not start (is metaflow-sandbox-testing[daytona] installed?)"
                )
            # Unbuffered reads of the pipe itself: a buffered reader could hide the line from select().
            ready, _, _ = select.select([self._process.stdout.fileno()], [], [], min(remaining, 0.5))
            if ready:
                line += os.read(self._process.stdout.fileno(), 4096)
        self.url = line.decode().splitlines()[0].strip().rsplit(" ", 1)[-1]
        self.base_url = self.url.rsplit("/api", 1)[0]
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

    def __enter__(self) -> DaytonaEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- what the SDK needs ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """DAYTONA_API_URL and DAYTONA_API_KEY for the real SDK (and the daytona backend)."""
        return {"DAYTONA_API_URL": self.url, "DAYTONA_API_KEY": self.api_key or "any-key-works"}

    # -- admin API ------------------------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
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
        """The sandboxes that exist now: `[{"id","name","state","labels","home","running_commands"}]`."""
        result: list[dict[str, Any]] = self._admin("GET", "sandboxes")
        return result

    def faults(self, **knobs: Any) -> dict[str, Any]:
        """Change fault knobs (the others keep their value) and return them all; no arguments: just read.

        Knobs: `fail_creates`, `fail_status`, `retry_after`, `create_polls`, `broken_creates`,
        `broken_state`, `kill_on_marker`, `kill_marker`, `drop_logs_after_lines` (see
        `metaflow_sandbox_testing.daytona_emulator.faults`). Each fires on an event, never after a delay.
        """
        result: dict[str, Any] = (
            self._admin("POST", "faults", knobs) if knobs else self._admin("GET", "faults")
        )
        return result

    def reset_faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._admin("DELETE", "faults")
        return result

    def stats(self) -> dict[str, int]:
        """Counters: create_requests, creates_failed_by_fault, sandboxes_created, sandboxes_deleted, ..."""
        result: dict[str, int] = self._admin("GET", "stats")
        return result

    def kill_sandbox(self, sandbox_id: str) -> None:
        """The sandbox dies now, as if its host failed: its commands exit 137 and it is deleted."""
        self._admin("POST", f"sandboxes/{sandbox_id}/kill", {})
