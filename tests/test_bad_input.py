"""Bad input: a one-line error naming the fix, before any sandbox exists, and a clean stop."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import _base_env

pytestmark = pytest.mark.integration

FLOW = """
from metaflow import FlowSpec, step, sandbox, bubblewrap, daytona, e2b, boxlite, batch, parallel, resources, environment
class BadFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.work)
{decorators}
    @step
    def work(self):
        self.next(self.end)
    @step
    def end(self):
        pass
if __name__ == "__main__":
    BadFlow()
"""

CASES = {
    "unknown-backend": ("@sandbox(backend='nope')", "Unknown sandbox backend 'nope'"),
    "cpu-zero": ("@sandbox(cpu=0)", "cpu=0 must be greater than 0"),
    "cpu-text": ("@sandbox(cpu='many')", "cpu='many' is not a number"),
    "memory-text": ("@sandbox(memory='lots')", "memory='lots' is not a number"),
    "env-not-string": ("@sandbox(env={'A': 1})", "environment values must be strings"),
    "with-batch": ("@batch\n@sandbox", "combines @sandbox with @batch"),
    "two-sandboxes": ("@bubblewrap\n@sandbox", "use exactly one sandbox decorator"),
    "bad-network": ("@bubblewrap(network='sideways')", "not a network policy"),
    "env-empty-name": ("@sandbox(env={'': 'x'})", "env['']: an environment variable needs a name"),
    "env-name-with-equals": ("@sandbox(env={'A=B': 'x'})", "env['A=B']: a variable name cannot contain '='"),
    "env-value-with-nul": (
        "@sandbox(env={'A': 'x\\x00y'})",
        "env['A']: no environment variable can hold a NUL",
    ),
    "environment-name-with-equals": (
        "@environment(vars={'A=B': 'x'})\n@sandbox",
        "@environment(vars=...)['A=B']: a variable name cannot contain '='",
    ),
    "unknown-option": (
        "@bubblewrap(options={'snapshot': 'x'})",
        "Unknown bubblewrap option(s) 'snapshot' in options={...}; known: 'python'.",
    ),
    "trusted-types-empty-entry": (
        "@sandbox(trusted_types=['numpy', ''])",
        "'' is not a module name; list module names, e.g. trusted_types=['numpy', 'pandas']; to accept every "
        "pickle, set trusted_types to a one-character string, the asterisk.",
    ),
    "trusted-types-star-and-names": (
        "@sandbox(trusted_types=['numpy', '*'])",
        "trusted_types=['numpy', '<asterisk>']: the asterisk accepts every pickle on its own",
    ),
    "trusted-types-wildcard": ("@sandbox(trusted_types=['numpy.*'])", "takes no wildcard; write 'numpy'"),
    # Allow-lists (network=[...]): each malformed entry names its fix.
    "network-url": (
        "@bubblewrap(network=['https://api.example.com'])",
        "not a URL (e.g. 'api.example.com:443')",
    ),
    "network-port-range": (
        "@bubblewrap(network=['api.example.com:99999'])",
        "must be a number from 1 to 65535",
    ),
    "network-everything": (
        "@bubblewrap(network=['0.0.0.0/0'])",
        "allows every destination; use network='full'",
    ),
    "network-tld-wildcard": (
        "@bubblewrap(network=['*.com'])",
        "network entry '<asterisk>.com': the wildcard would cover a whole top-level domain",
    ),
    "network-wildcard-port": (
        "@bubblewrap(network=['*.example.com:443'])",
        "allows every port; remove the port",
    ),
    "network-cidr-host-bits": (
        "@bubblewrap(network=['10.0.0.1/8'])",
        "write the network address, e.g. '10.0.0.0/8'",
    ),
    "network-empty-list": ("@bubblewrap(network=[])", "network=[] allows nothing beyond the datastore"),
    "network-entry-not-text": ("@bubblewrap(network=[443])", "allow-list entries are strings"),
    "network-host-name": ("@bubblewrap(network=['api example.com'])", "remove the spaces"),
}

#: Allow-list forms a backend cannot enforce: refused naming what it can (never silently wider).
BACKEND_CASES = {
    "network-port-on-e2b": (
        "@e2b(network=['api.example.com:443'])",
        "network entry 'api.example.com:443' is a host:port entry, which the e2b backend cannot enforce: it "
        "enforces only host, <asterisk>.domain, CIDR entries.",
        {"E2B_API_KEY": "e2b_0000"},
    ),
    "network-wildcard-on-daytona": (
        "@daytona(network=['*.example.com'])",
        "which the daytona backend cannot enforce: it enforces only host, CIDR entries.",
        {"DAYTONA_API_KEY": "dtn_0000"},
    ),
    "network-ipv6-on-boxlite": (
        "@boxlite(network=['2001:db8::/32'])",
        "boxlite's allow_net takes host names, wildcards, IPv4 addresses and IPv4 CIDRs only",
        {"BOXLITE_REST_URL": "http://127.0.0.1:9"},
    ),
}


def run_bad(tmp_path: Path, decorators: str, env_extra: dict | None = None, parallel: bool = False):
    source = FLOW.format(decorators=textwrap.indent(decorators, "    ") if decorators else "")
    if parallel:
        source = source.replace("self.next(self.work)", "self.next(self.work, num_parallel=2)")
        source = source.replace(
            "def work(self):\n        self.next(self.end)",
            "def work(self):\n        self.next(self.join)\n    @step\n    def join(self, inputs):\n        self.next(self.end)",
        )
    flow = tmp_path / "bad_flow.py"
    flow.write_text(source)
    env = {**_base_env(tmp_path), **(env_extra or {})}
    result = subprocess.run(
        [sys.executable, str(flow), "--metadata", "local", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, tmp_path / "cache"


def test_a_backend_that_is_not_installed_names_its_pip_install(tmp_path):
    """Where some backend this project knows is not installed here, its decorator stops the run with the exact
    install command (core's unit tests check the message with every backend hidden)."""
    from metaflow_sandbox_core import KNOWN_BACKENDS, available_backends

    missing = sorted(set(KNOWN_BACKENDS) - set(available_backends()))
    if not missing:
        pytest.skip(
            "every backend this project knows is installed in this environment (CI installs all five)"
        )
    result, _ = run_bad(tmp_path, f"@{missing[0]}")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and f'pip install "metaflow-sandbox[{missing[0]}]"' in output, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("case", sorted(CASES) + sorted(BACKEND_CASES))
def test_bad_decorator_input(tmp_path, case):
    if case in BACKEND_CASES:
        decorators, message, env = BACKEND_CASES[case]
        from metaflow_sandbox_core import available_backends

        backend = decorators[1:].split("(", 1)[0]
        if backend not in available_backends():
            pytest.skip(f"the {backend} backend is not installed in this environment")
    else:
        (decorators, message), env = CASES[case], {}
    result, cache = run_bad(tmp_path, decorators, env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output
    assert "Traceback" not in output, output
    assert not (cache / "staging").exists(), "a sandbox was prepared despite bad input"
    assert "Task is starting" not in output
    # One line, naming the step: nothing of the error continues on the next line.
    lines = output.splitlines()
    at = next(i for i, line in enumerate(lines) if message in line)
    assert lines[at].strip().startswith("Step work"), output
    assert at + 1 == len(lines) or not lines[at + 1].strip(), output


def test_parallel_is_refused(tmp_path):
    result, _ = run_bad(tmp_path, "@parallel\n@sandbox", parallel=True)
    assert result.returncode != 0
    assert "does not support @parallel" in result.stdout + result.stderr


def test_missing_bwrap_names_the_install_command(tmp_path):
    # A PATH without bwrap: the interpreter is called by absolute path, so nothing else needs PATH.
    result, _ = run_bad(tmp_path, "@bubblewrap", {"PATH": str(tmp_path / "empty-bin")})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "apt-get install -y bubblewrap" in output, output


@pytest.fixture(scope="module")
def tiny_backend_path(tmp_path_factory) -> str:
    """The tiny third-party backend, really installed (wheel built, entry point registered) into a target dir."""
    target = tmp_path_factory.mktemp("tiny-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(Path(__file__).parent / "tiny_backend"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return str(target)


def test_third_party_backend_is_found_through_its_entry_point(tmp_path, tiny_backend_path):
    code = "from metaflow_sandbox_core import load_backend; print(type(load_backend('tiny')).__name__)"
    env = {**os.environ, "PYTHONPATH": tiny_backend_path}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "TinyBackend"


def test_backend_that_cannot_mount_with_local_datastore(tmp_path, tiny_backend_path):
    result, cache = run_bad(tmp_path, "@sandbox(backend='tiny')", {"PYTHONPATH": tiny_backend_path})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "cannot use the local datastore" in output and "--datastore=s3" in output, output
    assert not (cache / "staging").exists()


@pytest.mark.parametrize(
    "decorators, message",
    [
        ("@bubblewrap(image='python:3.11')", "cannot use images"),
        ("@bubblewrap(gpu=1)", "gpu"),
        ("@sandbox(trusted_types=5)", "trusted_types=5 must be a list of module names"),
    ],
)
def test_backend_refuses_what_it_cannot_honour_before_the_run(tmp_path, decorators, message):
    result, cache = run_bad(tmp_path, decorators)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output
    assert "Task is starting" not in output
    assert not (cache / "staging").exists()


def test_provider_keys_and_denied_names_never_enter_a_sandbox(tmp_path):
    result, cache = run_bad(tmp_path, "@sandbox(env={'DAYTONA_API_KEY': 'x'})")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "passes DAYTONA_API_KEY into the sandbox" in output, output
    result, cache = run_bad(
        tmp_path,
        "@environment(vars={'MY_TEAM_TOKEN': 'x'})\n@sandbox",
        {"METAFLOW_SANDBOX_ENV_DENYLIST": "MY_*"},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "@environment passes MY_TEAM_TOKEN into the sandbox" in output, output
    assert not (cache / "staging").exists()


MEMORY_FLOW = """
from metaflow import FlowSpec, step, bubblewrap
class MemoryFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.hog)
    @bubblewrap(memory=256)
    @step
    def hog(self):
        self.data = b"x" * (1 << 30)  # 1 GiB, every page written
        self.next(self.end)
    @step
    def end(self):
        pass
if __name__ == "__main__":
    MemoryFlow()
"""


def test_a_step_killed_by_its_memory_limit_is_told_so(tmp_path):
    from metaflow_sandbox_bubblewrap import BubblewrapBackend
    from metaflow_sandbox_core import SandboxSpec

    probe = BubblewrapBackend(state_dir=str(tmp_path / "probe")).create(SandboxSpec(memory_mb=256))
    try:
        if "memory" not in probe.limits.cgroup.limits:
            pytest.skip(f"this machine cannot limit a sandbox's memory: {probe.limits.enforcement['memory']}")
    finally:
        probe.destroy()
    flow = tmp_path / "memory_flow.py"
    flow.write_text(MEMORY_FLOW)
    result = subprocess.run(
        [sys.executable, str(flow), "--metadata", "local", "run"],
        cwd=tmp_path,
        env=_base_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert (
        "The step exceeded memory=256 MiB and was killed by the sandbox's memory limit; give it more memory "
        "(memory=... in MiB, e.g. memory=512)." in output
    ), output
