"""The create throttle: a file-locked token bucket shared by every process on the machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from metaflow_sandbox_core import ConfigError
from metaflow_sandbox_daytona.throttle import (
    RATE_ENV,
    STATE_DIR_ENV,
    CreateThrottle,
    creates_per_minute_from_env,
    default_state_dir,
)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_burst_then_rate(tmp_path: os.PathLike[str]) -> None:
    fake = FakeTime()
    throttle = CreateThrottle(60, str(tmp_path), burst=3, clock=fake.clock, sleep=fake.sleep)
    assert [throttle.acquire() for _ in range(3)] == [0, 0, 0]
    assert throttle.acquire() == pytest.approx(1.0)  # 60/min: one more token per second
    fake.now += 10  # refills, but never above the burst
    assert [throttle.acquire() for _ in range(3)] == [0, 0, 0]
    assert throttle.acquire() == pytest.approx(1.0)


def test_state_lives_in_a_shared_file(tmp_path: os.PathLike[str]) -> None:
    fake = FakeTime()
    first = CreateThrottle(60, str(tmp_path), burst=1, clock=fake.clock, sleep=fake.sleep)
    second = CreateThrottle(60, str(tmp_path), burst=1, clock=fake.clock, sleep=fake.sleep)
    assert first.acquire() == 0
    assert second.acquire() == pytest.approx(1.0), "a second throttle on the same state did not wait"
    with open(first.path) as state:
        assert set(json.load(state)) == {"tokens", "at"}


def test_zero_rate_never_waits(tmp_path: os.PathLike[str]) -> None:
    throttle = CreateThrottle(0, str(tmp_path))
    assert all(throttle.acquire() == 0 for _ in range(1000))
    assert not os.path.exists(throttle.path)


def test_processes_share_one_bucket(tmp_path: os.PathLike[str]) -> None:
    """Two processes take 5 tokens each from a 600/min bucket with no burst: ~0.9 s in all, not ~0.4 s."""
    worker = textwrap.dedent(
        f"""
        from metaflow_sandbox_daytona.throttle import CreateThrottle
        throttle = CreateThrottle(600, {str(tmp_path)!r}, burst=1)
        for _ in range(5):
            throttle.acquire()
        """
    )
    started = time.monotonic()
    workers = [subprocess.Popen([sys.executable, "-c", worker]) for _ in range(2)]
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    # 10 tokens at 10 per second, the first one free: at least 0.9 s however the two interleave.
    assert time.monotonic() - started >= 0.85


def test_unwritable_state_dir_limits_this_process_only(tmp_path: os.PathLike[str]) -> None:
    blocker = os.path.join(str(tmp_path), "file")
    with open(blocker, "w"):
        pass
    fake = FakeTime()
    throttle = CreateThrottle(60, os.path.join(blocker, "sub"), burst=1, clock=fake.clock, sleep=fake.sleep)
    assert throttle.acquire() == 0
    assert throttle.acquire() == pytest.approx(1.0)


def test_rate_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RATE_ENV, raising=False)
    assert creates_per_minute_from_env() == 600
    monkeypatch.setenv(RATE_ENV, "120")
    assert creates_per_minute_from_env() == 120
    for bad in ("fast", "-1", "nan", "inf"):
        monkeypatch.setenv(RATE_ENV, bad)
        with pytest.raises(ConfigError, match=RATE_ENV):
            creates_per_minute_from_env()


def test_state_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path))
    assert default_state_dir() == str(tmp_path)
    monkeypatch.delenv(STATE_DIR_ENV)
    assert os.path.basename(default_state_dir()) == "daytona"
