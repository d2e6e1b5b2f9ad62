"""Task directories are grouped by the launcher that made them; those of launchers that are gone are removed."""

import os
import socket
import subprocess
import sys

from metaflow_extensions.sandbox.plugins.sandbox import task_dirs
from metaflow_extensions.sandbox.plugins.sandbox.host_identity import host_label


def _dead_label() -> str:
    """The label of a process that has exited (its pid is free, or reused by a process started later)."""
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from metaflow_extensions.sandbox.plugins.sandbox.host_identity import "
            "host_label; print(host_label())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return child.stdout.strip()


def _plant(cache, kind, owner):
    directory = cache / kind / owner / "0123abcd"
    directory.mkdir(parents=True)
    (directory / "leftover").write_text("x")
    return directory


def test_a_task_dir_is_under_this_launchers_label(tmp_path):
    path = task_dirs.task_dir(str(tmp_path), "staging")
    assert os.path.dirname(os.path.dirname(path)) == str(tmp_path / "staging")
    assert os.path.basename(os.path.dirname(path)) == host_label()
    assert not os.path.exists(path)  # the caller makes it, with the mode it needs
    assert task_dirs.task_dir(str(tmp_path), "staging") != path


def test_only_the_dirs_of_launchers_that_are_gone_are_removed(tmp_path):
    dead = _dead_label()
    gone = [_plant(tmp_path, kind, dead) for kind in task_dirs.KINDS]
    ours = _plant(tmp_path, "staging", host_label())
    elsewhere = _plant(tmp_path, "relay", f"not-{socket.gethostname()}:1:1")
    unlabelled = tmp_path / "staging" / "9f8e7d6c"
    unlabelled.mkdir()
    task_dirs.sweep_dead_owners(str(tmp_path))
    assert [path.exists() for path in gone] == [False, False]
    assert ours.exists() and elsewhere.exists() and unlabelled.exists()


def test_a_cache_is_swept_once_per_process(tmp_path, monkeypatch):
    queued = []
    monkeypatch.setattr(task_dirs, "later", queued.append)
    task_dirs.sweep_once(str(tmp_path))
    task_dirs.sweep_once(str(tmp_path))
    task_dirs.sweep_once(str(tmp_path / "other"))
    assert len(queued) == 2
