"""pytest fixtures: import them into a conftest (`from metaflow_sandbox_testing.daytona_emulator.fixtures
import daytona_emulator, daytona_env`).

- `daytona_image_python` (session): the sandboxes' python3; None (the emulator's default) unless a conftest
  overrides it, e.g. with an interpreter without metaflow.
- `daytona_emulator_server` (session): one emulator for the whole test session.
- `daytona_emulator`: that emulator with its faults reset before and after the test.
- `daytona_env`: `daytona_emulator` with DAYTONA_API_URL / DAYTONA_API_KEY set in `os.environ` for the test.
"""

from __future__ import annotations

import pytest

from ..emulator_fixtures import emulator_fixtures
from .handle import DaytonaEmulator


@pytest.fixture(scope="session")
def daytona_image_python() -> str | None:
    return None


daytona_emulator_server, daytona_emulator, daytona_env = emulator_fixtures(
    "daytona", lambda request: DaytonaEmulator(python=request.getfixturevalue("daytona_image_python"))
)
