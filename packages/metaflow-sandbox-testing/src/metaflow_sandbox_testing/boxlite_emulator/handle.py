"""`BoxliteEmulator`: the emulator as a child process, driven from tests (standard library only).

with BoxliteEmulator(python="/path/to/clean/venv/bin/python") as boxlite:
    os.environ.update(boxlite.env())       # BOXLITE_REST_URL, BOXLITE_API_KEY
    boxlite.faults(fail_creates=1, fail_status=503)
    ...
    assert boxlite.live_boxes() == []
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..emulator_process import EmulatorProcess

DEFAULT_API_KEY = "boxlite-emulator-key"


class BoxliteEmulator(EmulatorProcess):
    """The boxlite REST emulator on 127.0.0.1 (a free port unless `port` is given).

    `api_key`: the only accepted Bearer token (None: any). `prefix`: the routing slot boxes live under
    (`BOXLITE_REST_PATH_PREFIX`). `python`: the interpreter boxes get as `python3`/`python`. `faults`:
    initial knobs (see `faults.Faults`).
    """

    module = "metaflow_sandbox_testing.boxlite_emulator"
    # The emulator never sees the caller's boxlite settings.
    private_env_prefixes = ("BOXLITE_",)
    extra = "metaflow-sandbox-testing[boxlite]"

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
        super().__init__(
            api_key=api_key, python=python, faults=faults, port=port, startup_timeout=startup_timeout
        )
        self.prefix = prefix

    def arguments(self) -> list[str]:
        return super().arguments() + (["--prefix", self.prefix] if self.prefix is not None else [])

    def env(self) -> dict[str, str]:
        """The SDK's own variables: BOXLITE_REST_URL, BOXLITE_API_KEY and BOXLITE_REST_PATH_PREFIX."""
        env = {"BOXLITE_REST_URL": self.url, "BOXLITE_API_KEY": self.api_key or "any-key-works"}
        if self.prefix:
            env["BOXLITE_REST_PATH_PREFIX"] = self.prefix
        return env

    def live_boxes(self) -> list[dict[str, Any]]:
        """The boxes that exist now: their Box JSON plus `request` (the create body), `root`,
        `running_executions`."""
        result: list[dict[str, Any]] = self.admin("GET", "boxes")
        return result

    def live_sandboxes(self) -> list[dict[str, Any]]:
        """`live_boxes`, by the name the other emulators' handles use."""
        return self.live_boxes()

    def kill_box(self, box_id: str) -> None:
        """The box dies now (its host failed): its commands are SIGKILLed and it is removed."""
        self.admin("POST", f"boxes/{box_id}/kill", {})

    def kill_sandbox(self, sandbox_id: str) -> None:
        self.kill_box(sandbox_id)
