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
    plan_fields,
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
    # Where Metaflow's bootstrap, given the local datastore rooted at the cache, looks for each package.
    assert conda["local_package_root"] == ".metaflow/conda"
    assert [f["path"] for f in packages] == [f"{cache}/.metaflow/conda/{p}" for p in expected]
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


#: Stands in for micromamba, which this machine cannot download: it records what Metaflow's bootstrap asks of
#: it and, like `micromamba create`, leaves an environment whose bin/python runs.
MICROMAMBA = """#!/bin/sh
echo "$*" >> {log}
if [ "$1" = create ]; then
    while [ $# -gt 0 ]; do
        case "$1" in
            --prefix) prefix="$2" ;;
            --file) cp "$2" {log}.explicit ;;
        esac
        shift
    done
    mkdir -p "$prefix/bin" && ln -s {python} "$prefix/bin/python"
fi
"""


@pytest.mark.parametrize("kind", ["pypi", "conda"])
def test_metaflow_bootstrap_builds_the_environment_from_the_fetched_cache_offline(tmp_path, s3_root, kind):
    """The plan's files and setup through the real bootstrap.py and Metaflow's real bootstrap module: every
    cached package is fetched into the per-sandbox local cache, micromamba comes from the plan (no download),
    the environment is created offline from exactly those packages, and the step runs under its Python."""
    import http.server
    import subprocess
    import sys
    import threading

    from metaflow_sandbox_runtime import Plan, bootstrap_path

    environment, flow, id_ = _environment(tmp_path, kind)
    log = tmp_path / "micromamba.log"
    micromamba = tmp_path / "micromamba"
    micromamba.write_text(MICROMAMBA.format(log=log, python=sys.executable))
    micromamba.chmod(0o755)
    conda = remote_environment(
        environment, flow, "inside", "linux-64", str(tmp_path / "cache"), str(micromamba)
    )
    # The code package as the sandbox has it: metaflow and the environment's manifest (Metaflow adds it).
    package = tmp_path / "package"
    package.mkdir()
    import metaflow

    (package / "metaflow").symlink_to(os.path.dirname(metaflow.__file__))
    (package / "conda.manifest").write_text(
        (tmp_path / ".metaflow" / "PypiFlow" / "conda.manifest").read_text()
    )
    objects = {f"/{path}": f"bytes of {path}".encode() for path in conda["packages"]}
    objects["/micromamba"] = micromamba.read_bytes()

    class Store(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = objects.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Store)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    workdir = tmp_path / "work"
    fields = plan_fields(
        conda, str(workdir), [f"{base}/{p}" for p in conda["packages"]], f"{base}/micromamba"
    )
    plan = Plan(
        python=sys.executable,
        argv=["-c", "import sys; print('step under', sys.executable)"],
        package_dir=str(package),
        workdir=str(workdir),
        env={"PYTHONPATH": str(package), "METAFLOW_EXTRACTED_ROOT": str(package)},
        **fields,
    )
    (tmp_path / "plan.json").write_text(plan.to_json())
    path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not os.path.exists(f"{p}/micromamba")
    )
    try:
        done = subprocess.run(
            plan.command(bootstrap_path(), str(tmp_path / "plan.json")),
            capture_output=True,
            text=True,
            env={"PATH": path, "HOME": str(tmp_path)},
            timeout=120,
        )
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith(f"step under {workdir}/linux-64/{id_}/bin/python"), done.stdout
    calls = log.read_text().splitlines()
    assert (
        calls[0].startswith("create --yes --offline --no-deps")
        and f"--prefix {workdir}/linux-64/{id_}" in calls[0]
    )
    explicit = (tmp_path / "micromamba.log.explicit").read_text().split()
    conda_files = [os.path.basename(p["url"]) for p in CONDA_PACKAGES]
    assert explicit[0] == "@EXPLICIT" and sorted(os.path.basename(p) for p in explicit[1:]) == sorted(
        conda_files
    )
    if kind == "pypi":
        assert "--no-index" in calls[1] and calls[1].endswith(
            f"{workdir}/.pkgs/pypi/{os.path.basename(PYPI_PACKAGES[0]['url'])}"
        ), calls
    assert len(calls) == (2 if kind == "pypi" else 1), calls


def test_s3_channel_prepare_publishes_and_gets_credentials_at_once(tmp_path, s3_root, monkeypatch):
    """The archives' existence checks and the credentials are independent round trips: asked together."""
    import threading

    import metaflow_extensions.sandbox.plugins.sandbox.datastore_channels as channels

    launch = _launch(tmp_path)
    archive = tmp_path / "cache" / "packages" / "abcdef.tgz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"package")  # fetched already: no download
    monkeypatch.setattr(channels, "ensure_extracted", lambda *args: str(tmp_path / "extracted"))
    monkeypatch.setattr(channels, "compiled_archive", lambda *args: str(tmp_path / "compiled-abcdef.tgz"))
    monkeypatch.setattr(channels, "client_bundle", lambda *args: str(tmp_path / "client-1.tgz"))
    backend = SimpleNamespace(name="daytona", capabilities=SimpleNamespace(can_mount=False))
    channel = S3Channel(launch, backend, str(tmp_path / "staging"), str(tmp_path / "scratch"), lambda m: None)
    together = threading.Barrier(3, timeout=10)  # broken unless the three round trips run together
    uploaded = []

    def exists(location):
        together.wait()
        return location.url.endswith("client-1.tgz")

    def credentials(*args):
        together.wait()
        return {"AWS_ACCESS_KEY_ID": "scoped"}

    monkeypatch.setattr(channel.s3, "exists", exists)
    monkeypatch.setattr(channel.s3, "upload", lambda path, location: uploaded.append(os.path.basename(path)))
    monkeypatch.setattr(channel.s3, "sandbox_credentials", credentials)
    channel.prepare()
    assert channel.credentials == {"AWS_ACCESS_KEY_ID": "scoped"}
    assert uploaded == ["compiled-abcdef.tgz"]  # the stored client bundle is not uploaded again
    assert "compiled-abcdef.tgz" in _object(channel.package_url)
    assert "client-1.tgz" in _object(channel.client_url)
