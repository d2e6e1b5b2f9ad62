"""Fixtures: the boxlite REST emulator (a separate process speaking boxlite's wire protocol) and backends on
it; the real `boxlite` SDK does all the talking. The local runtime's fixture skips with the boot probe's reason
where no VM boots."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator

import pytest

pytest.importorskip("aiohttp", reason="the emulator needs metaflow-sandbox-testing[boxlite] (aiohttp)")
pytest.importorskip("boxlite", reason="needs the boxlite SDK")

from metaflow_sandbox_boxlite import BoxliteBackend, BoxliteSandbox
from metaflow_sandbox_core import SandboxError, SandboxSpec
from metaflow_sandbox_testing.boxlite_emulator import BoxliteEmulator

#: The boxes' `python3`: an interpreter without metaflow, as a slim image would have.
IMAGE_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[BoxliteEmulator]:
    with BoxliteEmulator(python=IMAGE_PYTHON, prefix="team-1") as emulator:
        yield emulator


@pytest.fixture
def emulator(emulator_server: BoxliteEmulator) -> Iterator[BoxliteEmulator]:
    """The emulator with its faults reset; every test must leave no box behind."""
    emulator_server.reset_faults()
    yield emulator_server
    emulator_server.reset_faults()
    assert emulator_server.live_boxes() == [], "the test left boxes behind"


@pytest.fixture(scope="session")
def shared_backend(
    emulator_server: BoxliteEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BoxliteBackend]:
    """One remote backend, configured only by the SDK's own variables."""
    patch = pytest.MonkeyPatch()
    for name, value in emulator_server.env().items():
        patch.setenv(name, value)
    yield BoxliteBackend(state_dir=str(tmp_path_factory.mktemp("boxlite-state")))
    patch.undo()


@pytest.fixture
def backend(shared_backend: BoxliteBackend, emulator: BoxliteEmulator) -> BoxliteBackend:
    return shared_backend


@pytest.fixture
def create(backend: BoxliteBackend) -> Iterator[Callable[..., BoxliteSandbox]]:
    created: list[BoxliteSandbox] = []

    def make(**spec_kwargs: object) -> BoxliteSandbox:
        spec_kwargs.setdefault("network", "full")
        sandbox = backend.create(SandboxSpec(**spec_kwargs))  # type: ignore[arg-type]
        created.append(sandbox)  # type: ignore[arg-type]
        return sandbox  # type: ignore[return-value]

    yield make
    for sandbox in created:
        sandbox.destroy()


@functools.lru_cache(maxsize=1)
def local_unusable() -> str | None:
    """Why the local runtime cannot run here (the boot probe's reason), or None."""
    environ = {k: v for k, v in os.environ.items() if k.startswith("BOXLITE_")}
    for name in environ:
        del os.environ[name]
    try:
        BoxliteBackend().check()
    except SandboxError as error:
        return str(error)
    finally:
        os.environ.update(environ)
    return None


@pytest.fixture
def local_probe() -> Callable[[], str | None]:
    """`local_probe()`: the boot probe's answer for this host (None: VMs boot)."""
    return local_unusable


@pytest.fixture
def local_backend(monkeypatch: pytest.MonkeyPatch) -> BoxliteBackend:
    reason = local_unusable()
    if reason is not None:
        pytest.skip(f"the local boxlite runtime cannot run here: {reason}")
    for name in ("BOXLITE_REST_URL", "BOXLITE_API_KEY", "BOXLITE_REST_PATH_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    return BoxliteBackend()
