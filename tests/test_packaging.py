"""Every package builds its own wheel; `metaflow-sandbox[bubblewrap]` installs exactly what it needs; what a
flow's code package carries into its sandboxes."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import _base_env

REPO = Path(__file__).resolve().parent.parent
PACKAGES = sorted(p for p in (REPO / "packages").iterdir() if (p / "pyproject.toml").exists())


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    for package in PACKAGES:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(dist),
                str(package),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return dist


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(archive.read(name))


def test_each_package_builds_a_versioned_wheel_with_sibling_ranges(wheels: Path):
    built = {metadata(w)["Name"]: metadata(w) for w in wheels.glob("*.whl")}
    assert set(built) == {
        "metaflow-sandbox",
        "metaflow-sandbox-core",
        "metaflow-sandbox-runtime",
        "metaflow-sandbox-relay",
        "metaflow-sandbox-bubblewrap",
        "metaflow-sandbox-daytona",
        "metaflow-sandbox-e2b",
        "metaflow-sandbox-boxlite",
        "metaflow-sandbox-testing",
    }
    for name, meta in built.items():
        assert meta["Version"] == "0.1.0", name
        for requirement in meta.get_all("Requires-Dist") or []:
            if requirement.startswith("metaflow-sandbox"):
                assert "<0.2" in requirement and ">=0.1.0" in requirement, (name, requirement)
    assert any("extra == 'bubblewrap'" in r for r in built["metaflow-sandbox"].get_all("Requires-Dist"))


def test_extension_with_bubblewrap_extra_installs_only_what_it_needs(wheels: Path, tmp_path: Path):
    uv = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    assert uv, "uv is a test dependency (installed by the nox session)"
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120)
    extension = next(wheels.glob("metaflow_sandbox-0.1.0-*.whl"))
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(venv / "bin" / "python"),
            "--find-links",
            str(wheels),
            f"metaflow-sandbox[bubblewrap] @ {extension.as_uri()}",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    listed = subprocess.run(
        [uv, "pip", "list", "--python", str(venv / "bin" / "python")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    ours = {line.split()[0] for line in listed.splitlines() if line.startswith("metaflow-sandbox")}
    assert ours == {
        "metaflow-sandbox",
        "metaflow-sandbox-core",
        "metaflow-sandbox-runtime",
        "metaflow-sandbox-relay",
        "metaflow-sandbox-bubblewrap",
    }
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "from metaflow import sandbox, bubblewrap, boxlite, daytona, e2b; "
            "from metaflow_sandbox_core import available_backends; print(sorted(available_backends()))",
        ],
        check=True,
        capture_output=True,
        text=True,
        env={"METAFLOW_USER": "tester", "PATH": "/usr/bin:/bin"},
    )
    assert probe.stdout.strip() == "['bubblewrap']"


PEEK_FLOW = """
import os
from metaflow import FlowSpec, step, bubblewrap
class PeekFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.peek)
    @bubblewrap
    @step
    def peek(self):
        here = os.path.dirname(os.path.abspath(__file__))
        for name in ("settings.py", "conf/keys.py", "secrets.toml", ".private/key.py"):
            path = os.path.join(here, name)
            print("peek", name, open(path).read().strip() if os.path.exists(path) else "absent")
        self.next(self.end)
    @step
    def end(self):
        pass
if __name__ == "__main__":
    PeekFlow()
"""


def test_the_code_package_carries_every_py_file_next_to_the_flow(tmp_path: Path):
    """docs/security.md, "The code package": every .py file under the flow's directory is readable inside the
    sandbox; other suffixes and hidden directories are not packaged."""
    project = tmp_path / "project"
    (project / "conf").mkdir(parents=True)
    (project / ".private").mkdir()
    (project / "peek_flow.py").write_text(PEEK_FLOW)
    (project / "settings.py").write_text("API_KEY = 'canary-settings'\n")
    (project / "conf" / "keys.py").write_text("KEY = 'canary-subdirectory'\n")
    (project / "secrets.toml").write_text("key = 'canary-toml'\n")
    (project / ".private" / "key.py").write_text("KEY = 'canary-hidden'\n")
    result = subprocess.run(
        [sys.executable, str(project / "peek_flow.py"), "--metadata", "local", "run"],
        cwd=project,
        env=_base_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "peek settings.py API_KEY = 'canary-settings'" in output
    assert "peek conf/keys.py KEY = 'canary-subdirectory'" in output
    assert "peek secrets.toml absent" in output
    assert "peek .private/key.py absent" in output
