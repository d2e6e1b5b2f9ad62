"""Infrastructure faults on boxlite's REST mode, injected by the emulator the real boxlite SDK talks to."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import Project

pytestmark = pytest.mark.integration


@pytest.fixture
def boxlite_project(project: Project):
    if project.boxlite is None:
        pytest.fail(
            "run this module with MFS_TEST_BACKEND=boxlite-remote MFS_TEST_DATASTORE=s3 (nox -s integration does)"
        )
    emulator = project.boxlite
    emulator.reset_faults()  # type: ignore[attr-defined]
    yield project, emulator
    emulator.reset_faults()  # type: ignore[attr-defined]
    assert emulator.live_boxes() == [], "a box outlived its scenario"  # type: ignore[attr-defined]


def _attempt(project: Project) -> int:
    return int(project.query("result = Flow('FaultFlow').latest_run['work'].task.data.attempt"))  # type: ignore[arg-type]


def test_create_503_is_retried_with_backoff(boxlite_project):
    project, emulator = boxlite_project
    emulator.faults(fail_creates=1, fail_status=503)
    result = project.run("fault_flow.py", "run")
    assert "retrying in" in result.stdout + result.stderr
    assert _attempt(project) == 0  # an infrastructure retry, not a user-code retry
    assert emulator.stats()["creates_failed_by_fault"] >= 1


def test_box_killed_mid_step_is_rerun_by_retry(boxlite_project):
    """The first attempt's box dies when the step announces itself (it would then nap for minutes); the retry
    attempt's box prints the same line and is left alone. Nothing here depends on timing."""
    project, emulator = boxlite_project
    killed = emulator.stats()["boxes_killed_by_fault"]
    emulator.faults(kill_on_marker=1, kill_marker="FAULT-FLOW-WORK-STARTED")
    result = project.run("fault_flow.py", "run", "--first-attempt-nap", "300")
    assert _attempt(project) == 1
    assert emulator.stats()["boxes_killed_by_fault"] == killed + 1
    assert "FAULT-FLOW-WORK-STARTED attempt=1" in result.stdout + result.stderr


def test_dropped_attach_stream_keeps_result_and_complete_logs(boxlite_project):
    project, emulator = boxlite_project
    emulator.faults(drop_attach_after_frames=2)
    project.run("fault_flow.py", "run", "--lines", "20")
    assert _attempt(project) == 0
    run_id, task_id = project.query(  # type: ignore[misc]
        "t = Flow('FaultFlow').latest_run['work'].task\nresult = [t.pathspec.split('/')[1], t.id]"
    )
    logs = subprocess.run(
        project.command("fault_flow.py", "logs", f"{run_id}/work/{task_id}"),
        cwd=project.root,
        env=project.env,
        capture_output=True,
        text=True,
        check=True,
    )
    for i in range(20):
        assert logs.stdout.count(f"LINE-{i}\n") == 1, logs.stdout


def test_stock_image_without_boto3_and_no_api_key_inside(boxlite_project, tmp_path):
    """A box image with Python only (like python:3.12-slim): the launcher ships boto3 and requests; and the
    SDK's API key, in the launcher's environment, never reaches the step."""
    from metaflow_sandbox_testing.boxlite_emulator import BoxliteEmulator
    from metaflow_sandbox_testing.clean_python import make_clean_python

    project, _ = boxlite_project
    stock = make_clean_python(tmp_path / "stock", packages=())
    assert subprocess.run([stock, "-c", "import boto3"], capture_output=True).returncode != 0
    with BoxliteEmulator(python=stock, api_key="key-that-stays-outside") as emulator:
        project.env.update(emulator.env())
        result = project.run("fault_flow.py", "run")
        assert _attempt(project) == 0
        assert emulator.live_boxes() == []
    assert "key-that-stays-outside" not in result.stdout + result.stderr
