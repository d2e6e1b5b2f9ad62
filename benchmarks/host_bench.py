"""Benchmarks of the warm sandbox host: P2 (per-task overhead on the Daytona and E2B emulators), P5 (a wide
foreach on Daytona), R5 (the host's memory over many tasks). Called by run.py; each figure against a baseline
measured in the same run.

    python benchmarks/host_bench.py [--p5-width 200] [--r5-tasks 500] [--only P2|P2-e2b|P5|R5] [--p2-width 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
FLOWS = HERE / "flows"
HOST_MODULE = "metaflow_extensions.sandbox.plugins.sandbox.sandbox_host"
TASK_LINE = re.compile(r"\[[^/\]]+/(\w+)/(\d+) \(pid \d+\)\] (Task is starting|Task finished successfully)")


def _project(root: Path, name: str) -> Path:
    project = root / name
    (project / ".metaflow").mkdir(parents=True)
    for flow in FLOWS.glob("*.py"):
        shutil.copy(flow, project / flow.name)
    return project


def _base_env(root: Path) -> dict[str, str]:
    (root / "home").mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root / "home"),
        "LANG": "C.UTF-8",
        "METAFLOW_USER": "bench",
        "METAFLOW_SANDBOX_CACHE_DIR": str(root / "cache"),
        "METAFLOW_SANDBOX_HOST_DIR": str(root / "host"),
        # Longer than any run between two sandboxed ones (a plain run of P2 takes 40 s here), so a sandboxed run
        # finds the host warm, as with the default of 600 s; hosts under the root are stopped after each figure.
        "METAFLOW_SANDBOX_HOST_IDLE": "300",
    }


def _run(project: Path, env: dict[str, str], *args: str, on_line=None) -> tuple[float, str]:
    """Run `python <args>` in the project; (wall seconds, output). Raises on failure."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if on_line is not None:
            on_line(line)
    code = proc.wait()
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{' '.join(args)} exited {code}:\n{''.join(lines[-40:])}")
    return wall, "".join(lines)


def _host_pids(root: Path) -> list[int]:
    marker = str(root / "host").encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if HOST_MODULE.encode() in cmdline and marker in cmdline:
                pids.append(int(entry))
    return pids


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _stop_hosts(root: Path) -> None:
    for pid in _host_pids(root):
        try:
            os.kill(pid, 15)
        except OSError:
            pass


@contextlib.contextmanager
def _cloud_world(prefix: str, backend: str = "daytona") -> Iterator[tuple[Path, dict[str, str], Any]]:
    """A scratch root, a real S3 server with a bucket and the backend's emulator (Daytona's or E2B's) whose
    image has no metaflow: (root, the environment a run needs, the emulator). Hosts started under the root
    are stopped after."""
    from metaflow_sandbox_testing.clean_python import make_clean_python
    from metaflow_sandbox_testing.daytona_emulator import DaytonaEmulator
    from metaflow_sandbox_testing.e2b_emulator import E2BEmulator
    from metaflow_sandbox_testing.s3_server import S3Server

    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        image = make_clean_python(root / "image")
        emulator_class = E2BEmulator if backend == "e2b" else DaytonaEmulator
        with S3Server() as s3, emulator_class(python=image) as emulator:
            s3.create_bucket("bench")
            env = {**_base_env(root), **s3.metaflow_env("bench"), **emulator.env()}
            yield root, {**env, "METAFLOW_SANDBOX_BACKEND": backend}, emulator
    finally:
        _stop_hosts(root)
        shutil.rmtree(root, ignore_errors=True)


def p2_daytona_overhead(width: int = 20) -> dict:
    """P2 on the Daytona emulator."""
    return p2_overhead(width, "daytona")


def p2_overhead(width: int = 20, backend: str = "daytona") -> dict:
    """Per-task overhead over plain on a cloud backend's emulator + S3: foreach of `width`, one worker, after a
    warm-up run (a warm host, as a user's second run finds it)."""
    with _cloud_world(f"mfs-p2-{backend}-", backend) as (root, env, emulator):
        project = _project(root, "p2")
        args = ("fanout_flow.py", "--metadata", "local", "--datastore", "s3", "run", "--max-workers", "1")
        args += ("--width", str(width))
        _run(project, {**env, "BENCH_SANDBOX": "1"}, *args)  # warm-up: package, bundle, host
        plain, boxed = [], []
        for _ in range(2):
            plain.append(_run(project, {**env, "BENCH_SANDBOX": "0"}, *args)[0])
            boxed.append(_run(project, {**env, "BENCH_SANDBOX": "1"}, *args)[0])
        left = len(emulator.live_sandboxes())
    p, b = statistics.median(plain), statistics.median(boxed)
    return {
        "backend": backend,
        "tasks": width,
        "plain_wall_s": round(p, 2),
        "sandboxed_wall_s": round(b, 2),
        "overhead_per_task_s": round((b - p) / width, 3),
        "target_s": 0.3,
        "sandboxes_left": left,
    }


