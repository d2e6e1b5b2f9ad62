"""Escape canaries, forged metadata, live logs, the trampoline CLI, leak sweeping."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metaflow_sandbox_core import SandboxSpec, load_backend

from .conftest import Project

pytestmark = pytest.mark.integration


def test_untrusted_step_reaches_nothing_it_was_not_given(project: Project):
    if project.emulator is not None:
        pytest.skip(
            "the remote backends' emulators run sandboxes as local processes and isolate no files; escape canaries apply to real sandboxes"
        )
    secret = project.root / "credentials.txt"
    secret.write_text("canary-secret")
    other = project.root / ".metaflow" / "OtherFlow"
    other.mkdir()
    aws = Path(project.env["HOME"]) / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text("[default]\naws_secret_access_key = canary")
    project.run(
        "escape_flow.py", "run", "--secret-path", str(secret), "--home-secret-path", str(aws / "credentials")
    )
    data = project.query(
        "t = Flow('EscapeFlow').latest_run['untrusted'].task\n"
        "result = dict(secret=t.data.read_secret, other=t.data.list_other_flows, "
        "write=t.data.write_datastore, home=t.data.read_home_secret)"
    )
    assert data["secret"] == "FileNotFoundError"  # the project directory is not mounted
    assert data["other"] == "FileNotFoundError"  # other flows in the datastore are invisible
    if project.datastore == "local":
        assert data["write"] in ("OSError", "PermissionError")  # the real datastore is read-only (EROFS)
    assert data["home"] == "FileNotFoundError"  # the launcher user's home (and its keys) is invisible
    assert not any(p.name == "planted" for p in (project.root / ".metaflow").rglob("planted"))


def test_forged_metadata_for_another_task_is_refused(project: Project):
    result = project.run("escape_flow.py", "run", "--forge", "True", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "relay refused" in output and "start/1/_meta/sysmeta_attempt_ok_1.json is outside" in output, (
        output
    )
    forged = list((project.root / ".metaflow").rglob("sysmeta_attempt_ok_1.json"))
    assert forged == [], "forged metadata reached the launcher's metadata"


def test_first_log_line_arrives_while_the_step_runs(project: Project):
    project.flow("logs_flow.py")
    proc = subprocess.Popen(
        project.command("logs_flow.py", "run"),
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        for marker in ("LIVE-FIRST", "LIVE-SECOND"):
            if marker in line and marker not in seen:
                seen[marker] = time.monotonic()
    assert proc.wait() == 0
    # The step sleeps 3 s between the two lines; a launcher that buffered would deliver them together.
    assert seen["LIVE-SECOND"] - seen["LIVE-FIRST"] > 2.0


def test_metaflow_local_service_run_form(tmp_path):
    """`metaflow-local-service run python flow.py run`, exactly as a user types it."""
    from .conftest import _base_env

    service = shutil.which("metaflow-local-service", path=os.path.dirname(sys.executable))
    assert service, "metaflow-local-service is a test dependency"
    root = tmp_path / "project"
    root.mkdir()
    env = {
        **_base_env(tmp_path),
        "METAFLOW_SANDBOX_BACKEND": "bubblewrap",
    }  # a launcher test, not a backend test
    shutil.copy(os.path.join(os.path.dirname(__file__), "flows", "artifacts_flow.py"), root)
    try:
        result = subprocess.run(
            [service, "run", sys.executable, "artifacts_flow.py", "run"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "end saw hello from the sandbox" in result.stdout + result.stderr
        check = subprocess.run(
            [
                service,
                "run",
                sys.executable,
                "-c",
                "from metaflow import Flow, namespace; namespace(None); "
                "print('NUMBER', Flow('ArtifactsFlow').latest_run['middle'].task.data.number)",
            ],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "NUMBER 42" in check.stdout, check.stdout + check.stderr
    finally:
        subprocess.run([service, "stop"], env=env, capture_output=True, timeout=60)


def test_sandbox_list_and_sweep_find_leaked_sandboxes(project: Project, tmp_path):
    project.flow("catch_flow.py")
    state = tmp_path / "bwrap-state"
    env = {**project.env, "METAFLOW_SANDBOX_BUBBLEWRAP_STATE_DIR": str(state)}
    os.environ["METAFLOW_SANDBOX_BUBBLEWRAP_STATE_DIR"] = str(state)
    try:
        backend = load_backend("bubblewrap")
        leaked = backend.create(
            SandboxSpec(
                labels={
                    "metaflow.flow": "CatchFlow",
                    "metaflow.run": "99",
                    "metaflow.step": "boom",
                    "metaflow.task": "2",
                    "metaflow.attempt": "0",
                }
            )
        )
    finally:
        del os.environ["METAFLOW_SANDBOX_BUBBLEWRAP_STATE_DIR"]
    cli = [sys.executable, str(project.root / "catch_flow.py"), "--metadata", project.metadata, "sandbox"]
    listed = subprocess.run(
        [*cli, "list", "--all-runs"], cwd=project.root, env=env, capture_output=True, text=True
    )
    assert leaked.id in listed.stdout + listed.stderr, listed.stdout + listed.stderr
    swept = subprocess.run(
        [*cli, "sweep", "--run-id", "99"], cwd=project.root, env=env, capture_output=True, text=True
    )
    assert "Destroyed 1 sandbox(es)." in swept.stdout + swept.stderr, swept.stdout + swept.stderr
    assert backend.list({"metaflow.flow": "CatchFlow"}) == []


def test_artifact_that_would_run_code_on_the_launcher_is_refused(project: Project, tmp_path):
    marker = tmp_path / "bomb-went-off"
    result = project.run("pickle_bomb_flow.py", "run", "--marker", str(marker), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "artifact 'payload' cannot be loaded safely: it references posix.system" in output, output
    assert "trusted_types" in output
    assert not marker.exists(), "the sandboxed step's pickle ran code on the launcher"
