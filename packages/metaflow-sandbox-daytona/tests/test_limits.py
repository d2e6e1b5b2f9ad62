"""Daytona's create limits through core's limiter: 600 a minute by default, the per-instance setting, the
METAFLOW_SANDBOX_DAYTONA_* settings (no server needed)."""

from __future__ import annotations

import os

import pytest

from metaflow_sandbox_core import ConfigError
from metaflow_sandbox_daytona import DaytonaBackend

RATE_ENV = "METAFLOW_SANDBOX_DAYTONA_CREATES_PER_MINUTE"
STATE_DIR_ENV = "METAFLOW_SANDBOX_DAYTONA_STATE_DIR"


def test_rate_defaults_to_600_and_the_setting_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RATE_ENV, raising=False)
    assert DaytonaBackend(api_key="k").create_limiter().per_minute == 600
    monkeypatch.setenv(RATE_ENV, "120")
    assert DaytonaBackend(api_key="k").create_limiter().per_minute == 120
    monkeypatch.setenv(RATE_ENV, "0")
    assert DaytonaBackend(api_key="k").create_limiter().per_minute == 0


def test_instance_rate_is_its_own_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RATE_ENV, raising=False)
    backend = DaytonaBackend(api_key="k", creates_per_minute=30)
    assert backend.capabilities.max_creates_per_minute == 30
    assert DaytonaBackend.capabilities.max_creates_per_minute == 600
    assert backend.create_limiter().per_minute == 30


def test_malformed_rate_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("daytona", reason="check() imports the daytona SDK")
    for bad in ("fast", "-1", "nan", "inf"):
        monkeypatch.setenv(RATE_ENV, bad)
        with pytest.raises(ConfigError, match=RATE_ENV):
            DaytonaBackend(api_key="k").check()


def test_state_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path))
    backend = DaytonaBackend(api_key="k")
    assert backend.state_dir == str(tmp_path) and backend.create_limiter().state_dir == str(tmp_path)
    monkeypatch.delenv(STATE_DIR_ENV)
    assert os.path.basename(DaytonaBackend(api_key="k").state_dir) == "daytona"
