"""The create limiter (file-locked rate and concurrency, shared by every process on the machine) and how
`Backend.create` applies it: declared limits, per-instance capabilities, the user's settings."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from local_backend import LocalBackend

from metaflow_sandbox_core import (
    Capabilities,
    ConfigError,
    CreateLimiter,
    Isolation,
    SandboxSpec,
    create_limits,
    labels_match,
    setting_name,
)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_burst_then_rate(tmp_path: os.PathLike[str]) -> None:
    fake = FakeTime()
    limiter = CreateLimiter(str(tmp_path), per_minute=60, burst=3, clock=fake.clock, sleep=fake.sleep)
    assert [limiter.acquire() for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire() == pytest.approx(1.0)  # 60/min: one more token per second
    fake.now += 10  # refills, but never above the burst
    assert [limiter.acquire() for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire() == pytest.approx(1.0)


def test_rate_state_lives_in_a_shared_file(tmp_path: os.PathLike[str]) -> None:
    fake = FakeTime()
    first = CreateLimiter(str(tmp_path), per_minute=60, burst=1, clock=fake.clock, sleep=fake.sleep)
    second = CreateLimiter(str(tmp_path), per_minute=60, burst=1, clock=fake.clock, sleep=fake.sleep)
    assert first.acquire() == 0
    assert second.acquire() == pytest.approx(1.0), "a second limiter on the same state did not wait"
    with open(first.path) as state:
        assert set(json.load(state)) == {"tokens", "at"}


def test_no_limits_never_wait_nor_touch_the_disk(tmp_path: os.PathLike[str]) -> None:
    limiter = CreateLimiter(os.path.join(str(tmp_path), "state"))
    for _ in range(1000):
        with limiter.hold() as waited:
            assert waited == 0
    assert not os.path.exists(limiter.state_dir)


def test_processes_share_one_bucket(tmp_path: os.PathLike[str]) -> None:
    """Two processes take 5 tokens each from a 600/min bucket with no burst: ~0.9 s in all, not ~0.4 s."""
    worker = textwrap.dedent(
        f"""
        from metaflow_sandbox_core import CreateLimiter
        limiter = CreateLimiter({str(tmp_path)!r}, per_minute=600, burst=1)
        for _ in range(5):
            limiter.acquire()
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
    limiter = CreateLimiter(
        os.path.join(blocker, "sub"), per_minute=60, concurrent=1, burst=1, clock=fake.clock, sleep=fake.sleep
    )
    with limiter.hold() as waited:
        assert waited == 0
    assert limiter.acquire() == pytest.approx(1.0)


def test_concurrency_slots_across_threads(tmp_path: os.PathLike[str]) -> None:
    limiter = CreateLimiter(str(tmp_path), concurrent=2, poll=0.01)
    inside, peak = 0, 0
    lock = threading.Lock()

    def create() -> None:
        nonlocal inside, peak
        with limiter.hold():
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.05)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert peak == 2


