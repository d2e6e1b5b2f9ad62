"""Infrastructure faults on the E2B backend, injected by the emulator the real e2b SDK talks to."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import Project

pytestmark = pytest.mark.integration


@pytest.fixture
def e2b_project(project: Project):
    if project.e2b is None:
        pytest.fail(
            "run this module with MFS_TEST_BACKEND=e2b MFS_TEST_DATASTORE=s3 (nox -s integration does)"
        )
    emulator = project.e2b
    emulator.reset_faults()  # type: ignore[attr-defined]
    yield project, emulator
    emulator.reset_faults()  # type: ignore[attr-defined]
    assert emulator.live_sandboxes() == [], "a sandbox outlived its scenario"  # type: ignore[attr-defined]


def _attempt(project: Project) -> int:
    return int(project.query("result = Flow('FaultFlow').latest_run['work'].task.data.attempt"))  # type: ignore[arg-type]


def test_create_503_is_retried_with_backoff(e2b_project):
    """Four 503s: the SDK's own three retries use them up, then the launcher's backoff tries again."""
    project, emulator = e2b_project
    before = emulator.stats()["creates_failed_by_fault"]
    emulator.faults(fail_creates=4, fail_status=503, retry_after=0)
    result = project.run("fault_flow.py", "run")
    assert "retrying in" in result.stdout + result.stderr
    assert _attempt(project) == 0  # an infrastructure retry, not a user-code retry
    assert emulator.stats()["creates_failed_by_fault"] == before + 4


def test_sandbox_killed_mid_step_is_rerun_by_retry(e2b_project):
    """The first attempt's sandbox dies when the step announces itself (it would then nap for minutes); the
    retry attempt's sandbox prints the same line and is left alone. Nothing here depends on timing."""
    project, emulator = e2b_project
    killed = emulator.stats()["sandboxes_killed_by_fault"]
    emulator.faults(kill_on_marker=1, kill_marker="FAULT-FLOW-WORK-STARTED")
    result = project.run("fault_flow.py", "run", "--first-attempt-nap", "300")
    assert _attempt(project) == 1
    assert emulator.stats()["sandboxes_killed_by_fault"] == killed + 1
    assert "FAULT-FLOW-WORK-STARTED attempt=1" in result.stdout + result.stderr


def test_dropped_stream_keeps_result_and_complete_logs(e2b_project):
    project, emulator = e2b_project
    dropped = emulator.stats()["streams_dropped_by_fault"]
    emulator.faults(drop_stream_after_lines=2)
    project.run("fault_flow.py", "run", "--lines", "20")
    assert _attempt(project) == 0
    assert emulator.stats()["streams_dropped_by_fault"] > dropped
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


def test_lifetime_running_out_mid_step_says_so(e2b_project):
    """Once the step has started, E2B refuses to extend the sandbox's 3 s lease: it ends at its endAt on the
    emulator's clock. The run fails with one line naming the lifetime, not with a hang or a bare 137."""
    project, emulator = e2b_project
    emulator.faults(freeze_lifetime_marker="LEASE-FLOW-WORK-STARTED")
    result = project.run("lease_flow.py", "run", check=False, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ended while the step ran: its lifetime ran out" in output, output
    assert emulator.stats()["sandboxes_expired"] >= 1


def test_stock_image_without_boto3_runs_through_the_shipped_client_bundle(e2b_project, tmp_path):
    """An image with Python only (like E2B's base template): the launcher ships boto3 and requests from its own
    environment, once per datastore, instead of pip installing them in every sandbox."""
    from metaflow_sandbox_testing.clean_python import make_clean_python
    from metaflow_sandbox_testing.e2b_emulator import E2BEmulator

    project, _ = e2b_project
    stock = make_clean_python(tmp_path / "stock", packages=())
    assert subprocess.run([stock, "-c", "import boto3"], capture_output=True).returncode != 0
    with E2BEmulator(python=stock) as emulator:
        project.env.update(emulator.env())
        project.run("fault_flow.py", "run")
        assert _attempt(project) == 0
        assert emulator.live_sandboxes() == []
