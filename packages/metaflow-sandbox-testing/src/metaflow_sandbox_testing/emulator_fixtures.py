"""The pytest fixtures every emulator offers, made once: `<name>_emulator_server` (session: one emulator for
the whole test session), `<name>_emulator` (that emulator with its faults reset before and after the test) and
`<name>_env` (`<name>_emulator` with the SDK's variables set in `os.environ` for the test)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from .emulator_process import EmulatorProcess

_E = TypeVar("_E", bound=EmulatorProcess)


def emulator_fixtures(name: str, start: Callable[[pytest.FixtureRequest], _E]) -> tuple[Any, Any, Any]:
    """The three fixtures of the emulator `start(request)` makes; assign them to module names a conftest or
    `pytest_plugins` picks up."""

    @pytest.fixture(scope="session", name=f"{name}_emulator_server")
    def server(request: pytest.FixtureRequest) -> Iterator[_E]:
        with start(request) as emulator:
            yield emulator

    @pytest.fixture(name=f"{name}_emulator")
    def emulator(request: pytest.FixtureRequest) -> Iterator[_E]:
        running: _E = request.getfixturevalue(f"{name}_emulator_server")
        running.reset_faults()
        yield running
        running.reset_faults()

    @pytest.fixture(name=f"{name}_env")
    def env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> _E:
        running: _E = request.getfixturevalue(f"{name}_emulator")
        for variable, value in running.env().items():
            monkeypatch.setenv(variable, value)
        return running

    return server, emulator, env
