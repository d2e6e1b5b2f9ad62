"""The plan a remote sandbox (Daytona, E2B, remote boxlite) receives for each environment type, and what it may
read of the datastore.

@pypi/@conda: Metaflow's own environment classes (`PyPIEnvironment`, `CondaEnvironment`) compute the environment
id, the bootstrap command and the interpreter; their manifest is written here as Metaflow's resolver writes it
after caching the packages (the resolver itself needs micromamba and conda channels, which this machine cannot
download). The S3 channel is the real one against a root that is never contacted: presigning is local.
"""

from __future__ import annotations

import json
import os
import stat
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from metaflow_extensions.sandbox.plugins.sandbox.conda_environment import (
    CACHE_DIR,
    package_urls,
    remote_environment,
)
from metaflow_extensions.sandbox.plugins.sandbox.datastore_channels import S3Channel
from metaflow_extensions.sandbox.plugins.sandbox.executor import TaskExecutor
from metaflow_extensions.sandbox.plugins.sandbox.s3_access import task_policy
from metaflow_extensions.sandbox.plugins.sandbox.step_command import parse_step_command
from metaflow_extensions.sandbox.plugins.sandbox.task_launch import TaskLaunch
from metaflow_sandbox_core import ConfigError

ROOT = "s3://bucket/mf"
CONDA_PACKAGES = [
    {"url": "https://conda.anaconda.org/conda-forge/linux-64/python-3.11.9-h1.conda"},
    {"url": "https://conda.anaconda.org/conda-forge/noarch/humanize-4.9.0-pyhd8ed1ab_0.conda"},
]
PYPI_PACKAGES = [{"url": "https://files.pythonhosted.org/packages/aa/bb/humanize-4.9.0-py3-none-any.whl"}]


class Flow(list):
    name = "PypiFlow"


class Step:
    """A graph step as Metaflow's environment reads it (hashable: `get_environment` is memoized per step)."""

    def __init__(self, name: str, decorators: list):
        self.name = name
        self.decorators = decorators


def _object(url: str) -> str:
    """ "bucket/key" of a presigned URL, path-style or virtual-hosted."""
    parts = urlsplit(url)
    host = parts.netloc.split(".")[0]
    return parts.path.lstrip("/") if parts.path.startswith("/bucket/") else f"{host}{parts.path}"


def _path(url: str) -> str:
    """Where Metaflow's `init_environment` caches a package under the package root."""
    parts = urlsplit(url)
    return parts.netloc + parts.path


@pytest.fixture
def s3_root(monkeypatch):
    import metaflow.metaflow_config as config
    import metaflow.plugins.datastores.s3_storage as s3_storage

    monkeypatch.setattr(s3_storage, "DATASTORE_SYSROOT_S3", ROOT)
    monkeypatch.setattr(config, "CONDA_PACKAGE_S3ROOT", None)
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return config


def _environment(tmp_path, kind: str):
    """A Metaflow environment for a flow whose `inside` step is @daytona + @pypi (or @conda), its manifest
    as Metaflow leaves it once the packages are cached in the S3 datastore."""
    from metaflow.plugins.pypi.conda_environment import CondaEnvironment
    from metaflow.plugins.pypi.pypi_environment import PyPIEnvironment

    conda = {"packages": {}, "libraries": {}, "channels": [], "python": "3.11.9", "disabled": None}
    decorators = [
        SimpleNamespace(name="daytona", supports_conda_environment=True, target_platform="linux-64")
    ]
    if kind == "pypi":
        pypi = {"packages": {"humanize": "4.9.0"}, "extra_indices": [], "python": None, "disabled": None}
        decorators += [
            SimpleNamespace(name="pypi", attributes=pypi),
            SimpleNamespace(name="conda", attributes=conda),
        ]
    else:
        conda["packages"] = {"humanize": "4.9.0"}
        decorators += [SimpleNamespace(name="conda", attributes=conda)]
    flow = Flow([Step("start", []), Step("inside", decorators)])
    environment = (PyPIEnvironment if kind == "pypi" else CondaEnvironment)(flow)
    environment.set_local_root(str(tmp_path / ".metaflow"))
    environment.validate_environment(lambda *args, **kwargs: None, "s3")
    id_ = environment.get_environment(flow[1])["id_"]
    manifest = {"conda": [{**p, "path": _path(p["url"])} for p in CONDA_PACKAGES]}
    if kind == "pypi":
        manifest["pypi"] = [{**p, "path": _path(p["url"])} for p in PYPI_PACKAGES]
    (tmp_path / ".metaflow" / "PypiFlow").mkdir(parents=True)
    (tmp_path / ".metaflow" / "PypiFlow" / "conda.manifest").write_text(
        json.dumps({id_: {"linux-64": manifest}})
    )
    return environment, flow, id_


