"""Fixtures: a backend whose state lives in the test's temp dir (skips when bwrap cannot run here)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest

from metaflow_sandbox_bubblewrap import BubblewrapBackend, BubblewrapSandbox
from metaflow_sandbox_core import SandboxError, SandboxSpec


@functools.lru_cache(maxsize=1)
def bubblewrap_unusable() -> str | None:
    """Why bubblewrap cannot run here, or None."""
    try:
        BubblewrapBackend().check()
    except SandboxError as error:
        return str(error)
    return None


@pytest.fixture
def bubblewrap_backend(tmp_path_factory: pytest.TempPathFactory) -> BubblewrapBackend:
    reason = bubblewrap_unusable()
    if reason is not None:
        pytest.skip(reason)
    return BubblewrapBackend(state_dir=str(tmp_path_factory.mktemp("bubblewrap-state")))


@pytest.fixture
def create_bubblewrap(bubblewrap_backend: BubblewrapBackend) -> Iterator[Callable[..., BubblewrapSandbox]]:
    """`create(**spec_kwargs)`; every sandbox is destroyed after the test."""
    created: list[BubblewrapSandbox] = []

    def create(**spec_kwargs: object) -> BubblewrapSandbox:
        sandbox = bubblewrap_backend.create(SandboxSpec(**spec_kwargs))  # type: ignore[arg-type]
        created.append(sandbox)
        return sandbox

    yield create
    for sandbox in created:
        sandbox.destroy()


ShellRunner = Callable[..., "tuple[int, str]"]


@pytest.fixture
def shell() -> ShellRunner:
    """`shell(sandbox, script, **run_kwargs)` → (exit code, stdout and stderr combined as text)."""

    def run(sandbox: BubblewrapSandbox, script: str, **kwargs: object) -> tuple[int, str]:
        chunks: list[bytes] = []
        kwargs.setdefault("timeout", 30)
        code = sandbox.run(["sh", "-c", script], on_output=lambda _, line: chunks.append(line), **kwargs)  # type: ignore[arg-type]
        return code, b"".join(chunks).decode(errors="replace")

    return run
