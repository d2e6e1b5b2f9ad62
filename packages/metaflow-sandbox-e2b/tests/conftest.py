"""Fixtures: the E2B emulator (a separate process speaking E2B's API and envd protocols) and backends on it.

The real `e2b` SDK does all the talking, configured only by its own variables (E2B_API_KEY, E2B_API_URL,
E2B_SANDBOX_URL) as users configure it; nothing is mocked in-process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import pytest

pytest.importorskip("aiohttp", reason="the emulator needs metaflow-sandbox-testing[e2b] (aiohttp)")
pytest.importorskip("e2b", reason="needs the e2b SDK (Python 3.11+)")

from metaflow_sandbox_core import SandboxSpec
from metaflow_sandbox_e2b import E2BBackend, E2BSandbox
from metaflow_sandbox_testing.e2b_emulator import E2BEmulator

#: The sandboxes' `python3`: an interpreter without metaflow, as a stock template has.
IMAGE_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[E2BEmulator]:
    with E2BEmulator(python=IMAGE_PYTHON) as emulator:
        yield emulator


@pytest.fixture(scope="session", autouse=True)
def e2b_settings(emulator_server: E2BEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The SDK's own variables for the whole session (the backend reads no others)."""
    saved = dict(os.environ)
    os.environ.update(emulator_server.env())
    os.environ["METAFLOW_SANDBOX_E2B_STATE_DIR"] = str(tmp_path_factory.mktemp("e2b-state"))
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def emulator(emulator_server: E2BEmulator) -> Iterator[E2BEmulator]:
    """The emulator with its faults reset; every test must leave no sandbox behind."""
    emulator_server.reset_faults()
    yield emulator_server
    emulator_server.reset_faults()
    assert emulator_server.live_sandboxes() == [], "the test left sandboxes behind"


@pytest.fixture
def backend(emulator: E2BEmulator) -> E2BBackend:
    return E2BBackend()


@pytest.fixture
def create(backend: E2BBackend) -> Iterator[Callable[..., E2BSandbox]]:
    """`create(**spec_kwargs)`; every sandbox is destroyed after the test."""
    created: list[E2BSandbox] = []

    def make(**spec_kwargs: object) -> E2BSandbox:
        spec_kwargs.setdefault("network", "full")
        sandbox = backend.create(SandboxSpec(**spec_kwargs))  # type: ignore[arg-type]
        assert isinstance(sandbox, E2BSandbox)
        created.append(sandbox)
        return sandbox

    yield make
    for sandbox in created:
        sandbox.destroy()
