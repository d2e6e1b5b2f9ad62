"""`E2BEmulator`: the E2B emulator as a child process, driven from tests (standard library only).

with E2BEmulator(python="/path/to/clean/venv/bin/python") as e2b:
    os.environ.update(e2b.env())          # E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL
    e2b.faults(fail_creates=1, fail_status=503)
    ...
    assert e2b.live_sandboxes() == []
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..emulator_process import EmulatorProcess

#: The key an `E2BEmulator` accepts unless told otherwise.
DEFAULT_API_KEY = "e2b_emulator_key"


class E2BEmulator(EmulatorProcess):
    """The E2B emulator on 127.0.0.1 (a free port unless `port` is given): one URL serves the API and every
    sandbox's envd. `api_key`: the only accepted `X-API-KEY` (None: any). `python`: the interpreter
    sandboxes get as `python3`/`python`. `faults`: initial knobs (see `faults.Faults`)."""

    module = "metaflow_sandbox_testing.e2b_emulator"
    # The emulator never sees the caller's E2B settings (nor passes anything on to sandboxes).
    private_env_prefixes = ("E2B_",)
    extra = "metaflow-sandbox-testing[e2b]"

    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        python: str | None = None,
        port: int = 0,
        faults: Mapping[str, Any] | None = None,
        startup_timeout: float = 30.0,
    ):
        super().__init__(
            api_key=api_key, python=python, faults=faults, port=port, startup_timeout=startup_timeout
        )

    def env(self) -> dict[str, str]:
        """The SDK's own variables: E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL (both this server)."""
        return {
            "E2B_API_KEY": self.api_key or "e2b_any_key_works",
            "E2B_API_URL": self.url,
            "E2B_SANDBOX_URL": self.url,
        }

    def faults(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs and return them all (none: read): `fail_creates`, `fail_status`, `retry_after`,
        `hold_creates`, `kill_on_marker`, `kill_marker`, `drop_stream_after_lines`, `refuse_timeout_updates`
        (see `metaflow_sandbox_testing.e2b_emulator.faults`)."""
        return super().faults(**knobs)

    def release_creates(self) -> None:
        """Let the creates held by `hold_creates` answer."""
        self.admin("POST", "creates/release", {})