def _micromamba(tmp_path) -> str:
    binary = tmp_path / "micromamba"
    binary.write_bytes(b"\x7fELF not really micromamba")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return str(binary)


def _launch(tmp_path, **fields) -> TaskLaunch:
    return TaskLaunch(
        backend="daytona",
        spec={"timeout": 600},
        flow="PypiFlow",
        run_id="1",
        step="inside",
        task_id="2",
        attempt=0,
        datastore_type="s3",
        datastore_root=ROOT,
        metadata_type="local",
        package_blob=f"{ROOT}/PypiFlow/data/ab/abcdef",
        package_sha="abcdef",
        package_env={"PYTHONPATH": "{package_dir}/.mf_code"},
        python="python3",
        python_prefixes=[],
        flow_file="flow.py",
        cache_dir=str(tmp_path / "cache"),
        s3_credentials="none",
        **fields,
    )


def _plan(tmp_path, launch: TaskLaunch, uv_archive: str | None = None):
    """What the executor ships into a Daytona sandbox for `launch`, through the real S3 channel (its code
    package already published: `prepare` would fetch and publish it)."""
    command = parse_step_command(
        ["--environment", "pypi", "sandbox", "step", "inside", "--run-id", "1", "--sandbox-launch", "x"]
    )
    backend = SimpleNamespace(name="daytona", capabilities=SimpleNamespace(can_mount=False))
    executor = TaskExecutor(launch, command, say=lambda message: None)
    channel = S3Channel(launch, backend, str(tmp_path / "staging"), str(tmp_path / "scratch"), lambda m: None)
    channel.package_dir, channel.package_url, channel.client_url, channel.credentials = (
        None,
        "https://p/pkg",
        None,
        {},
    )
    published = []
    channel._publish = lambda path: (
        published.append(path),
        channel.s3.root.child(".sandbox-packages", os.path.basename(path)),
    )[1]
    if uv_archive:
        executor._environment_url = channel.publish(uv_archive)
    executor._prepare_environment(backend, channel)
    channel.base = "/home/daytona/metaflow-sandbox"
    return executor._plan(channel), channel, published


@pytest.mark.parametrize("kind", ["pypi", "conda"])
def test_metaflow_environments_are_built_in_the_sandbox_from_exactly_their_cached_packages(
    tmp_path, s3_root, kind
):
    environment, flow, id_ = _environment(tmp_path, kind)
    conda = remote_environment(
        environment, flow, "inside", "linux-64", str(tmp_path / "cache"), _micromamba(tmp_path)
    )
    # The command Metaflow's bootstrap_commands give a @batch task, reading the sandbox's copy of the cache.
    batch = [
        c for c in environment.bootstrap_commands("inside", "s3") if "metaflow.plugins.pypi.bootstrap" in c
    ]
    assert batch == [f'DISABLE_TRACING=True python -m metaflow.plugins.pypi.bootstrap "PypiFlow" {id_} "s3"']
    assert conda["setup_argv"] == [
        "python",
        "-m",
        "metaflow.plugins.pypi.bootstrap",
        "PypiFlow",
        id_,
        "local",
    ]
    assert conda["interpreter"] == [f"linux-64/{id_}/bin/python", "-s"]  # environment.executable(step)
    assert conda["package_root"] == f"{ROOT}/conda"
    expected = [_path(p["url"]) for p in CONDA_PACKAGES + (PYPI_PACKAGES if kind == "pypi" else [])]
    assert conda["packages"] == expected
    assert os.path.basename(conda["micromamba"]).startswith("micromamba-")  # content-named, published once

    plan, _, published = _plan(tmp_path, _launch(tmp_path, conda=conda))
    workdir = "/home/daytona/metaflow-sandbox/work"
    cache = f"{workdir}/{CACHE_DIR}"
    assert plan.workdir == workdir
    packages, micromamba = plan.files[:-1], plan.files[-1]
    # Exactly the manifest's objects, each through a presigned read of its own key.
    assert [_object(f["url"]) for f in packages] == [f"bucket/mf/conda/{p}" for p in expected]
    assert all("Signature=" in f["url"] and "Expires=" in f["url"] for f in packages), packages[0]["url"]
    assert [f["path"] for f in packages] == [f"{cache}/conda/{p}" for p in expected]
    # Where Metaflow's bootstrap looks for micromamba before it would download one.
    assert micromamba["path"] == f"{workdir}/micromamba/bin/micromamba" and micromamba["executable"]
    assert published == [conda["micromamba"]]
    [setup] = plan.setup
    assert setup["argv"] == conda["setup_argv"]
    assert setup["env"] == {
        "DISABLE_TRACING": "True",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": cache,
        "METAFLOW_CONDA_USE_FAST_INIT": "0",
    }
    assert plan.step_python == conda["interpreter"]
    assert plan.python == "python3"  # the image's Python runs the bootstrap and Metaflow's setup
    assert "METAFLOW_DATASTORE_SYSROOT_LOCAL" not in plan.env  # the step itself keeps its S3 datastore


