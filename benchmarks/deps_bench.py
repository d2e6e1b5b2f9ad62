"""P8: dependencies in sandboxes. A foreach of 10 sandboxed tasks sharing one `--environment=uv` environment
against the same foreach sandboxed without dependencies: per-task overhead (target <= 0.3 s), on bubblewrap +
local datastore and on the Daytona emulator + S3. The first run with dependencies pays the hydration once (one
line in its log, reported here); the medians are of the runs after it.

    python benchmarks/deps_bench.py [--repeat 2]
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from host_bench import _base_env, _cloud_world, _project, _run, _stop_hosts

WIDTH = 10
DEPENDENCY = "humanize==4.9.0"
#: How this machine reaches the package index (trust store, proxy, mirror): the launcher's uv needs them.
INDEX_SETTINGS = ("SSL_CERT_FILE", "SSL_CERT_DIR", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_NATIVE_TLS")
INDEX_SETTINGS += ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
HYDRATED = re.compile(r"Hydrated the uv environment \w+ \((\d+) packages\) in ([\d.]+)s")


@contextlib.contextmanager
def _local_world() -> Iterator[tuple[Path, dict[str, str], None]]:
    root = Path(tempfile.mkdtemp(prefix="mfs-p8-bwrap-"))
    try:
        yield root, {**_base_env(root), "METAFLOW_SANDBOX_BACKEND": "bubblewrap"}, None
    finally:
        _stop_hosts(root)
        shutil.rmtree(root, ignore_errors=True)


def p8_dependencies(backend: str = "bubblewrap", repeat: int = 2) -> dict:
    world = _local_world() if backend == "bubblewrap" else _cloud_world("mfs-p8-", backend)
    datastore = "local" if backend == "bubblewrap" else "s3"
    with world as (root, env, _):
        env = {**env, **{name: os.environ[name] for name in INDEX_SETTINGS if name in os.environ}}
        project = _project(root, "p8")
        (project / "pyproject.toml").write_text(
            f'[project]\nname = "p8"\nversion = "0.1.0"\nrequires-python = ">=3.9"\ndependencies = ["{DEPENDENCY}"]\n'
        )
        uv = shutil.which("uv", path=os.path.dirname(sys.executable)) or "uv"
        subprocess.run([uv, "lock", "--quiet"], cwd=project, env=env, check=True)
        common = ("deps_flow.py", "--metadata", "local", "--datastore", datastore)
        args = ("run", "--max-workers", "1", "--width", str(WIDTH))
        without = (*common, *args)
        with_deps = (*common, "--environment", "uv", *args, "--deps", "True")
        _run(project, env, *without)  # warm-up: package, host
        cold, output = _run(project, env, *with_deps)
        hydrated = HYDRATED.findall(output)
        plain, deps = [], []
        for _ in range(repeat):
            plain.append(_run(project, env, *without)[0])
            deps.append(_run(project, env, *with_deps)[0])
    p, d = statistics.median(plain), statistics.median(deps)
    return {
        "backend": backend,
        "datastore": datastore,
        "tasks": WIDTH,
        "without_deps_wall_s": round(p, 2),
        "with_deps_wall_s": round(d, 2),
        "overhead_per_task_s": round((d - p) / WIDTH, 3),
        "target_s": 0.3,
        "first_run_wall_s": round(cold, 2),
        "hydrations_in_first_run": len(hydrated),
        "hydration_s": float(hydrated[0][1]) if hydrated else None,
        "runs_without": [round(x, 2) for x in plain],
        "runs_with": [round(x, 2) for x in deps],
    }


def p8_both(repeat: int = 2) -> dict:
    return {
        "bubblewrap-local": p8_dependencies("bubblewrap", repeat),
        "daytona-s3": p8_dependencies("daytona", repeat),
    }


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2)
    print(json.dumps(p8_both(parser.parse_args().repeat), indent=2))
