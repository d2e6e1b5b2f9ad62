"""P7: side by side with the predecessor (`metaflow-sandbox==0.1.1` from PyPI), each in its own environment,
on the same flow (benchmarks/flows/side_by_side_flow.py under the backend's decorator), the same emulator
(Daytona's or E2B's), the same S3 server and the same sandbox image (a Python with pip, boto3 and requests, no metaflow).

    python benchmarks/side_by_side.py [--width N] [--backend daytona|e2b] [--images prepared,stock]
    (also run by `nox -s bench`)

Measured from the launcher's side, exactly as a user sees it: each task's wall time (from the runtime's
"Task is starting." to "Task finished successfully." lines), the delay of each printed line until it reaches
the terminal, and the peak RSS of the process that launches a sandboxed task (the runtime's child).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).parent
FLOW = HERE / "flows" / "side_by_side_flow.py"  # written with `@daytona`; `_project` swaps in the backend's
BACKENDS = ("daytona", "e2b")
#: The predecessor with both of its cloud extras (the e2b one brings e2b-code-interpreter).
PREDECESSOR = "metaflow-sandbox[daytona,e2b]==0.1.1"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "metaflow-sandbox" / "bench"

TASK_LINE = re.compile(r"\[[^/\]]+/(\w+)/(\d+) \(pid \d+\)\] (Task is starting|Task finished successfully)")
STAMP = re.compile(r"BENCH_TS=(\d+\.\d+)")


def _uv() -> str:
    uv = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    if uv is None:
        raise SystemExit("uv is needed for the side-by-side benchmark: pip install uv")
    return uv


def predecessor_python() -> str:
    """A venv with the predecessor from PyPI (cached between runs); its python."""
    venv = CACHE / "predecessor-0.1.1-daytona-e2b"
    done = venv / ".complete"
    if not done.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([_uv(), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        python = str(venv / "bin" / "python")
        subprocess.run([_uv(), "pip", "install", "--quiet", "--python", python, PREDECESSOR], check=True)
        done.touch()
    return str(venv / "bin" / "python")


class LauncherMemory:
    """Peak RSS (VmHWM) of the processes the Metaflow runtime `pid` starts (one per task)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak_kb = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _children(self) -> list[str]:
        children = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                children.append(entry)
        return children

    def _watch(self) -> None:
        while not self._done.is_set():
            for child in self._children():
                try:
                    status = Path(f"/proc/{child}/status").read_text()
                except OSError:
                    continue
                match = re.search(r"VmHWM:\s+(\d+)", status)
                if match:
                    self.peak_kb = max(self.peak_kb, int(match.group(1)))
            time.sleep(0.05)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak_kb


def run_flow(python: str, project: Path, env: dict[str, str], width: int) -> dict:
    """Run the flow once; what the launcher saw."""
    command = [python, FLOW.name, "--metadata", "local", "--datastore", "s3", "run"]
    command += ["--max-workers", "1", "--width", str(width)]
    started = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    memory = LauncherMemory(proc.pid)
    began: dict[tuple[str, str], float] = {}
    walls: dict[str, list[float]] = {}
    delays: list[float] = []
    output: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.time()
        output.append(line)
        stamp = STAMP.search(line)
        if stamp:
            delays.append(now - float(stamp.group(1)))
        task = TASK_LINE.search(line)
        if task:
            step, task_id, what = task.groups()
            if what == "Task is starting":  # the first one (the predecessor echoes the sandbox's own too)
                began.setdefault((step, task_id), now)
            elif (step, task_id) in began:
                walls.setdefault(step, []).append(now - began.pop((step, task_id)))
    code = proc.wait()
    wall = time.perf_counter() - started
    peak = memory.stop()
    log = CACHE / f"{project.name}.log"
    log.write_text("".join(output))
    if code != 0:
        raise RuntimeError(f"{python} {FLOW.name} exited {code}; its output is in {log}")
    return {
        "wall_s": round(wall, 2),
        "branch_task_mean_s": round(statistics.mean(walls["branch"]), 3),
        "branch_task_median_s": round(statistics.median(walls["branch"]), 3),
        "talk_task_s": round(walls["talk"][0], 3),
        "lines": len(delays),
        "first_line_delay_s": round(delays[0], 3) if delays else None,
        "line_delay_median_s": round(statistics.median(delays), 3) if delays else None,
        "launcher_peak_rss_mb": round(peak / 1024, 1),
    }


