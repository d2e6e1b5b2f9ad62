"""Fixtures for end-to-end tests: real flows, real bwrap, local metadata or a real metaflow-local-service."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FLOWS = Path(__file__).parent / "flows"
METADATA_MODES = tuple(os.environ.get("MFS_TEST_METADATA", "local,service").split(","))
DATASTORES = tuple(os.environ.get("MFS_TEST_DATASTORE", "local").split(","))
BACKEND = os.environ.get("MFS_TEST_BACKEND", "bubblewrap")
#: The backend's registered name ("boxlite-remote": the boxlite backend in REST mode, on the emulator).
BACKEND_NAME = BACKEND.removesuffix("-remote")

#: The integration matrix selects with these markers (noxfile.py). `metadata`: tests that exercise the
#: metadata a sandboxed task sends back (replayed into local metadata or a metadata service) and what the
#: client reads of it; the metadata-service rows run only these. `once`: tests that depend on neither the
#: backend, the datastore nor the metadata of the row (launcher tools that always use bubblewrap and local
#: metadata); they run in one row. Listed here, by module, so one table says what each row covers.
MARKED = {
    "metadata": {
        "test_flows.py": {
            "test_artifacts_flow_both_ways_and_logs_exactly_once",  # artifacts, client, `logs`
            "test_foreach_of_twenty_sandboxed_branches",
            "test_retry_reruns_a_failed_sandboxed_attempt",
            "test_resume_reruns_failed_sandboxed_step_in_a_sandbox",
        },
        "test_security_and_tools.py": {
            "test_forged_metadata_for_another_task_is_refused",
            "test_first_log_line_arrives_while_the_step_runs",
        },
    },
    "once": {
        "test_security_and_tools.py": {
            "test_metaflow_local_service_run_form",
            "test_sandbox_list_and_sweep_find_leaked_sandboxes",
        },
        "test_sandbox_host.py": {
            "test_a_host_running_other_code_is_replaced",
            "test_the_task_process_can_run_the_executor_itself",
        },
    },
}


def pytest_collection_modifyitems(config, items):
    """Apply `MARKED`. A listed test that its module does not define is an error: a rename must not silently
    drop a test from the rows that select it."""
    missing = set()
    for item in items:
        module = os.path.basename(str(item.fspath))
        name = getattr(item, "originalname", item.name)
        for marker, tests in MARKED.items():
            listed = tests.get(module, ())
            if name in listed:
                item.add_marker(marker)
            defined = getattr(item, "module", None)
            missing.update(f"{module}::{test}" for test in listed if not hasattr(defined, test))
    if missing:
        raise pytest.UsageError(f"tests/conftest.py MARKED lists tests that do not exist: {sorted(missing)}")


@dataclass
class Project:
    """A throwaway project directory with its own HOME, cache and (optionally) metadata service."""

    root: Path
    metadata: str
    env: dict[str, str] = field(default_factory=dict)
    datastore: str = "local"
    s3: object | None = None  # the S3Server, for the s3 datastore
    daytona: object | None = None  # the DaytonaEmulator, for the daytona backend
    e2b: object | None = None  # the E2BEmulator, for the e2b backend
    boxlite: object | None = None  # the BoxliteEmulator, for boxlite's REST mode

    @property
    def emulator(self) -> object | None:
        """The emulator this project's sandboxes live in (None for local backends)."""
        return self.daytona or self.e2b or self.boxlite

    def live_sandboxes(self) -> list:
        """What is still running of this project's sandboxes (bubblewrap: its bwrap processes; a remote
        backend: its emulator's live sandboxes)."""
        if self.emulator is not None:
            return list(self.emulator.live_sandboxes())  # type: ignore[attr-defined]
        return sandbox_processes(self.sandbox_marker)

    @property
    def sandbox_marker(self) -> str:
        """Appears in the argv of every bwrap process (each sandbox's private directories live there), and
        nowhere else: processes inside a sandbox die with its bwrap (PID namespace)."""
        return os.path.join(self.env["METAFLOW_SANDBOX_BUBBLEWRAP_STATE_DIR"], "bwrap-")

    def flow(self, name: str) -> Path:
        target = self.root / name
        shutil.copy(FLOWS / name, target)
        return target

    def command(self, flow_file: str, *args: str) -> list[str]:
        return [
            sys.executable,
            str(self.root / flow_file),
            "--metadata",
            self.metadata,
            "--datastore",
            self.datastore,
            *args,
        ]

    def run(self, flow_file: str, *args: str, check: bool = True, timeout: float = 600, **env: str):
        if not (self.root / flow_file).exists():
            self.flow(flow_file)
        return self.run_argv(self.command(flow_file, *args), check=check, timeout=timeout, **env)

    def run_argv(self, argv: list[str], check: bool = True, timeout: float = 600, **env: str):
        """Run `argv` in the project in its own session (killed whole on timeout); its output as text."""
        proc = subprocess.Popen(
            argv,
            cwd=self.root,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and every task it started
            stdout, stderr = proc.communicate()
            raise AssertionError(f"flow did not finish in {timeout}s:\n{stdout}\n{stderr}")
        result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        if check and result.returncode != 0:
            raise AssertionError(f"flow failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def query(self, code: str) -> object:
        """Run client code (which sets `result`) in a fresh interpreter; return `result`."""
        script = "import json\nfrom metaflow import Flow, namespace\nnamespace(None)\n"
        script += textwrap.dedent(code) + "\nprint('__RESULT__' + json.dumps(result, default=str))\n"
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise AssertionError(f"client query failed:\n{out.stdout}\n{out.stderr}")
        line = next(line for line in out.stdout.splitlines() if line.startswith("__RESULT__"))
        return json.loads(line[len("__RESULT__") :])


def _base_env(tmp: Path) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(
        HOME=str(home),
        METAFLOW_USER="tester",
        METAFLOW_SANDBOX_CACHE_DIR=str(tmp / "cache"),
        METAFLOW_SANDBOX_BUBBLEWRAP_STATE_DIR=str(tmp / "bwrap-state"),
        METAFLOW_SANDBOX_BACKEND=BACKEND_NAME,
        METAFLOW_SANDBOX_BOXLITE_STATE_DIR=str(tmp / "boxlite-state"),
        # Each test gets its own sandbox host, in its own directory; it goes soon after the test.
        METAFLOW_SANDBOX_HOST_DIR=str(tmp / "host"),
        METAFLOW_SANDBOX_HOST_IDLE="15",
        PYTHONPATH=os.environ.get("PYTHONPATH", ""),
    )
    return env


@pytest.fixture(scope="session")
def s3_server():
    """One real S3-compatible server process (moto's) for the session, on 127.0.0.1."""
    from metaflow_sandbox_testing.s3_server import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def clean_python(tmp_path_factory) -> str:
    """A Python environment holding only what a stock image plus boto3 (and requests, which metaflow imports)
    would: no metaflow. Metaflow itself must come from the code package."""
    from metaflow_sandbox_testing.clean_python import make_clean_python

    return make_clean_python(tmp_path_factory.mktemp("clean-python") / "venv")


@pytest.fixture(scope="session")
def daytona_emulator(clean_python):
    """The Daytona emulator (driven by the real daytona SDK); its sandboxes' python3 has no metaflow."""
    from metaflow_sandbox_testing.daytona_emulator import DaytonaEmulator

    with DaytonaEmulator(python=clean_python) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def e2b_emulator(clean_python):
    """The E2B emulator (driven by the real e2b SDK); its sandboxes' python3 has no metaflow."""
    from metaflow_sandbox_testing.e2b_emulator import E2BEmulator

    with E2BEmulator(python=clean_python) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def boxlite_emulator(clean_python):
    """The boxlite REST emulator (driven by the real boxlite SDK); its boxes' python3 has no metaflow."""
    from metaflow_sandbox_testing.boxlite_emulator import BoxliteEmulator

    with BoxliteEmulator(python=clean_python) as emulator:
        yield emulator


@pytest.fixture(params=[(d, m) for d in DATASTORES for m in METADATA_MODES], ids=lambda p: f"{p[0]}-{p[1]}")
def project(request, tmp_path) -> Project:
    """A project for each datastore x metadata mode: local files or S3 (a real S3 server), local metadata
    or a real metaflow-local-service."""
    datastore, metadata = request.param
    env = _base_env(tmp_path)
    root = tmp_path / "project"
    root.mkdir()
    (root / ".metaflow").mkdir()
    proj = Project(root=root, metadata=metadata, env=env, datastore=datastore)
    if datastore == "s3":
        server = request.getfixturevalue("s3_server")
        bucket = "flows-" + os.urandom(4).hex()
        server.create_bucket(bucket, versioned=True)
        proj.s3 = server
        proj.env.update(server.metaflow_env(bucket))
        proj.env["MFS_TEST_BUCKET"] = bucket
        if BACKEND == "bubblewrap":  # a sandbox Python without metaflow (image-based backends have python3)
            proj.env["METAFLOW_SANDBOX_PYTHON"] = request.getfixturevalue("clean_python")
    if BACKEND == "daytona":
        if datastore != "s3":
            pytest.fail("the daytona backend needs a remote datastore: run it with MFS_TEST_DATASTORE=s3")
        proj.daytona = request.getfixturevalue("daytona_emulator")
        proj.env.update(proj.daytona.env())  # type: ignore[attr-defined]
    if BACKEND == "e2b":
        if datastore != "s3":
            pytest.fail("the e2b backend needs a remote datastore: run it with MFS_TEST_DATASTORE=s3")
        proj.e2b = request.getfixturevalue("e2b_emulator")
        proj.env.update(proj.e2b.env())  # type: ignore[attr-defined]
    if BACKEND == "boxlite-remote":
        if datastore != "s3":
            pytest.fail("boxlite's REST mode needs a remote datastore: run it with MFS_TEST_DATASTORE=s3")
        proj.boxlite = request.getfixturevalue("boxlite_emulator")
        proj.env.update(proj.boxlite.env())  # type: ignore[attr-defined]
    if metadata == "service":
        service = shutil.which(
            "metaflow-local-service", path=os.path.dirname(sys.executable)
        ) or shutil.which("metaflow-local-service")
        if service is None:
            pytest.fail("metaflow-local-service is not installed (it is a test dependency)")
        subprocess.run(
            [service, "start", "--port", "0", "--metaflow-root", str(root), "--idle-timeout", "600"],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        url = subprocess.run(
            [service, "url"], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()
        proj.env.update(METAFLOW_SERVICE_URL=url, METAFLOW_DEFAULT_METADATA="service")
        request.addfinalizer(
            lambda: subprocess.run([service, "stop"], env=env, capture_output=True, timeout=60)
        )
    return proj


def sandbox_processes(marker: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose command line mentions `marker`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(pid))
    return found
