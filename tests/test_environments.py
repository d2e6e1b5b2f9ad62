"""Dependencies inside sandboxes: `--environment=uv` installed once by the launcher, never from inside.

The project's uv.lock is made here with real uv (the launcher reaches the package index; the sandbox never
does); without the index these tests skip saying so. `@pypi`/`@conda` need Metaflow's resolver (micromamba and
conda channels), which this machine cannot download: those tests skip with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .conftest import Project

pytestmark = pytest.mark.integration

DEPENDENCY = "humanize==4.9.0"  # small, pure Python, absent from the launcher's and the images' environments


def _uv() -> str:
    found = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    if found is None:
        pytest.skip("uv is not installed in the test environment (the integration session installs it)")
    return found


#: How this machine reaches the package index (trust store, proxy, mirror): the launcher's uv needs them.
INDEX_SETTINGS = ("SSL_CERT_FILE", "SSL_CERT_DIR", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_NATIVE_TLS")
INDEX_SETTINGS += (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)


def uv_project(project: Project, dependencies: str = f'"{DEPENDENCY}"', lock: bool = True) -> None:
    project.env.update({name: os.environ[name] for name in INDEX_SETTINGS if name in os.environ})
    (project.root / "pyproject.toml").write_text(
        f'[project]\nname = "uvflow"\nversion = "0.1.0"\nrequires-python = ">=3.9"\n'
        f"dependencies = [{dependencies}]\n"
    )
    if lock:
        done = subprocess.run(
            [_uv(), "lock", "--quiet"], cwd=project.root, env=project.env, capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(
                f"the package index is unreachable from this machine (uv lock: {done.stderr.strip()})"
            )


def test_uv_environment_reaches_the_sandbox_only(project: Project):
    uv_project(project)
    result = project.run("uv_flow.py", "--environment", "uv", "run", "--max-workers", "3")
    data = project.query(
        "run = Flow('UvFlow').latest_run\n"
        "result = dict(launcher=run['start'].task.data.launcher_has_it, results=run['join'].task.data.results)"
    )
    assert data["launcher"] is False, "the launcher must not have the dependency: the test proves nothing"
    words = [words for words, _, _ in data["results"]]
    assert words == ["1,000", "2,000", "3,000"]
    assert all(inside for _, inside, _ in data["results"]), "the step did not run in a sandbox"
    cache = project.env["METAFLOW_SANDBOX_CACHE_DIR"]
    for _, _, module in data["results"]:
        # Mounted from the launcher's cache, or extracted inside a remote sandbox: never the launcher's own.
        assert module.startswith(cache) or "/environment/" in module, module
    said = result.stdout + result.stderr
    assert said.count("Hydrated the uv environment") == 1, said


def test_uv_lock_missing_or_stale_fails_before_any_sandbox(project: Project):
    uv_project(project, lock=False)
    missing = project.run("uv_flow.py", "--environment", "uv", "run", check=False)
    assert missing.returncode != 0
    assert "run `uv lock`" in missing.stdout + missing.stderr
    uv_project(project)
    (project.root / "pyproject.toml").write_text(
        (project.root / "pyproject.toml").read_text().replace(">=3.9", ">=3.10")
    )
    stale = project.run("uv_flow.py", "--environment", "uv", "run", check=False)
    assert stale.returncode != 0
    assert "out of date with pyproject.toml; run `uv lock`" in stale.stdout + stale.stderr
    assert not project.live_sandboxes()
    assert not (project.root / ".metaflow" / "UvFlow").exists() or not any(
        (project.root / ".metaflow" / "UvFlow").glob("*/inside")
    ), "a sandboxed task started"


@pytest.mark.parametrize("environment", ["pypi", "conda"])
def test_pypi_steps_run_inside_the_sandbox(project: Project, environment: str):
    from .conftest import BACKEND

    if shutil.which("micromamba") is None:
        pytest.skip(
            f"--environment={environment} needs Metaflow's resolver: micromamba and conda channels, which this "
            "machine cannot download"
        )
    project.env.update({name: os.environ[name] for name in INDEX_SETTINGS if name in os.environ})
    result = project.run("pypi_flow.py", "--environment", environment, "run", check=False)
    if BACKEND != "bubblewrap":  # refused before any sandbox exists, naming the fix
        assert result.returncode != 0 and "--environment=uv" in result.stdout + result.stderr
        return
    assert result.returncode == 0, result.stdout + result.stderr
    data = project.query(
        "d = Flow('PypiFlow').latest_run['inside'].task.data\n"
        "result = dict(words=d.words, inside=d.in_sandbox, python=d.python)"
    )
    assert data["words"] == "1,000" and data["inside"] is True, data  # asserted from inside the sandbox
