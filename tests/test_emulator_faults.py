"""Infrastructure faults on every remote backend, injected by the emulator its real SDK talks to.

One scenario, one test: each emulator names its own knobs (`KNOBS`), the expectations are the same."""

from __future__ import annotations

import importlib
import os
import subprocess
from dataclasses import dataclass, field

import pytest

from .conftest import Project

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Knobs:
    """How one emulator injects each fault, and which of its counters shows that it did."""

    emulator: str  # "module:Class" of the emulator's handle
    fail_creates: dict  # faults() making the next creates answer 503
    creates_failed: int  # how many creates that fails (E2B's SDK retries three times itself)
    killed: str  # the counter of sandboxes killed by `kill_on_marker`
    drop_stream: dict  # faults() cutting the output stream mid-step
    dropped: str | None = None  # its counter, where the emulator keeps one
    #: faults() making the provider refuse to extend a sandbox's lifetime once a marker is printed.
    freeze_lifetime: dict = field(default_factory=dict)


KNOBS = {
    "daytona": Knobs(
        emulator="metaflow_sandbox_testing.daytona_emulator:DaytonaEmulator",
        fail_creates={"fail_creates": 1, "fail_status": 503},
        creates_failed=1,
        killed="sandboxes_killed_by_fault",
        drop_stream={"drop_logs_after_lines": 2},
        dropped="log_streams_dropped_by_fault",
    ),
    "e2b": Knobs(
        emulator="metaflow_sandbox_testing.e2b_emulator:E2BEmulator",
        fail_creates={"fail_creates": 4, "fail_status": 503, "retry_after": 0},
        creates_failed=4,
        killed="sandboxes_killed_by_fault",
        drop_stream={"drop_stream_after_lines": 2},
        dropped="streams_dropped_by_fault",
        freeze_lifetime={"freeze_lifetime_marker": "LEASE-FLOW-WORK-STARTED"},
    ),
    "boxlite-remote": Knobs(
        emulator="metaflow_sandbox_testing.boxlite_emulator:BoxliteEmulator",
        fail_creates={"fail_creates": 1, "fail_status": 503},
        creates_failed=1,
        killed="boxes_killed_by_fault",
        drop_stream={"drop_attach_after_frames": 2},
    ),
}


@pytest.fixture
def faulty(project: Project):
    backend = os.environ.get("MFS_TEST_BACKEND", "")
    if backend not in KNOBS or project.emulator is None:
        pytest.fail(
            f"run this module on a remote backend's row ({', '.join(KNOBS)}; nox -s integration does)"
        )
    emulator = project.emulator
    emulator.reset_faults()  # type: ignore[attr-defined]
    yield project, emulator, KNOBS[backend]
    emulator.reset_faults()  # type: ignore[attr-defined]
    assert emulator.live_sandboxes() == [], "a sandbox outlived its scenario"  # type: ignore[attr-defined]


def _attempt(project: Project) -> int:
    return int(project.query("result = Flow('FaultFlow').latest_run['work'].task.data.attempt"))  # type: ignore[arg-type]


def test_create_503_is_retried_with_backoff(faulty):
    project, emulator, knobs = faulty
    before = emulator.stats()["creates_failed_by_fault"]
    emulator.faults(**knobs.fail_creates)
    result = project.run("fault_flow.py", "run")
    assert "retrying in" in result.stdout + result.stderr
    assert _attempt(project) == 0  # an infrastructure retry, not a user-code retry
    assert emulator.stats()["creates_failed_by_fault"] == before + knobs.creates_failed


def test_sandbox_killed_mid_step_is_rerun_by_retry(faulty):
    """The first attempt's sandbox dies when the step announces itself (it would then nap for minutes); the
    retry attempt's sandbox prints the same line and is left alone. Nothing here depends on timing."""
    project, emulator, knobs = faulty
    killed = emulator.stats()[knobs.killed]
    emulator.faults(kill_on_marker=1, kill_marker="FAULT-FLOW-WORK-STARTED")
    result = project.run("fault_flow.py", "run", "--first-attempt-nap", "300")
    assert _attempt(project) == 1
    assert emulator.stats()[knobs.killed] == killed + 1
    assert "FAULT-FLOW-WORK-STARTED attempt=1" in result.stdout + result.stderr


def test_dropped_stream_keeps_result_and_complete_logs(faulty):
    project, emulator, knobs = faulty
    dropped = emulator.stats()[knobs.dropped] if knobs.dropped else 0
    emulator.faults(**knobs.drop_stream)
    project.run("fault_flow.py", "run", "--lines", "20")
    assert _attempt(project) == 0
    if knobs.dropped:
        assert emulator.stats()[knobs.dropped] > dropped
    run_id, task_id = project.query(  # type: ignore[misc]
        "t = Flow('FaultFlow').latest_run['work'].task\nresult = [t.pathspec.split('/')[1], t.id]"
    )
    logs = project.run("fault_flow.py", "logs", f"{run_id}/work/{task_id}")
    for i in range(20):
        assert logs.stdout.count(f"LINE-{i}\n") == 1, logs.stdout


def test_stock_image_runs_through_the_shipped_client_bundle_and_no_api_key_inside(faulty, tmp_path):
    """An image with Python only (like python:3.11-slim, Daytona's default or E2B's base template): the launcher
    ships boto3 and requests from its own environment, once per datastore, instead of pip installing them in
    every sandbox; and the provider's API key, in the launcher's environment, never reaches the step."""
    from metaflow_sandbox_testing.clean_python import make_clean_python

    project, _, knobs = faulty
    module, _, name = knobs.emulator.partition(":")
    emulator_class = getattr(importlib.import_module(module), name)
    stock = make_clean_python(tmp_path / "stock", packages=())
    assert subprocess.run([stock, "-c", "import boto3"], capture_output=True).returncode != 0
    with emulator_class(python=stock, api_key="key-that-stays-outside") as emulator:
        project.env.update(emulator.env())
        result = project.run("fault_flow.py", "run")
        assert _attempt(project) == 0
        assert emulator.live_sandboxes() == []
    assert "key-that-stays-outside" not in result.stdout + result.stderr
    bucket = project.env["MFS_TEST_BUCKET"]
    keys = [o["Key"] for o in project.s3.client().list_objects_v2(Bucket=bucket)["Contents"]]  # type: ignore[attr-defined]
    bundles = [key for key in keys if "/.sandbox-packages/client-" in key]
    assert len(bundles) == 1, keys


def test_lifetime_running_out_mid_step_says_so(faulty):
    """Once the step has started, the provider refuses to extend the sandbox's 3 s lease: it ends at its end
    time on the emulator's clock. The run fails with one line naming the lifetime, not a hang or a bare 137."""
    project, emulator, knobs = faulty
    if not knobs.freeze_lifetime:
        pytest.skip("this backend's sandboxes live for the step's whole limit: no lease to run out mid-step")
    emulator.faults(**knobs.freeze_lifetime)
    result = project.run("lease_flow.py", "run", check=False, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ended while the step ran: its lifetime ran out" in output, output
    assert emulator.stats()["sandboxes_expired"] >= 1
