"""`--environment=uv` checks made before any sandbox exists, and the environment's identity (pure logic, plus
real uv offline where it is installed)."""

import os
import shutil
import subprocess
import sys

import pytest

from metaflow_extensions.sandbox.plugins.sandbox.uv_environment import (
    UvTarget,
    check_project,
    find_project,
    sandbox_platform,
)
from metaflow_sandbox_core import ConfigError

PYPROJECT = '[project]\nname = "p"\nversion = "0.1.0"\nrequires-python = "{requires}"\ndependencies = []\n'


def _uv():
    found = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    if found is None:
        pytest.skip("uv is not installed in this test environment (the integration session has it)")
    return found


def _project(tmp_path, requires=">=3.9", lock="version = 1\n"):
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.format(requires=requires))
    if lock is not None:
        (tmp_path / "uv.lock").write_text(lock)
    return UvTarget(str(tmp_path), "3.11", "linux-64")


def test_the_project_is_found_above_the_working_directory(tmp_path):
    _project(tmp_path)
    (tmp_path / "flows").mkdir()
    assert find_project(str(tmp_path / "flows")) == str(tmp_path)


def test_no_pyproject_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"needs a pyproject.toml .*`uv init --bare`"):
        find_project(str(tmp_path))


def test_a_missing_lock_names_the_fix(tmp_path):
    target = _project(tmp_path, lock=None)
    with pytest.raises(ConfigError, match=r"needs .*uv.lock; run `uv lock` in "):
        check_project(target, uv="/nonexistent/uv")


def test_a_python_the_sandbox_cannot_have_names_the_fix(tmp_path):
    target = _project(tmp_path, requires=">=3.13")
    with pytest.raises(ConfigError, match=r"needs Python >=3.13 but the sandbox runs Python 3.11; widen"):
        check_project(target, uv="/nonexistent/uv")
    assert _project(tmp_path, requires=">=3.11.4,<4").python_version == "3.11"
    check_python_ok = _project(tmp_path, requires="~=3.11")
    with pytest.raises(ConfigError, match="cannot run uv"):  # past the Python check, on to uv
        check_project(check_python_ok, uv="/nonexistent/uv")


def test_a_stale_lock_names_the_fix(tmp_path):
    uv = _uv()
    target = _project(tmp_path, lock=None)
    env = {**os.environ, "UV_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([uv, "lock", "--offline", "--quiet"], cwd=tmp_path, env=env, check=True)
    check_project(target, uv=uv)
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.format(requires=">=3.10"))
    with pytest.raises(ConfigError, match=r"uv.lock is out of date with pyproject.toml; run `uv lock` in"):
        check_project(target, uv=uv)


def test_platforms_a_sandbox_can_be():
    assert sandbox_platform("linux-64", runs_on_this_machine=False) == "linux-64"
    assert sandbox_platform("linux-aarch64", runs_on_this_machine=False) == "linux-aarch64"
    with pytest.raises(ConfigError, match=r"target_platform='osx-arm64' cannot be a sandbox's; use one of"):
        sandbox_platform("osx-arm64", runs_on_this_machine=False)
    here = sandbox_platform("osx-arm64", runs_on_this_machine=True)  # this Linux machine's, whatever it says
    assert here in ("linux-64", "linux-aarch64")


def test_the_key_follows_the_lock_the_python_and_the_platform(tmp_path):
    target = _project(tmp_path)
    key = target.key
    assert UvTarget(target.project, "3.12", "linux-64").key != key
    assert UvTarget(target.project, "3.11", "linux-aarch64").key != key
    (tmp_path / "uv.lock").write_text("version = 1\n# changed\n")
    assert target.key != key
