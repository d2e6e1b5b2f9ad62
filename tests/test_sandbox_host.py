"""The warm sandbox host: a SIGKILLed run leaves no sandbox, a stale host is replaced, its socket is private,
and the in-process launcher stays available."""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Project

pytestmark = pytest.mark.integration

HOST_MODULE = "metaflow_extensions.sandbox.plugins.sandbox.sandbox_host"
HOST_IDENTITY = "metaflow_extensions.sandbox.plugins.sandbox.host_identity"


def _sandbox_count(project: Project) -> int:
    """How many sandboxes exist (bubblewrap: sandbox directories; a cloud backend: the emulator's live ones)."""
    if project.emulator is not None:
        return len(project.live_sandboxes())
    state = Path(project.env["METAFLOW_SANDBOX_BUBBLEWRAP_STATE_DIR"])
    return len(list(state.glob("bwrap-*"))) if state.exists() else 0


def test_sigkill_of_a_run_leaves_no_sandbox_within_5_seconds(project: Project):
    """The runtime and every task process die at once (OOM killer, a cancelled CI job); the host notices each
    client is gone and destroys its sandbox."""
    project.flow("foreach_flow.py")
    proc = subprocess.Popen(
        project.command("foreach_flow.py", "run", "--max-workers", "3", "--nap", "120", "--width", "3"),
        cwd=project.root,
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while _sandbox_count(project) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _sandbox_count(project) == 3, "the sandboxes did not start"
        time.sleep(1)  # their steps are running
        os.killpg(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        while project.live_sandboxes() and time.monotonic() - killed < 5:
            time.sleep(0.1)
        assert project.live_sandboxes() == [], "sandboxes outlived a SIGKILLed run by 5 s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_sandboxes_of_the_next_splits_are_prepared_ahead_and_none_is_left(project: Project):
    """One worker, four splits: while a split runs, the host prepares the next one's sandbox (a mounting
    backend's with a staging directory of its own, which its task adopts). Every sandbox serves one task; no
    sandbox and no staging directory is left after the run, and a killed launcher's leftovers are removed."""
    dead_launcher = _plant_dead_launchers_staging(project)
    result = project.run("foreach_flow.py", "run", "--max-workers", "1", "--width", "4")
    output = result.stdout + result.stderr
    running = re.findall(r"Running in \w+ sandbox (\S+)( \(prepared ahead\))?", output)
    assert len(running) == 4 and len({sandbox for sandbox, _ in running}) == 4, output
    assert sum(1 for _, flag in running if flag) == 3, output
    assert "total 14" in output
    _assert_eventually(lambda: project.live_sandboxes() == [], "sandboxes were left")
    _assert_eventually(lambda: _staging_dirs(project) == [], "staging directories were left")
    _assert_eventually(lambda: not dead_launcher.exists(), "a dead launcher's staging was not removed")


def test_a_failing_split_leaves_no_sandbox_prepared_for_the_rest(project: Project):
    """The run stops at a failed split; what was prepared for later splits is destroyed with it."""
    result = project.run(
        "foreach_flow.py", "run", "--max-workers", "1", "--width", "4", "--fail-at", "1", check=False
    )
    assert result.returncode != 0 and "failing split 1 on purpose" in result.stdout + result.stderr
    _assert_eventually(lambda: project.live_sandboxes() == [], "sandboxes were left")
    _assert_eventually(lambda: _staging_dirs(project) == [], "staging directories were left")


def _staging_dirs(project: Project) -> list[Path]:
    """Task staging directories (`<cache>/staging/<launcher>/<task>`) on this machine."""
    return list(Path(project.env["METAFLOW_SANDBOX_CACHE_DIR"]).glob("staging/*/*"))


def _plant_dead_launchers_staging(project: Project) -> Path:
    """What a SIGKILLed launcher leaves: a staging tree under the label of a process that has exited."""
    label = subprocess.run(
        [sys.executable, "-c", f"from {HOST_IDENTITY} import host_label; print(host_label())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    leftover = Path(project.env["METAFLOW_SANDBOX_CACHE_DIR"]) / "staging" / label
    (leftover / "0123abcd").mkdir(parents=True)
    (leftover / "0123abcd" / "0.data.json").write_text("{}")
    return leftover


def _assert_eventually(check, what: str, seconds: float = 30.0) -> None:
    """What a task removes goes after its result is out (on a housekeeping thread), and a sandbox still being
    prepared ahead is destroyed once it is made: wait for it a while (a loaded machine is slow)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_the_host_socket_is_private_to_its_user(project: Project):
    project.run("artifacts_flow.py", "run")
    directory = Path(project.env["METAFLOW_SANDBOX_HOST_DIR"])
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    sockets = [p for p in directory.iterdir() if p.suffix == ".sock"]
    assert sockets, f"no host socket in {directory}"
    for path in sockets:
        info = path.lstat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.getuid()


def test_a_host_running_other_code_is_replaced(tmp_path: Path):
    """A client whose code differs (an upgrade, an edited checkout) makes the host retire and free its
    socket; it exits, and the next host starts on the same path."""
    from metaflow_extensions.sandbox.plugins.sandbox import host_protocol as wire

    path = str(tmp_path / "host" / "h.sock")
    env = {**os.environ, "METAFLOW_SANDBOX_HOST_IDLE": "60"}
    old = subprocess.Popen([sys.executable, "-m", HOST_MODULE, "--socket", path], env=env)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        wire.send(client, wire.HELLO, wire.Hello("another-version", "/", []).encode())
        kind, _ = wire.receive(client)
        client.close()
        assert kind == wire.STALE
        assert old.wait(timeout=10) == 0, "the stale host did not exit"
        assert not os.path.exists(path), "the stale host did not free its socket"
        new = subprocess.Popen([sys.executable, "-m", HOST_MODULE, "--socket", path], env=env)
        try:
            while not os.path.exists(path) and time.monotonic() < deadline + 30:
                time.sleep(0.05)
            assert os.path.exists(path) and new.poll() is None
        finally:
            new.terminate()
            new.wait()
    finally:
        if old.poll() is None:
            old.kill()
            old.wait()


@pytest.mark.parametrize("launcher", ["process", "cli"])
def test_the_task_process_can_run_the_executor_itself(tmp_path, launcher):
    """METAFLOW_SANDBOX_LAUNCHER=process (the light launcher) or cli: no host is involved."""
    from .conftest import _base_env

    root = tmp_path / "project"
    (root / ".metaflow").mkdir(parents=True)
    env = {
        **_base_env(tmp_path),
        "METAFLOW_SANDBOX_LAUNCHER": launcher,
        "METAFLOW_SANDBOX_BACKEND": "bubblewrap",
    }
    project = Project(root=root, metadata="local", env=env)
    result = project.run("retry_flow.py", "run")
    assert "sandbox step flaky" not in result.stderr  # no usage errors from the CLI
    data = project.query("result = Flow('RetryFlow').latest_run['flaky'].task.data.attempt_that_worked")
    assert data == 1
    assert not (Path(env["METAFLOW_SANDBOX_HOST_DIR"])).exists(), "a host was started"
