"""Dependencies inside sandboxes: `--environment=uv` installed once by the launcher, never from inside.

The project's uv.lock is made here with real uv (the launcher reaches the package index; the sandbox never
does); without the index these tests skip saying so. Running `@pypi`/`@conda` steps needs Metaflow's resolver
(micromamba and conda channels), which this machine cannot download: those tests skip with that reason; the
refusal of a package cache a remote sandbox cannot read comes before any resolving and runs everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .conftest import BACKEND, FLOWS, Project

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


#: Why the @pypi/@conda runs cannot happen on this kind of machine (checked, not assumed).
RESOLVER_MISSING = (
    "--environment={environment} needs Metaflow's resolver: micromamba and conda channels, which this machine "
    "cannot download"
)


def _resolver(environment: str) -> None:
    if shutil.which("micromamba") is None:
        pytest.skip(RESOLVER_MISSING.format(environment=environment))


@pytest.mark.parametrize("environment", ["pypi", "conda"])
def test_pypi_steps_run_inside_the_sandbox(project: Project, environment: str):
    """Every backend: bubblewrap mounts the environment Metaflow built here; a remote backend builds it from the
    datastore's package cache (presigned reads) before the step."""
    _resolver(environment)
    project.env.update({name: os.environ[name] for name in INDEX_SETTINGS if name in os.environ})
    result = project.run("pypi_flow.py", "--environment", environment, "run", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    data = project.query(
        "d = Flow('PypiFlow').latest_run['inside'].task.data\n"
        "result = dict(words=d.words, inside=d.in_sandbox, python=d.python)"
    )
    assert data["words"] == "1,000" and data["inside"] is True, data  # asserted from inside the sandbox


@pytest.mark.parametrize("decorator", ["pypi", "conda"])
def test_daytona_with_pypi_or_conda_builds_the_environment_offline_in_the_sandbox(
    project: Project, decorator: str
):
    """`@daytona` + `@pypi` / `@conda`: Metaflow's bootstrap runs in the sandbox on the cached packages the
    launcher presigned (and the launcher's micromamba), then the step runs under that environment's Python."""
    _resolver(decorator)
    if BACKEND != "daytona":
        pytest.skip("a @daytona flow: it runs in the daytona rows")
    project.env.update({name: os.environ[name] for name in INDEX_SETTINGS if name in os.environ})
    flow = f"daytona_{decorator}_flow.py"
    source = (FLOWS / "pypi_flow.py").read_text().replace("    @sandbox\n", "    @daytona\n")
    (project.root / flow).write_text(source.replace("    @pypi(", f"    @{decorator}("))
    result = project.run(flow, "--environment", decorator, "run", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    data = project.query(
        "d = Flow('PypiFlow').latest_run['inside'].task.data\n"
        "result = dict(words=d.words, inside=d.in_sandbox, python=d.python, module=d.module)"
    )
    assert data["words"] == "1,000" and data["inside"] is True, data  # asserted from inside the sandbox
    assert "/linux-64/" in data["python"] and "/metaflow-sandbox/work/" in data["python"], data
    assert data["module"].startswith(os.path.dirname(os.path.dirname(data["python"]))), data
    assert not project.live_sandboxes()


def test_a_package_cache_the_sandbox_cannot_read_fails_before_any_sandbox(project: Project):
    """Checked in the sandbox decorator's step_init, before Metaflow resolves anything (so it runs here)."""
    if BACKEND == "bubblewrap":
        pytest.skip(
            "bubblewrap mounts the environment Metaflow built on this machine: it reads no package cache"
        )
    bucket = project.env["MFS_TEST_BUCKET"]
    elsewhere = f"s3://{bucket}-cache/conda"
    outside = project.run(
        "pypi_flow.py", "--environment", "pypi", "run", check=False, METAFLOW_CONDA_PACKAGE_S3ROOT=elsewhere
    )
    said = outside.stdout + outside.stderr
    assert outside.returncode != 0
    assert f"cached at {elsewhere}, a package cache the sandbox's credentials cannot read" in said, said
    assert "unset METAFLOW_CONDA_PACKAGE_S3ROOT" in said
    local = project.run("pypi_flow.py", "--datastore", "local", "--environment", "pypi", "run", check=False)
    said = local.stdout + local.stderr
    assert local.returncode != 0
    assert "package cache the sandbox's credentials cannot read with the local datastore" in said, said
    assert "run with --datastore=s3" in said
    assert not project.live_sandboxes()
    assert "Running in" not in outside.stdout + outside.stderr + said, "a sandbox was created"
