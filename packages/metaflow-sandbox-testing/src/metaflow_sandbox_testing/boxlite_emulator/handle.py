"""`BoxliteEmulator`: the emulator as a child process, driven from tests (standard library only).

with BoxliteEmulator(python="/path/to/clean/venv/bin/python") as boxlite:
    os.environ.update(boxlite.env())       # BOXLITE_REST_URL, BOXLITE_API_KEY
    boxlite.faults(fail_creates=1, fail_status=503)
    ...
    assert boxlite.live_boxes() == []
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
from collections.abc import Mapping
from typing import Any

from ..daytona_emulator.handle import _preexec

DEFAULT_API_KEY = "boxlite-emulator-key"


class BoxliteEmulator:
    """The boxlite REST emulator on 127.0.0.1 (a free port unless `port` is given).

    `api_key`: the only accepted Bearer token (None: any). `prefix`: the routing slot boxes live under
    (`BOXLITE_REST_PATH_PREFIX`). `python`: the interpreter boxes get as `python3`/`python`. `faults`:
    initial knobs (see `faults.Faults`).
    """

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        prefix: str | None = None,
        python: str | None = None,
        port: int = 0,
        faults: Mapping[str, Any] | None = None,
        startup_timeout: float = 30.0,
    ):
        self.api_key, self.prefix, self.python, self.port = api_key, prefix, python, port
        self.initial_faults = dict(faults or {})
        self.startup_timeout = startup_timeout
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> BoxliteEmulator:
        command = [
            sys.executable,
            "-m",
            "metaflow_sandbox_testing.boxlite_emulator",
            "--port",
            str(self.port),
        ]
        for flag, value in (
            ("--api-key", self.api_key),
            ("--prefix", self.prefix),
            ("--python", self.python),
        ):
            if value is not None:
                command += [flag, value]
        if self.initial_faults:
            command += ["--faults", json.dumps(self.initial_faults)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOXLITE_")}
        self._process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
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
                    "the boxlite emulator did not start (is metaflow-sandbox-testing[boxlite] installed?)"
                )
            ready, _, _ = select.select([self._process.stdout.fileno()], [], [], min(remaining, 0.5))
            if ready:
                line += os.read(self._process.stdout.fileno(), 4096)
        self.url = line.decode().splitlines()[0].strip().rsplit(" ", 1)[-1]
        self.port = int(self.url.rsplit(":", 1)[-1])
        return self

    def stop(self) -> None:
        """SIGTERM: the emulator kills every box's processes and removes their directories."""
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

    def __enter__(self) -> BoxliteEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def env(self) -> dict[str, str]:
        """The SDK's own variables: BOXLITE_REST_URL, BOXLITE_API_KEY and BOXLITE_REST_PATH_PREFIX."""
        env = {"BOXLITE_REST_URL": self.url, "BOXLITE_API_KEY": self.api_key or "any-key-works"}
        if self.prefix:
            env["BOXLITE_REST_PATH_PREFIX"] = self.prefix
        return env

    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}/_emulator/{path}",
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

    def live_boxes(self) -> list[dict[str, Any]]:
        """The boxes that exist now: their Box JSON plus `request` (the create body), `root`,
        `running_executions`."""
        result: list[dict[str, Any]] = self._admin("GET", "boxes")
        return result

    def live_sandboxes(self) -> list[dict[str, Any]]:
        """`live_boxes`, by the name the other emulators' handles use."""
        return self.live_boxes()

    def faults(self, **knobs: Any) -> dict[str, Any]:
        """Change fault knobs (see `faults.Faults`) and return them all; no arguments: just read."""
        result: dict[str, Any] = (
            self._admin("POST", "faults", knobs) if knobs else self._admin("GET", "faults")
        )
        return result

    def reset_faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._admin("DELETE", "faults")
        return result

    def stats(self) -> dict[str, int]:
        result: dict[str, int] = self._admin("GET", "stats")
        return result

    def kill_box(self, box_id: str) -> None:
        """The box dies now (its host failed): its commands are SIGKILLed and it is removed."""
        self._admin("POST", f"boxes/{box_id}/kill", {})
