"""DaytonaSandbox against the emulator: workdir, what is sent to Daytona, secrets, lost streams, dying
sandboxes, lifetimes, and being interrupted or destroyed while run() blocks."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from metaflow_sandbox_core import NetworkPolicy, SandboxError, SandboxSpec, SandboxTimeoutError
from metaflow_sandbox_daytona import DaytonaBackend, DaytonaSandbox
from metaflow_sandbox_testing.conformance import parse_env0
from metaflow_sandbox_testing.daytona_emulator import DaytonaEmulator

Create = Callable[..., DaytonaSandbox]


def captured(sandbox: DaytonaSandbox, argv: list[str], **kwargs: Any) -> tuple[int, list[tuple[str, bytes]]]:
    lines: list[tuple[str, bytes]] = []
    kwargs.setdefault("timeout", 30)
    code = sandbox.run(argv, on_output=lambda stream, line: lines.append((stream, line)), **kwargs)
    return code, lines


def live(emulator: DaytonaEmulator, sandbox: DaytonaSandbox) -> dict[str, Any]:
    return next(item for item in emulator.live_sandboxes() if item["id"] == sandbox.id)


def test_workdir_is_the_home_directory_daytona_reports(emulator: DaytonaEmulator, create: Create) -> None:
    sandbox = create()
    assert sandbox.workdir == live(emulator, sandbox)["home"]
    code, lines = captured(sandbox, ["pwd"])
    assert code == 0 and lines == [("stdout", f"{sandbox.workdir}\n".encode())]
    code, lines = captured(sandbox, ["pwd"], cwd=f"{sandbox.workdir}/..")
    assert lines[0][1].strip() != sandbox.workdir.encode()


def test_the_create_request(emulator: DaytonaEmulator, create: Create) -> None:
    image = create(
        image="python:3.12-slim",
        cpu=1.5,
        memory_mb=1500,
        disk_mb=3000,
        network=NetworkPolicy.NONE,
        env={"SPEC_VAR": "v"},
        labels={"metaflow.flow": "F", "metaflow.run": "1"},
    )
    asked = live(emulator, image)
    assert (asked["cpu"], asked["memory"], asked["disk"]) == (2, 2, 3)
    assert asked["dockerfile"] == "FROM python:3.12-slim\n" and asked["snapshot"] is None
    assert asked["network_block_all"] is True and asked["env"] == {"SPEC_VAR": "v"}
    assert asked["labels"]["metaflow.flow"] == "F" and asked["labels"]["metaflow.run"] == "1"
    assert asked["auto_delete_interval"] == 0 and asked["auto_stop_interval"] == 15  # ephemeral, auto-stop
    snapshot = create(options={"snapshot": "warm-python", "ttl_minutes": 90, "auto_stop_minutes": 0})
    asked = live(emulator, snapshot)
    assert asked["snapshot"] == "warm-python" and asked["dockerfile"] is None
    assert (
        asked["network_block_all"] is False
        and asked["ttl_minutes"] == 90
        and asked["auto_stop_interval"] == 0
    )
    filtered = create(
        network=NetworkPolicy.DATASTORE, network_allow=("127.0.0.1:9000",), egress_allow=("api.example.org",)
    )
    asked = live(emulator, filtered)
    assert asked["network_block_all"] is False
    assert (asked["network_allow_list"], asked["domain_allow_list"]) == ("127.0.0.1/32", "api.example.org")


def test_the_api_key_never_reaches_a_command(
    emulator: DaytonaEmulator, env_backend: DaytonaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAUNCHER_ONLY_SECRET", "launcher-secret-value")
    key = emulator.env()["DAYTONA_API_KEY"]
    sandbox = env_backend.create(SandboxSpec(network="full", env={"FROM_SPEC": "1"}))
    try:
        code, lines = captured(sandbox, ["env", "-0"], env={"FROM_RUN": "2"})
        output = b"".join(line for _, line in lines)
        seen = parse_env0(output)
        assert code == 0 and seen["FROM_SPEC"] == "1" and seen["FROM_RUN"] == "2"
        assert key.encode() not in output and b"DAYTONA_" not in output
        assert b"launcher-secret-value" not in output
        # Nor in what Daytona was asked to run (command strings are visible through its API).
        assert key not in str(live(emulator, sandbox))
    finally:
        sandbox.destroy()


def test_output_and_exit_code_survive_a_dropped_log_stream(
    emulator: DaytonaEmulator, create: Create, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox = create()
    emulator.faults(drop_logs_after_lines=1)
    caplog.set_level(logging.WARNING, logger="metaflow_sandbox_daytona")
    started = time.monotonic()
    code, lines = captured(sandbox, ["sh", "-c", "echo first; sleep 0.3; echo second; sleep 0.7; exit 6"])
    assert code == 6 and time.monotonic() - started >= 1.0
    assert lines[0] == ("stdout", b"first\n")
    assert "Lost the log stream" in caplog.text


def test_a_sandbox_that_dies_mid_command_returns_137(emulator: DaytonaEmulator, create: Create) -> None:
    sandbox = create()
    emulator.faults(kill_on_marker=1, kill_marker="running")
    started = time.monotonic()
    code, lines = captured(sandbox, ["sh", "-c", "echo running; sleep 30"])
    assert code == 137 and lines == [("stdout", b"running\n")]
    assert time.monotonic() - started < 10
    with pytest.raises(SandboxError):
        sandbox.run(["true"], timeout=10)


def test_a_running_command_keeps_the_sandbox_active(emulator: DaytonaEmulator, create: Create) -> None:
    """While run() waits, the backend refreshes the sandbox's activity so auto-stop does not stop it."""
    sandbox = create()
    sandbox._heartbeat = 0.2  # normally a third of auto_stop_minutes (at least 10 s)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(sandbox.run(["sleep", "1.5"], timeout=30)))
    started = time.time()
    runner.start()
    time.sleep(1.0)
    seen = live(emulator, sandbox)["last_activity"]  # no request but the heartbeat's since the exec
    runner.join(30)
    assert codes == [0] and seen > started + 0.5


