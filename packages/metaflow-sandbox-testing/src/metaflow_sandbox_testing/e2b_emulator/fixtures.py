"""pytest fixtures: import them into a conftest (`from metaflow_sandbox_testing.e2b_emulator.fixtures import
e2b_emulator, e2b_env`).

- `e2b_emulator_server` (session): one emulator for the whole test session.
- `e2b_emulator`: that emulator with its faults reset before and after the test.
- `e2b_env`: `e2b_emulator` with E2B_API_KEY / E2B_API_URL / E2B_SANDBOX_URL set in `os.environ` for the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .handle import E2BEmulator


@pytest.fixture(scope="session")
def e2b_emulator_server() -> Iterator[E2BEmulator]:
    with E2BEmulator() as emulator:
        yield emulator


@pytest.fixture
def e2b_emulator(e2b_emulator_server: E2BEmulator) -> Iterator[E2BEmulator]:
    e2b_emulator_server.reset_faults()
    yield e2b_emulator_server
    e2b_emulator_server.reset_faults()


@pytest.fixture
def e2b_env(e2b_emulator: E2BEmulator, monkeypatch: pytest.MonkeyPatch) -> E2BEmulator:
    for name, value in e2b_emulator.env().items():
        monkeypatch.setenv(name, value)
    return e2b_emulator
