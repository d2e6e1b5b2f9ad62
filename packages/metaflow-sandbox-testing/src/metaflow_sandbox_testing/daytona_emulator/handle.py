"""`DaytonaEmulator`: the emulator as a child process, driven from tests (standard library only).

with DaytonaEmulator(python="/path/to/venv/bin/python") as daytona:
    os.environ.update(daytona.env())           # DAYTONA_API_URL, DAYTONA_API_KEY
    daytona.faults(fail_creates=1, fail_status=429, retry_after=0.2)
    ...
    assert daytona.live_sandboxes() == []
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..emulator_process import EmulatorProcess
from ..emulator_process import preexec as _preexec  # noqa: F401 - kept importable for other emulators

#: The key a `DaytonaEmulator` accepts unless told otherwise.
DEFAULT_API_KEY = "daytona-emulator-key"


class DaytonaEmulator(EmulatorProcess):
    """The Daytona emulator as a child process on 127.0.0.1 (a free port unless `port` is given).

    `api_key`: the only accepted Bearer key (None: any key). `python`: the interpreter sandboxes get as
    `python3`/`python` (default: whatever `/usr/local/bin:/usr/bin:/bin` has). `faults`: initial fault knobs
    (see `faults.Faults`). `state_dir`: where sandbox directories live (default: a temporary directory).
    `host_paths`: directories (e.g. `/tmp`) the file API may reach besides each sandbox's home.
    """

    module = "metaflow_sandbox_testing.daytona_emulator"
    # The emulator never needs the caller's Daytona settings (nor passes anything on to sandboxes).
    private_env_prefixes = ("DAYTONA_",)
    extra = "metaflow-sandbox-testing[daytona]"

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
        super().__init__(
            api_key=api_key, python=python, faults=faults, port=port, startup_timeout=startup_timeout
        )
        self.state_dir = state_dir
        self.host_paths = host_paths

    def arguments(self) -> list[str]:
        command = super().arguments()
        if self.state_dir is not None:
            command += ["--state-dir", self.state_dir]
        for path in self.host_paths:
            command += ["--host-path", path]
        return command

    # -- what the SDK needs ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """DAYTONA_API_URL and DAYTONA_API_KEY for the real SDK (and the daytona backend)."""
        return {"DAYTONA_API_URL": self.url, "DAYTONA_API_KEY": self.api_key or "any-key-works"}

    def faults(self, **knobs: Any) -> dict[str, Any]:
        """Change fault knobs (the others keep their value) and return them all; no arguments: just read.

        Knobs: `fail_creates`, `fail_status`, `retry_after`, `create_polls`, `broken_creates`,
        `broken_state`, `kill_on_marker`, `kill_marker`, `drop_logs_after_lines` (see
        `metaflow_sandbox_testing.daytona_emulator.faults`). Each fires on an event, never after a delay.
        """
        return super().faults(**knobs)
