"""pytest fixtures: `from metaflow_sandbox_testing.boxlite_emulator.fixtures import boxlite_emulator, boxlite_env`.

- `boxlite_emulator_server` (session): one emulator for the session.
- `boxlite_emulator`: that emulator with its faults reset before and after the test.
- `boxlite_env`: `boxlite_emulator` with the SDK's BOXLITE_* variables set in `os.environ` for the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .handle import BoxliteEmulator


@pytest.fixture(scope="session")
def boxlite_emulator_server() -> Iterator[BoxliteEmulator]:
    with BoxliteEmulator() as emulator:
        yield emulator


@pytest.fixture
def boxlite_emulator(boxlite_emulator_server: BoxliteEmulator) -> Iterator[BoxliteEmulator]:
    boxlite_emulator_server.reset_faults()
    yield boxlite_emulator_server
    boxlite_emulator_server.reset_faults()


@pytest.fixture
def boxlite_env(boxlite_emulator: BoxliteEmulator, monkeypatch: pytest.MonkeyPatch) -> BoxliteEmulator:
    for name, value in boxlite_emulator.env().items():
        monkeypatch.setenv(name, value)
    return boxlite_emulator
