"""pytest fixtures: import them into a conftest (`from metaflow_sandbox_testing.e2b_emulator.fixtures import
e2b_emulator, e2b_env`).

- `e2b_emulator_server` (session): one emulator for the whole test session.
- `e2b_emulator`: that emulator with its faults reset before and after the test.
- `e2b_env`: `e2b_emulator` with E2B_API_KEY / E2B_API_URL / E2B_SANDBOX_URL set in `os.environ` for the test.
"""

from __future__ import annotations

from ..emulator_fixtures import emulator_fixtures
from .handle import E2BEmulator

e2b_emulator_server, e2b_emulator, e2b_env = emulator_fixtures("e2b", lambda request: E2BEmulator())
