"""BubblewrapSandbox behaviour beyond the conformance suite (which covers argument checks, the destroyed
guard, lifetimes and destroy from a callback for every backend), against real bwrap."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from metaflow_sandbox_bubblewrap import BubblewrapSandbox
from metaflow_sandbox_core import ConfigError, SandboxTimeoutError

CreateSandbox = Callable[..., BubblewrapSandbox]
Shell = Callable[..., tuple[int, str]]


def bwrap_children() -> set[int]:
    """Pids of bwrap processes that are children of this test process."""
    children = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{pid}/comm", "rb") as comm:
                name = comm.read().strip()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and name == b"bwrap":
            children.add(int(pid))
    return children


def test_files_persist_across_commands_and_cwd_defaults_to_workdir(
    create_bubblewrap: CreateSandbox, shell: Shell
) -> None:
    sandbox = create_bubblewrap()
    assert shell(sandbox, "pwd; echo $HOME; echo kept > note; echo home > ~/h; echo t > /tmp/t") == (
        0,
        "/sandbox\n/home/sandbox\n",
    )
    assert shell(sandbox, "cat note ~/h /tmp/t") == (0, "kept\nhome\nt\n")
    assert shell(sandbox, "pwd", cwd="/tmp") == (0, "/tmp\n")


def test_exception_in_callback_kills_the_command_and_propagates(create_bubblewrap: CreateSandbox) -> None:
    sandbox = create_bubblewrap()

    def explode(stream: str, line: bytes) -> None:
        raise RuntimeError("callback failed")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="callback failed"):
        sandbox.run(["sh", "-c", "echo go; sleep 30"], on_output=explode, timeout=60)
    assert time.monotonic() - started < 5
    assert not bwrap_children()
    assert sandbox.run(["true"], timeout=30) == 0


def test_timeout_applies_when_the_command_closes_its_pipes(create_bubblewrap: CreateSandbox) -> None:
    sandbox = create_bubblewrap()
    started = time.monotonic()
    with pytest.raises(SandboxTimeoutError):
        sandbox.run(["sh", "-c", "exec >&- 2>&-; sleep 30"], timeout=1)
    assert time.monotonic() - started < 4
    assert not bwrap_children()


def test_concurrent_commands_and_destroy(create_bubblewrap: CreateSandbox) -> None:
    sandbox = create_bubblewrap()
    codes: list[int] = []
    threads = [
        threading.Thread(target=lambda: codes.append(sandbox.run(["sleep", "30"], timeout=60)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(bwrap_children()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    sandbox.destroy()
    for thread in threads:
        thread.join(5)
    assert codes == [137, 137, 137]
    assert not bwrap_children()


def test_upload_outside_reachable_dirs_is_refused(create_bubblewrap: CreateSandbox, tmp_path: Path) -> None:
    sandbox = create_bubblewrap()
    with pytest.raises(ConfigError, match="/home/sandbox"):
        sandbox.upload(b"x", "/etc/profile")
    with pytest.raises(ConfigError):
        sandbox.download("/usr/bin/env")
