"""`@boxlite` with the local runtime, end to end. Where a VM boots, the product's example runs; where KVM is
present but cannot boot a VM (software nested virtualization, as on the machines this project is developed
on), the run stops before any task with one line naming the reason and the fixes, no traceback, and no boxlite
process, box or disk left behind."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from .conftest import Project, sandbox_processes

pytestmark = pytest.mark.integration

FLOW = """
from metaflow import FlowSpec, boxlite, step


class BoxliteHello(FlowSpec):
    @step
    def start(self):
        self.next(self.hello)

    @boxlite
    @step
    def hello(self):
        import platform
        print("HELLO-FROM", platform.node(), flush=True)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    BoxliteHello()
"""


def test_boxlite_step_runs_or_stops_in_90s_with_one_line(project: Project):
    if project.datastore != "local" or project.metadata != "local":
        pytest.skip("one row is enough: the local runtime is independent of the row's backend")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no accessible /dev/kvm here: the local runtime is refused before its boot probe")
    (project.root / "boxlite_hello.py").write_text(FLOW)
    env = {k: v for k, v in project.env.items() if not k.startswith("BOXLITE_")}
    env.pop("METAFLOW_SANDBOX_BACKEND", None)
    state = env["METAFLOW_SANDBOX_BOXLITE_STATE_DIR"]  # fresh: the boot probe really runs
    project.env = env
    started = time.monotonic()
    result = project.run("boxlite_hello.py", "run", check=False, timeout=120)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    if result.returncode == 0:  # a host where VMs boot: the example works as written
        assert "HELLO-FROM" in output
        return
    assert elapsed < 90, f"the run took {elapsed:.0f} s to stop"
    lines = [
        line for line in output.splitlines() if "KVM is present but cannot boot a virtual machine" in line
    ]
    assert len(lines) == 1, output
    for fix in ("hardware virtualization", "BOXLITE_REST_URL", "@bubblewrap"):
        assert fix in lines[0]
    assert "Traceback" not in output
    assert "HELLO-FROM" not in output and "Task is starting" not in output
    assert (
        sandbox_processes("boxlite-shim") == [] and sandbox_processes("metaflow_sandbox_boxlite.probe") == []
    )
    assert not [name for name in os.listdir(state) if name.startswith("probe-home-")]
    boxes = os.path.join(env["HOME"], ".boxlite", "boxes")
    assert not os.path.isdir(boxes) or os.listdir(boxes) == []


def test_local_datastore_with_an_image_python_lacking_requests(project: Project, tmp_path):
    """A micro-VM runs its image's python3 (e.g. python:3.12-slim: no `requests`, which metaflow imports) on the
    local datastore: the launcher offers its client libraries through a read-only mount. bubblewrap with such a
    Python stands in for the VM here (the same channel and bootstrap code)."""
    if project.datastore != "local" or project.metadata != "local":
        pytest.skip("one row is enough: the local datastore with local metadata")
    from metaflow_sandbox_testing.clean_python import make_clean_python

    stock = make_clean_python(tmp_path / "stock", packages=())
    assert subprocess.run([stock, "-c", "import requests"], capture_output=True).returncode != 0
    flow = FLOW.replace("@boxlite", "@bubblewrap").replace(", boxlite,", ", bubblewrap,")
    (project.root / "boxlite_hello.py").write_text(flow)
    result = project.run("boxlite_hello.py", "run", METAFLOW_SANDBOX_PYTHON=stock)
    assert "HELLO-FROM" in result.stdout + result.stderr
