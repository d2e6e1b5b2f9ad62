"""Infrastructure faults on the Daytona backend, injected by the emulator the real SDK talks to."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import Project

pytestmark = pytest.mark.integration


@pytest.fixture
def daytona_project(project: Project):
    if project.daytona is None:
        pytest.fail(
            "run this module with MFS_TEST_BACKEND=daytona MFS_TEST_DATASTORE=s3 (nox -s integration does)"
        )
    emulator = project.daytona
    emulator.reset_faults()  # type: ignore[attr-defined]
    yield project, emulator
    emulator.reset_faults()  # type: ignore[attr-defined]
    assert emulator.live_sandboxes() == [], "a sandbox outlived its scenario"  # type: ignore[attr-defined]


def _attempt(project: Project) -> int:
    return int(project.query("result = Flow('FaultFlow').latest_run['work'].task.data.attempt"))  # type: ignore[arg-type]


def test_create_503_is_retried_with_backoff(daytona_project):
    project, emulator = daytona_project
    emulator.faults(fail_creates=1, fail_status=503)
    result = project.run("fault_flow.py", "run")
    assert "retrying in" in result.stdout + result.stderr
    assert _attempt(project) == 0  # an infrastructure retry, not a user-code retry


def test_sandbox_killed_mid_step_is_rerun_by_retry(daytona_project):
    """The first attempt's sandbox dies when the step announces itself (it would then nap for minutes); the
    retry attempt's sandbox prints the same line and is left alone. Nothing here depends on timing."""
    project, emulator = daytona_project
    killed = emulator.stats()["sandboxes_killed_by_fault"]
    emulator.faults(kill_on_marker=1, kill_marker="FAULT-FLOW-WORK-STARTED")
    result = project.run("fault_flow.py", "run", "--first-attempt-nap", "300")
    assert _attempt(project) == 1
    assert emulator.stats()["sandboxes_killed_by_fault"] == killed + 1
    assert "FAULT-FLOW-WORK-STARTED attempt=1" in result.stdout + result.stderr


def test_dropped_log_stream_keeps_result_and_complete_logs(daytona_project):
    project, emulator = daytona_project
    emulator.faults(drop_logs_after_lines=2)
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


def test_stock_image_without_boto3_runs_through_the_shipped_client_bundle(daytona_project, tmp_path):
    """An image with Python only (like python:3.11-slim or Daytona's default): the launcher ships boto3 and
    requests from its own environment, once per datastore, instead of pip installing them in every sandbox."""
    from metaflow_sandbox_testing.clean_python import make_clean_python
    from metaflow_sandbox_testing.daytona_emulator import DaytonaEmulator

    project, _ = daytona_project
    stock = make_clean_python(tmp_path / "stock", packages=())
    assert subprocess.run([stock, "-c", "import boto3"], capture_output=True).returncode != 0
    with DaytonaEmulator(python=stock) as emulator:
        project.env.update(emulator.env())
        project.run("fault_flow.py", "run")
        assert _attempt(project) == 0
        assert emulator.live_sandboxes() == []
    bucket = project.env["MFS_TEST_BUCKET"]
    keys = [o["Key"] for o in project.s3.client().list_objects_v2(Bucket=bucket)["Contents"]]  # type: ignore[attr-defined]
    bundles = [key for key in keys if "/.sandbox-packages/client-" in key]
    assert len(bundles) == 1, keys
