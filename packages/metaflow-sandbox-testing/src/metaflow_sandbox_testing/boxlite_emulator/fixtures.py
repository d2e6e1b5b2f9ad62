"""pytest fixtures: `from metaflow_sandbox_testing.boxlite_emulator.fixtures import boxlite_emulator, boxlite_env`.

- `boxlite_emulator_server` (session): one emulator for the session.
- `boxlite_emulator`: that emulator with its faults reset before and after the test.
- `boxlite_env`: `boxlite_emulator` with the SDK's BOXLITE_* variables set in `os.environ` for the test.
"""

from __future__ import annotations

from ..emulator_fixtures import emulator_fixtures
from .handle import BoxliteEmulator

boxlite_emulator_server, boxlite_emulator, boxlite_env = emulator_fixtures(
    "boxlite", lambda request: BoxliteEmulator()
)
