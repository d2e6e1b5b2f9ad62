"""pytest fixtures: import them into a conftest (`from metaflow_sandbox_testing.daytona_emulator.fixtures
import daytona_emulator, daytona_env`).

- `daytona_image_python` (session): the sandboxes' python3; None (the emulator's default) unless a conftest
  overrides it, e.g. with an interpreter without metaflow.
- `daytona_emulator_server` (session): one emulator for the whole test session.
- `daytona_emulator`: that emulator with its faults reset before and after the test.
- `daytona_env`: `daytona_emulator` with DAYTONA_API_URL / DAYTONA_API_KEY set in `os.environ` for the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .handle import DaytonaEmulator


@pytest.fixture(scope="session")
def daytona_image_python() -> str | None:
    return None


@pytest.fixture(scope="session")
def daytona_emulator_server(daytona_image_python: str | None) -> Iterator[DaytonaEmulator]:
    with DaytonaEmulator(python=daytona_image_python) as emulator:
        yield emulator


@pytest.fixture
def daytona_emulator(daytona_emulator_server: DaytonaEmulator) -> Iterator[DaytonaEmulator]:
    daytona_emulator_server.reset_faults()
    yield daytona_emulator_server
    daytona_emulator_server.reset_faults()


@pytest.fixture
def daytona_env(daytona_emulator: DaytonaEmulator, monkeypatch: pytest.MonkeyPatch) -> DaytonaEmulator:
    for name, value in daytona_emulator.env().items():
        monkeypatch.setenv(name, value)
    return daytona_emulator
