"""Fixtures: the Daytona emulator (a separate process speaking Daytona's wire protocol) and backends on it.

The real `daytona` SDK does all the talking; nothing is mocked in-process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import pytest

pytest.importorskip("aiohttp", reason="the emulator needs metaflow-sandbox-testing[daytona] (aiohttp)")
pytest.importorskip("daytona", reason="needs the daytona SDK")

from metaflow_sandbox_core import SandboxSpec
from metaflow_sandbox_daytona import DaytonaBackend, DaytonaSandbox
from metaflow_sandbox_testing.daytona_emulator import DaytonaEmulator, fixtures

#: The sandboxes' `python3`: an interpreter without metaflow, as a slim image would have.
IMAGE_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


# The testing package's fixtures, with the image's python3 below.
daytona_emulator_server = fixtures.daytona_emulator_server
daytona_emulator = fixtures.daytona_emulator


@pytest.fixture(scope="session")
def daytona_image_python() -> str:
    return IMAGE_PYTHON


@pytest.fixture
def emulator(daytona_emulator: DaytonaEmulator) -> Iterator[DaytonaEmulator]:
    """The testing package's emulator (faults reset around each test); every test must leave no sandbox."""
    yield daytona_emulator
    assert daytona_emulator.live_sandboxes() == [], "the test left sandboxes behind"


@pytest.fixture(scope="session")
def shared_backend(
    daytona_emulator_server: DaytonaEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaytonaBackend]:
    """One backend (one client, one event-loop thread) for tests that need no settings of their own."""
    env = daytona_emulator_server.env()
    backend = DaytonaBackend(
        api_key=env["DAYTONA_API_KEY"],
        api_url=env["DAYTONA_API_URL"],
        state_dir=str(tmp_path_factory.mktemp("daytona-state")),
    )
    yield backend
    backend.close()


@pytest.fixture
def backend(shared_backend: DaytonaBackend, emulator: DaytonaEmulator) -> DaytonaBackend:
    return shared_backend


@pytest.fixture
def create(backend: DaytonaBackend) -> Iterator[Callable[..., DaytonaSandbox]]:
    """`create(**spec_kwargs)`; every sandbox is destroyed after the test."""
    created: list[DaytonaSandbox] = []

    def make(**spec_kwargs: object) -> DaytonaSandbox:
        spec_kwargs.setdefault("network", "full")
        sandbox = backend.create(SandboxSpec(**spec_kwargs))  # type: ignore[arg-type]
        created.append(sandbox)
        return sandbox

    yield make
    for sandbox in created:
        sandbox.destroy()


@pytest.fixture
def env_backend(
    emulator: DaytonaEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> Iterator[DaytonaBackend]:
    """A backend configured the way users configure it: DAYTONA_API_URL / DAYTONA_API_KEY in os.environ."""
    for name, value in emulator.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("METAFLOW_SANDBOX_DAYTONA_STATE_DIR", str(tmp_path))
    backend = DaytonaBackend()
    yield backend
    backend.close()