def test_the_sandbox_credentials_read_none_of_the_package_cache(tmp_path, s3_root):
    environment, flow, _ = _environment(tmp_path, "pypi")
    conda = remote_environment(
        environment, flow, "inside", "linux-64", str(tmp_path / "cache"), _micromamba(tmp_path)
    )
    _, channel, _ = _plan(tmp_path, _launch(tmp_path, conda=conda))
    policy = json.dumps(task_policy(channel.s3.root, "PypiFlow", channel.staging_root))
    assert "conda" not in policy and "mf/*" not in policy  # the flow's prefix and its staging only
    # A cache object outside the root is never signed (the decorator refused the run before; defense in depth).
    with pytest.raises(ConfigError, match="a package cache the sandbox's credentials cannot read"):
        channel.presigned_reads([*package_urls(conda), "s3://other/conda/x.conda"])
    with pytest.raises(ConfigError, match="outside the datastore root"):
        channel.presigned_reads(["s3://bucket/mf-other/conda/x.conda"])


def test_a_cache_root_outside_the_datastore_root_is_named(tmp_path, s3_root):
    from metaflow_extensions.sandbox.plugins.sandbox.conda_environment import (
        check_package_cache,
        package_root,
    )

    s3_root.CONDA_PACKAGE_S3ROOT = "s3://elsewhere/conda"
    with pytest.raises(ConfigError, match=r"cached at s3://elsewhere/conda, a package cache the sandbox"):
        check_package_cache("daytona", "s3", ROOT, package_root("s3"))


def test_a_package_metaflow_did_not_cache_is_refused(tmp_path, s3_root):
    environment, flow, id_ = _environment(tmp_path, "conda")
    manifest = tmp_path / ".metaflow" / "PypiFlow" / "conda.manifest"
    data = json.loads(manifest.read_text())
    del data[id_]["linux-64"]["conda"][0]["path"]  # what a local datastore's resolve leaves
    manifest.write_text(json.dumps(data))
    with pytest.raises(
        ConfigError, match=r"python-3.11.9-h1.conda is not in the package cache .*--datastore=s3"
    ):
        remote_environment(
            environment, flow, "inside", "linux-64", str(tmp_path / "cache"), _micromamba(tmp_path)
        )


def test_uv_environments_reach_a_remote_sandbox_as_one_presigned_archive(tmp_path, s3_root):
    archive = tmp_path / "uv-0123456789abcdef01234567.tgz"
    archive.write_bytes(b"archive")
    plan, _, published = _plan(tmp_path, _launch(tmp_path), uv_archive=str(archive))
    assert published == [str(archive)]
    [environment] = [library for library in plan.libraries if library.get("what") == "the uv environment"]
    assert environment["modules"] == []  # always provided, appended to the step's PYTHONPATH
    assert environment["dir"] == "/home/daytona/metaflow-sandbox/environment"
    assert _object(environment["url"]) == f"bucket/mf/.sandbox-packages/{archive.name}"
    assert plan.files == [] and plan.setup == [] and plan.step_python == []  # nothing installs in the sandbox
