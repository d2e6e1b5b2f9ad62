"""boxlite benchmarks, called by run.py (or alone: `python benchmarks/boxlite_bench.py`):

- B1: boxlite's REST mode on the boxlite emulator + S3 (moto): per-task overhead over plain, foreach of N with
  one worker, warm host (the real boxlite SDK end to end; the emulator's boxes are local processes, so this is
  the backend's and SDK's own cost, not a VM's).
- B2: the local runtime's cold start (first box of an image) and warm start (the next boxes) — only where the
  boot probe boots a VM; elsewhere it records why it was skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from host_bench import _base_env, _project, _run, _stop_hosts


@contextlib.contextmanager
def _boxlite_world(prefix: str) -> Iterator[tuple[Path, dict[str, str], Any]]:
    from metaflow_sandbox_testing.boxlite_emulator import BoxliteEmulator
    from metaflow_sandbox_testing.clean_python import make_clean_python
    from metaflow_sandbox_testing.s3_server import S3Server

    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        image = make_clean_python(root / "image")
        with S3Server() as s3, BoxliteEmulator(python=image) as emulator:
            s3.create_bucket("bench")
            env = {**_base_env(root), **s3.metaflow_env("bench"), **emulator.env()}
            env["METAFLOW_SANDBOX_BOXLITE_STATE_DIR"] = str(root / "boxlite-state")
            yield root, {**env, "METAFLOW_SANDBOX_BACKEND": "boxlite"}, emulator
    finally:
        _stop_hosts(root)
        shutil.rmtree(root, ignore_errors=True)


def b1_boxlite_remote_overhead(width: int = 20) -> dict:
    with _boxlite_world("mfs-b1-") as (root, env, emulator):
        project = _project(root, "b1")
        args = ("fanout_flow.py", "--metadata", "local", "--datastore", "s3", "run", "--max-workers", "1")
        args += ("--width", str(width))
        _run(project, {**env, "BENCH_SANDBOX": "1"}, *args)  # warm-up: package, bundle, host
        plain, boxed = [], []
        for _ in range(2):
            plain.append(_run(project, {**env, "BENCH_SANDBOX": "0"}, *args)[0])
            boxed.append(_run(project, {**env, "BENCH_SANDBOX": "1"}, *args)[0])
        left = len(emulator.live_boxes())
    p, b = statistics.median(plain), statistics.median(boxed)
    return {
        "tasks": width,
        "plain_wall_s": round(p, 2),
        "sandboxed_wall_s": round(b, 2),
        "overhead_per_task_s": round((b - p) / width, 3),
        "boxes_left": left,
    }


def b2_boxlite_local_start(boxes: int = 5) -> dict:
    """Cold and warm start of a local box running `true`, through the backend (skipped where no VM boots)."""
    from metaflow_sandbox_boxlite import BoxliteBackend
    from metaflow_sandbox_core import SandboxError, SandboxSpec

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("BOXLITE_")}
    try:
        backend = BoxliteBackend()
        try:
            backend.check()
        except SandboxError as error:
            return {"skipped": str(error)}
        image = os.environ.get("BENCH_BOXLITE_IMAGE")  # an OCI layout on hosts without a registry
        times = []
        for _ in range(boxes):
            started = time.perf_counter()
            with backend.create(SandboxSpec(image=image, network="none")) as box:
                box.run(["true"], timeout=300)
            times.append(time.perf_counter() - started)
        return {
            "cold_s": round(times[0], 3),
            "warm_median_s": round(statistics.median(times[1:]), 3),
            "boxes": boxes,
        }
    finally:
        os.environ.update(saved)


def boxlite_rows(results: dict) -> str:
    rows = []
    if "B1" in results:
        b1 = results["B1"]
        rows.append(
            f"| B1 | per-task overhead of `@boxlite` in REST mode on the boxlite emulator + S3 (moto), foreach of "
            f"{b1['tasks']}, `--max-workers 1`, warm host | **{b1['overhead_per_task_s']} s** (plain {b1['plain_wall_s']} s, "
            f"sandboxed {b1['sandboxed_wall_s']} s; boxes left {b1['boxes_left']}) | reported |"
        )
    if "B2" in results:
        b2 = results["B2"]
        result = (
            f"skipped: {b2['skipped']}"
            if "skipped" in b2
            else f"**cold {b2['cold_s']} s, warm {b2['warm_median_s']} s** (create + `true` + remove, {b2['boxes']} boxes)"
        )
        rows.append(f"| B2 | `@boxlite` local runtime: box start, cold and warm | {result} | reported |")
    return "\n".join(rows) + ("\n" if rows else "")


if __name__ == "__main__":
    print(json.dumps({"B1": b1_boxlite_remote_overhead(), "B2": b2_boxlite_local_start()}, indent=2))
