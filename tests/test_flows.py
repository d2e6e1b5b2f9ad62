"""Real flows with sandboxed steps, under local metadata and under a real metaflow-local-service."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from .conftest import Project

pytestmark = pytest.mark.integration


def latest(project: Project, flow: str, expr: str) -> object:
    return project.query(f"run = Flow({flow!r}).latest_run\nresult = {expr}")


def test_artifacts_flow_both_ways_and_logs_exactly_once(project: Project):
    with open(os.path.join(project.env["HOME"], "launcher-home-marker"), "w") as marker:
        marker.write("the launcher's home")
    project.run("artifacts_flow.py", "run", MFS_TEST_SECRET_TOKEN="canary-value")
    data = latest(
        project,
        "ArtifactsFlow",
        "dict(number=run['middle'].task.data.number, text=run['middle'].task.data.text,"
        " mapping=run['middle'].task.data.mapping, blob=len(run['middle'].task.data.blob),"
        " home=run['middle'].task.data.home_listing, leaked=run['middle'].task.data.leaked,"
        " stdout=run['middle'].task.stdout, stderr=run['middle'].task.stderr,"
        " ok=run['middle'].task.metadata_dict.get('attempt_ok'),"
        " same_as_local=run['middle'].task.successful == run['start'].task.successful,"
        " task=run['middle'].task.id, run=run.id)",
    )
    assert data["ok"] == "True" and data["same_as_local"] is True
    assert data["number"] == 42
    assert data["text"] == "hello from the sandbox"
    assert data["mapping"] == {"a": [1, 2], "b": {"c": "d"}, "seen": True}
    assert data["blob"] == 20 * 1024 * 1024
    # Only the extension's directory and the image's own login profile (the Daytona emulator's image has one).
    assert set(data["home"]) <= {"metaflow-sandbox", ".profile"}, "the sandbox must not see the user's home"
    assert not set(data["home"]) & set(os.listdir(project.env["HOME"])), "the user's home is visible"
    assert data["leaked"] == {}, "host environment leaked into the sandbox"
    assert data["stdout"].count("sandboxed stdout line") == 1
    assert data["stderr"].count("sandboxed stderr line") == 1
    logs = project.run("artifacts_flow.py", "logs", f"{data['run']}/middle/{data['task']}")
    assert logs.stdout.count("sandboxed stdout line") == 1


def test_foreach_of_twenty_sandboxed_branches(project: Project):
    project.run("foreach_flow.py", "run", "--max-workers", "4")
    data = latest(
        project,
        "ForeachFlow",
        "dict(total=run['join'].task.data.total, n=len(list(run['branch'])),"
        " ok=all(t.metadata_dict.get('attempt_ok') == 'True' for t in run['branch']))",
    )
    assert data == {"total": sum(i * i for i in range(20)), "n": 20, "ok": True}


def test_retry_reruns_a_failed_sandboxed_attempt(project: Project):
    result = project.run("retry_flow.py", "run")
    assert "first attempt fails on purpose" in result.stdout + result.stderr
    data = latest(
        project,
        "RetryFlow",
        "dict(a=run['flaky'].task.data.attempt_that_worked, ok=run['end'].task.metadata_dict.get('attempt_ok') == 'True')",
    )
    assert data == {"a": 1, "ok": True}


def test_catch_captures_exception_raised_in_sandbox(project: Project):
    project.run("catch_flow.py", "run")
    failure = latest(project, "CatchFlow", "repr(run['boom'].task.data.failure)")
    assert "raised inside the sandbox" in failure


def test_timeout_kills_sandboxed_step_and_everything_in_it(project: Project):
    started = time.monotonic()
    result = project.run("timeout_flow.py", "run", check=False, timeout=180)
    assert result.returncode != 0
    assert "timed out" in (result.stdout + result.stderr).lower()
    assert time.monotonic() - started < 120
    assert project.live_sandboxes() == []


def test_resume_reruns_failed_sandboxed_step_in_a_sandbox(project: Project):
    failed = project.run("resume_flow.py", "run", check=False, MFS_FAIL="1")
    assert failed.returncode != 0
    project.run("resume_flow.py", "resume", MFS_FAIL="0")
    data = latest(
        project, "ResumeFlow", "dict(r=run['work'].task.data.result, s=run['work'].task.data.in_sandbox)"
    )
    assert data == {"r": 20, "s": True}


def test_ctrl_c_leaves_no_sandbox_behind(project: Project):
    project.flow("foreach_flow.py")
    proc = subprocess.Popen(
        project.command("foreach_flow.py", "run", "--max-workers", "4", "--nap", "60", "--width", "8"),
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(project.live_sandboxes()) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert project.live_sandboxes(), "no sandbox started"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        sent = time.monotonic()
        while project.live_sandboxes() and time.monotonic() - sent < 5:
            time.sleep(0.1)
        assert project.live_sandboxes() == [], "sandbox processes outlived Ctrl-C by 5 s"
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
