"""Errors: configuration, credentials, rate limits, outages, failed builds and an unreachable API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from metaflow_sandbox_core import (
    AuthError,
    ConfigError,
    SandboxSpec,
    UnavailableError,
    backend_class,
    call_with_retries,
)
from metaflow_sandbox_daytona import DaytonaBackend
from metaflow_sandbox_daytona.sdk import sdk
from metaflow_sandbox_testing.daytona_emulator import DaytonaEmulator

SPEC = SandboxSpec(network="full", labels={"suite": "daytona-errors"})


def backend_for(emulator: DaytonaEmulator, tmp_path: os.PathLike[str], **settings: object) -> DaytonaBackend:
    env = emulator.env()
    settings.setdefault("api_key", env["DAYTONA_API_KEY"])
    settings.setdefault("api_url", env["DAYTONA_API_URL"])
    return DaytonaBackend(state_dir=str(tmp_path), **settings)  # type: ignore[arg-type]


def test_entry_point_is_registered() -> None:
    assert backend_class("daytona") is DaytonaBackend


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAYTONA_API_KEY", raising=False)
    backend = DaytonaBackend()
    with pytest.raises(ConfigError, match="DAYTONA_API_KEY is not set") as missing:
        backend.check()
    assert "\n" not in str(missing.value)
    with pytest.raises(ConfigError, match="DAYTONA_API_KEY"):
        backend.create(SPEC)


def test_missing_sdk_is_a_config_error_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "daytona", None)  # `import daytona` now fails
    with pytest.raises(ConfigError, match=r'pip install "metaflow-sandbox\[daytona\]"'):
        sdk()
    with pytest.raises(ConfigError, match="Daytona SDK"):
        DaytonaBackend(api_key="k").check()


def test_package_imports_without_the_sdk() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["daytona"] = None
        from metaflow_sandbox_core import SandboxSpec, load_backend
        backend = load_backend("daytona")
        backend.validate(SandboxSpec(image="debian:12", cpu=2))
        print(backend.capabilities.isolation.name, "daytona" in sys.modules and sys.modules["daytona"] is None)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["CONTAINER", "True"]


def test_rejected_key_is_an_auth_error(emulator: DaytonaEmulator, tmp_path: os.PathLike[str]) -> None:
    backend = backend_for(emulator, tmp_path, api_key="not-the-key")
    try:
        with pytest.raises(AuthError, match=r"DAYTONA_API_KEY.*401"):
            backend.create(SPEC)
        with pytest.raises(AuthError, match="DAYTONA_API_KEY"):
            backend.list({"suite": "daytona-errors"})
    finally:
        backend.close()


def test_429_is_retryable_with_retry_after_then_succeeds(
    emulator: DaytonaEmulator, backend: DaytonaBackend
) -> None:
    emulator.faults(fail_creates=2, fail_status=429, retry_after=0.2)
    waits: list[float] = []
    errors: list[BaseException] = []

    def on_retry(error: BaseException, delay: float) -> None:
        errors.append(error)

    sandbox = call_with_retries(lambda: backend.create(SPEC), on_retry=on_retry, sleep=waits.append)
    try:
        assert len(errors) == 2 and all(isinstance(e, UnavailableError) and e.retryable for e in errors)
        assert all(getattr(e, "retry_after", None) == pytest.approx(0.2) for e in errors)
        assert all(0.2 <= wait <= 0.25 for wait in waits)
        assert "429" in str(errors[0])
    finally:
        sandbox.destroy()


def test_503_is_retryable(emulator: DaytonaEmulator, backend: DaytonaBackend) -> None:
    emulator.faults(fail_creates=1, fail_status=503)
    with pytest.raises(UnavailableError, match="503") as outage:
        backend.create(SPEC)
    assert outage.value.retryable and outage.value.retry_after is None


@pytest.mark.parametrize("state", ["build_failed", "error"])
def test_failed_build_is_retryable_and_leaves_nothing(
    emulator: DaytonaEmulator, backend: DaytonaBackend, state: str
) -> None:
    emulator.faults(broken_creates=1, broken_state=state, create_polls=3)
    with pytest.raises(UnavailableError, match=rf"state '{state}'.*fault injection") as failed:
        backend.create(SandboxSpec(image="python:3.12-slim", network="full"))
    assert failed.value.retryable
    assert emulator.live_sandboxes() == []


def test_create_that_does_not_start_in_time_is_deleted(
    emulator: DaytonaEmulator, backend: DaytonaBackend
) -> None:
    emulator.faults(create_polls=10**9)  # never starts
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="not started within 1 s") as slow:
        backend.create(SandboxSpec(network="full", options={"create_timeout": 1}))
    assert slow.value.retryable and time.monotonic() - started < 10
    assert emulator.live_sandboxes() == []


def test_unreachable_api_names_the_url_and_is_not_retryable(tmp_path: os.PathLike[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    backend = DaytonaBackend(api_key="k", api_url=url, state_dir=str(tmp_path))
    try:
        with pytest.raises(UnavailableError, match=f"Cannot reach the Daytona API at {url}") as unreachable:
            backend.create(SPEC)
        assert unreachable.value.retryable is False
    finally:
        backend.close()


def test_create_waits_for_the_shared_throttle(emulator: DaytonaEmulator, tmp_path: os.PathLike[str]) -> None:
    with open(os.path.join(str(tmp_path), "create-throttle.json"), "w") as state:
        json.dump({"tokens": 0.0, "at": time.time()}, state)  # another process just used the last token
    backend = backend_for(emulator, tmp_path, creates_per_minute=120)  # one token per 0.5 s
    try:
        started = time.monotonic()
        backend.create(SPEC).destroy()
        assert time.monotonic() - started >= 0.45
    finally:
        backend.close()


def test_sandbox_refused_path_is_not_an_auth_error(
    emulator: DaytonaEmulator, backend: DaytonaBackend
) -> None:
    sandbox = backend.create(SPEC)
    try:
        with pytest.raises(Exception) as refused:
            sandbox.upload(b"x", "/etc/metaflow-sandbox-should-not-exist")
        assert type(refused.value).__name__ == "SandboxError" and "permission denied" in str(refused.value)
    finally:
        sandbox.destroy()