def test_concurrency_slots_across_processes_and_freed_when_a_holder_dies(tmp_path: os.PathLike[str]) -> None:
    holder = textwrap.dedent(
        f"""
        import sys, time
        from metaflow_sandbox_core import CreateLimiter
        with CreateLimiter({str(tmp_path)!r}, concurrent=1).hold():
            print("holding", flush=True)
            time.sleep(60)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stdout.readline() == b"holding\n"
        limiter = CreateLimiter(str(tmp_path), concurrent=1, poll=0.02)
        taken = threading.Event()

        def take() -> None:
            with limiter.hold():
                taken.set()

        waiter = threading.Thread(target=take, daemon=True)
        waiter.start()
        assert not taken.wait(0.5), "the slot another process holds was taken"
        process.kill()  # SIGKILL: the kernel drops its lock
        assert taken.wait(10), "the slot of a dead holder was not freed"
    finally:
        process.kill()
        process.wait()


def test_settings_names_and_values(monkeypatch: pytest.MonkeyPatch) -> None:
    assert setting_name("daytona", "CREATES_PER_MINUTE") == "METAFLOW_SANDBOX_DAYTONA_CREATES_PER_MINUTE"
    assert setting_name("my-vm", "STATE_DIR") == "METAFLOW_SANDBOX_MY_VM_STATE_DIR"
    caps = Capabilities(Isolation.CONTAINER, local=False, can_mount=False, max_creates_per_minute=600)
    for name in ("METAFLOW_SANDBOX_X_CREATES_PER_MINUTE", "METAFLOW_SANDBOX_X_CONCURRENT_CREATES"):
        monkeypatch.delenv(name, raising=False)
    assert create_limits("x", caps) == (600.0, 0)
    monkeypatch.setenv("METAFLOW_SANDBOX_X_CREATES_PER_MINUTE", "120")
    monkeypatch.setenv("METAFLOW_SANDBOX_X_CONCURRENT_CREATES", "3")
    assert create_limits("x", caps) == (120.0, 3)
    monkeypatch.setenv("METAFLOW_SANDBOX_X_CREATES_PER_MINUTE", "0")
    assert create_limits("x", caps) == (0.0, 3)
    for bad in ("fast", "-1", "nan", "inf"):
        monkeypatch.setenv("METAFLOW_SANDBOX_X_CREATES_PER_MINUTE", bad)
        with pytest.raises(ConfigError, match="METAFLOW_SANDBOX_X_CREATES_PER_MINUTE"):
            create_limits("x", caps)
    monkeypatch.setenv("METAFLOW_SANDBOX_X_CREATES_PER_MINUTE", "1")
    monkeypatch.setenv("METAFLOW_SANDBOX_X_CONCURRENT_CREATES", "1.5")
    with pytest.raises(ConfigError, match="whole number"):
        create_limits("x", caps)


def test_backend_create_waits_for_its_declared_limit(tmp_path: os.PathLike[str]) -> None:
    with open(os.path.join(str(tmp_path), "create-throttle.json"), "w") as state:
        json.dump({"tokens": 0.0, "at": time.time()}, state)  # another process just used the last token
    backend = LocalBackend(state_dir=str(tmp_path))
    # Capabilities are per instance: this one declares 120 creations a minute (a token per 0.5 s).
    backend.capabilities = dataclasses.replace(backend.capabilities, max_creates_per_minute=120)
    assert type(backend).capabilities.max_creates_per_minute is None
    started = time.monotonic()
    backend.create(SandboxSpec()).destroy()
    assert time.monotonic() - started >= 0.45 and backend.created == 1


def test_backend_create_concurrency_from_the_users_setting(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METAFLOW_SANDBOX_LOCAL_TEST_CONCURRENT_CREATES", "1")
    backend = LocalBackend(state_dir=str(tmp_path))
    limiter = backend.create_limiter()
    assert limiter.concurrent == 1 and backend.create_limiter() is limiter
    with limiter.hold():
        creating = threading.Thread(target=lambda: backend.create(SandboxSpec()).destroy())
        creating.start()
        time.sleep(0.3)
        assert backend.created == 0, "create did not wait for the slot"
    creating.join(10)
    assert backend.created == 1
    monkeypatch.setenv("METAFLOW_SANDBOX_LOCAL_TEST_CONCURRENT_CREATES", "bad")
    with pytest.raises(ConfigError):
        backend.create(SandboxSpec())
    assert backend.created == 1


def test_default_state_dir_follows_the_backend_setting(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METAFLOW_SANDBOX_LOCAL_TEST_STATE_DIR", str(tmp_path))
    assert LocalBackend().create_limiter().state_dir == str(tmp_path)


def test_labels_match() -> None:
    labels = {"a": "1", "b": "2"}
    assert labels_match(labels, None) and labels_match(labels, {}) and labels_match(labels, {"a": "1"})
    assert not labels_match(labels, {"a": "2"}) and not labels_match(labels, {"c": "1"})