def test_timeout_kills_the_command(emulator: DaytonaEmulator, create: Create) -> None:
    sandbox = create()
    with pytest.raises(SandboxTimeoutError):
        sandbox.run(["sleep", "30"], timeout=0.5)
    assert _settles(lambda: live(emulator, sandbox)["running_commands"] == 0)


def test_timeout_fires_while_output_keeps_flowing(emulator: DaytonaEmulator, create: Create) -> None:
    sandbox = create()
    lines = 0

    def count(stream: str, line: bytes) -> None:
        nonlocal lines
        lines += 1

    started = time.monotonic()
    with pytest.raises(SandboxTimeoutError):
        sandbox.run(["sh", "-c", "while :; do echo tick; sleep 0.01; done"], timeout=1, on_output=count)
    assert time.monotonic() - started < 5 and lines > 10
    assert _settles(lambda: live(emulator, sandbox)["running_commands"] == 0)


def test_exception_in_on_output_stops_the_command(emulator: DaytonaEmulator, create: Create) -> None:
    sandbox = create()

    def explode(stream: str, line: bytes) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        sandbox.run(["sh", "-c", "echo hi; sleep 30"], timeout=60, on_output=explode)
    assert _settles(lambda: live(emulator, sandbox)["running_commands"] == 0)
    assert sandbox.run(["true"], timeout=30) == 0  # the sandbox is still usable


@pytest.fixture
def alarm() -> Iterator[Callable[[float, Callable[[], None]], None]]:
    previous = signal.getsignal(signal.SIGALRM)

    def arm(after: float, action: Callable[[], None]) -> None:
        signal.signal(signal.SIGALRM, lambda signum, frame: action())
        signal.setitimer(signal.ITIMER_REAL, after)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_destroy_from_a_signal_handler_while_run_blocks(
    emulator: DaytonaEmulator, create: Create, alarm: Callable[[float, Callable[[], None]], None]
) -> None:
    sandbox = create()
    alarm(0.5, sandbox.destroy)
    started = time.monotonic()
    assert sandbox.run(["sleep", "30"], timeout=60) == 137
    assert time.monotonic() - started < 5
    assert sandbox.id not in {item["id"] for item in emulator.live_sandboxes()}
    with pytest.raises(SandboxError, match="destroyed"):
        sandbox.run(["true"])


def test_interrupt_while_run_blocks_kills_the_command(
    emulator: DaytonaEmulator, create: Create, alarm: Callable[[float, Callable[[], None]], None]
) -> None:
    sandbox = create()

    def interrupt() -> None:
        raise KeyboardInterrupt

    alarm(0.5, interrupt)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sandbox.run(["sleep", "30"], timeout=60)
    assert time.monotonic() - started < 5
    assert _settles(lambda: live(emulator, sandbox)["running_commands"] == 0)


def test_destroy_from_many_threads_at_once(emulator: DaytonaEmulator, backend: DaytonaBackend) -> None:
    sandbox = backend.create(SandboxSpec(network="full"))
    threads = [threading.Thread(target=sandbox.destroy) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    backend.destroy(sandbox.id)  # already gone: fine
    assert sandbox.id not in {item["id"] for item in emulator.live_sandboxes()}


def test_many_sandboxes_from_threads(emulator: DaytonaEmulator, backend: DaytonaBackend) -> None:
    """Fan-out in one process: 20 threads each create, run and destroy."""
    results: list[object] = []

    def task(index: int) -> None:
        try:
            with backend.create(SandboxSpec(network="full", labels={"fan": "threads"})) as sandbox:
                code, lines = captured(sandbox, ["sh", "-c", f"echo task{index}"])
                results.append((code, lines))
        except BaseException as error:
            results.append(error)

    threads = [threading.Thread(target=task, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results, key=str) == sorted(
        [(0, [("stdout", f"task{i}\n".encode())]) for i in range(20)], key=str
    )


def _settles(condition: Callable[[], bool], within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_backend_dropped_without_close_leaves_nothing_unclosed(emulator: DaytonaEmulator) -> None:
    """The extension never closes its backend: the client must still be closed at exit, quietly."""
    script = textwrap.dedent(
        """
        import gc
        from metaflow_sandbox_core import SandboxSpec, load_backend

        def task():
            sandbox = load_backend("daytona").create(SandboxSpec(network="full"))
            code = sandbox.run(["true"], timeout=30)
            sandbox.destroy()
            return code

        print(task())
        gc.collect()
        """
    )
    env = {**os.environ, **emulator.env()}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "0", result.stderr
    assert "Unclosed" not in result.stderr and "Task was destroyed" not in result.stderr, result.stderr