def _emulator(backend: str, python: str):  # type: ignore[no-untyped-def]
    """The backend's emulator on `python` (the sandbox image)."""
    if backend == "e2b":
        from metaflow_sandbox_testing.e2b_emulator import E2BEmulator

        return E2BEmulator(python=python)  # /tmp is private per sandbox there, as on E2B
    from metaflow_sandbox_testing.daytona_emulator import DaytonaEmulator

    # The predecessor writes its step script to the sandbox's /tmp: the file API may reach it.
    return DaytonaEmulator(python=python, host_paths=("/tmp",))


def side_by_side(
    width: int = 20, backend: str = "daytona", images: tuple[str, ...] = ("prepared", "stock")
) -> dict:
    """Plain once; then ours and theirs on each sandbox image, each image with its own emulator."""
    from metaflow_sandbox_testing.clean_python import make_clean_python
    from metaflow_sandbox_testing.s3_server import S3Server

    theirs_python = predecessor_python()
    root = Path(tempfile.mkdtemp(prefix="mfs-sbs-"))
    try:
        made = {
            # What this project's docs ask of an image for S3; the predecessor's per-task
            # `pip install boto3 requests` then finds them installed.
            "prepared": lambda: make_clean_python(root / "prepared", with_pip=True),
            # A stock Python image (python:3.11-slim, Daytona's default): pip, no boto3. The predecessor
            # pip-installs from the package index in every sandbox; this project ships its client bundle.
            "stock": lambda: make_clean_python(root / "stock", packages=(), with_pip=True),
        }
        pythons = {image: made[image]() for image in images}
        (root / "home").mkdir()
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(root / "home"),
            "LANG": "C.UTF-8",
            "METAFLOW_USER": "bench",
            "METAFLOW_SANDBOX_CACHE_DIR": str(root / "cache"),
        }
        results: dict = {
            "width": width,
            "backend": backend,
            "predecessor": PREDECESSOR,
            "target_ratio": round(1 / 3, 3),
        }
        with S3Server() as s3:
            s3.create_bucket("bench")
            env = {**base, **s3.metaflow_env("bench")}
            results["plain"] = run_flow(sys.executable, _project(root, "plain", backend), env, width)
            for image, python in pythons.items():
                with _emulator(backend, python) as emulator:
                    cloud_env = {**env, **emulator.env()}
                    ours = run_flow(
                        sys.executable, _project(root, f"ours-{image}", backend), cloud_env, width
                    )
                    try:
                        theirs = run_flow(
                            theirs_python, _project(root, f"theirs-{image}", backend), cloud_env, width
                        )
                    except RuntimeError as error:  # recorded: why the predecessor cannot run here
                        theirs = {"error": str(error)}
                    left = len(emulator.live_sandboxes())
                ratio = None
                if "branch_task_mean_s" in theirs:
                    ratio = round(ours["branch_task_mean_s"] / theirs["branch_task_mean_s"], 3)
                results[image] = {
                    "ours": ours,
                    "theirs": theirs,
                    "task_wall_ratio": ratio,
                    "sandboxes_left": left,
                }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def _project(root: Path, name: str, backend: str) -> Path:
    """A project directory with the flow under `backend`'s decorator; the plain baseline gets it without."""
    project = root / name
    project.mkdir()
    text = FLOW.read_text()
    text = text.replace("    @daytona\n", "") if name == "plain" else re.sub(r"\bdaytona\b", backend, text)
    (project / FLOW.name).write_text(text)
    return project


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=20)
    parser.add_argument("--backend", choices=BACKENDS, default="daytona")
    parser.add_argument("--images", default="prepared,stock", help="comma-separated: prepared, stock")
    args = parser.parse_args()
    images = tuple(i for i in args.images.split(",") if i)
    print(json.dumps(side_by_side(args.width, args.backend, images), indent=2))


if __name__ == "__main__":
    main()