def p5_wide_foreach(width: int = 200, workers: int = 32) -> dict:
    """A foreach of `width` @daytona tasks with `--max-workers workers`: completes, 0 failures, 0 sandboxes
    left; the start times of the sandboxes show the client-side create rate limit held."""
    rate = 600
    with _cloud_world("mfs-p5-") as (root, env, emulator):
        env = {**env, "METAFLOW_SANDBOX_DAYTONA_CREATES_PER_MINUTE": str(rate)}
        project = _project(root, "p5")
        args = ("fanout_flow.py", "--metadata", "local", "--datastore", "s3", "run")
        args += (
            "--max-workers",
            str(workers),
            "--width",
            str(width),
            "--max-num-splits",
            str(max(width, 100)),
        )
        plain, _ = _run(project, {**env, "BENCH_SANDBOX": "0"}, *args)
        failures: list[str] = []
        boxed, output = _run(
            project,
            {**env, "BENCH_SANDBOX": "1"},
            *args,
            on_line=lambda line: failures.append(line) if "Task failed" in line else None,
        )
        left = len(emulator.live_sandboxes())
    # When each sandbox was ready, as the runtime stamped the launcher's "Running in …" line.
    created = sorted(
        time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
        for m in re.finditer(
            r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.\d+ .*Running in daytona sandbox", output, re.M
        )
    )
    busiest = max((sum(1 for t in created if start <= t < start + 60) for start in created), default=0)
    return {
        "tasks": width,
        "max_workers": workers,
        "plain_wall_s": round(plain, 1),
        "sandboxed_wall_s": round(boxed, 1),
        "ratio": round(boxed / plain, 2),
        "failures": len(failures),
        "sandboxes_left": left,
        "creates_per_minute_limit": rate,
        "sandboxes_started": len(created),
        "busiest_minute_creates": busiest,
    }


def r5_host_memory(tasks: int = 500) -> dict:
    """`tasks` bubblewrap tasks in a row through one host (a foreach, one worker): the host's RSS after task 50
    and after the last one."""
    root = Path(tempfile.mkdtemp(prefix="mfs-r5-"))
    try:
        env = {**_base_env(root), "METAFLOW_SANDBOX_BACKEND": "bubblewrap", "BENCH_SANDBOX": "1"}
        project = _project(root, "r5")
        finished = [0]
        samples: dict[int, int] = {}

        def on_line(line: str) -> None:
            match = TASK_LINE.search(line)
            if match and match.group(1) == "branch" and match.group(3).startswith("Task finished"):
                finished[0] += 1
                if finished[0] in (50, tasks):
                    pids = _host_pids(root)
                    if pids:
                        samples[finished[0]] = _rss_kib(pids[0])

        wall, _ = _run(
            project,
            env,
            "fanout_flow.py",
            "--metadata",
            "local",
            "run",
            "--max-workers",
            "1",
            "--width",
            str(tasks),
            "--max-num-splits",
            str(max(tasks, 100)),
            on_line=on_line,
        )
        return {
            "tasks": tasks,
            "host_rss_at_50_mb": round(samples.get(50, 0) / 1024, 1),
            f"host_rss_at_{tasks}_mb": round(samples.get(tasks, 0) / 1024, 1),
            "growth_mb": round((samples.get(tasks, 0) - samples.get(50, 0)) / 1024, 1),
            "target_growth_mb": 20,
            "wall_s": round(wall, 1),
        }
    finally:
        _stop_hosts(root)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--p5-width", type=int, default=200)
    parser.add_argument("--r5-tasks", type=int, default=500)
    parser.add_argument("--only", choices=("P2", "P2-e2b", "P5", "R5"))
    parser.add_argument("--p2-width", type=int, default=20)
    args = parser.parse_args()
    results = {}
    if args.only in (None, "P2"):
        results["P2"] = p2_overhead(args.p2_width, "daytona")
    if args.only in (None, "P2-e2b"):
        results["P2-e2b"] = p2_overhead(args.p2_width, "e2b")
    if args.only in (None, "P5"):
        results["P5"] = p5_wide_foreach(args.p5_width)
    if args.only in (None, "R5"):
        results["R5"] = r5_host_memory(args.r5_tasks)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
