"""`TaskLaunch`: what the runtime hands the launcher for one task attempt (a 0600 JSON file).

It may hold the metadata service's headers (an auth token); it stays on the launcher and never enters a sandbox.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TaskLaunch:
    """Everything the launcher needs besides its argv. Written by the decorator, read by the launcher."""

    backend: str
    spec: dict[str, Any]  # SandboxSpec keyword arguments (no mounts, no labels)
    flow: str
    run_id: str
    step: str
    task_id: str
    attempt: int
    datastore_type: str
    datastore_root: str
    metadata_type: str  # the launcher's metadata provider: "local" or "service"
    package_blob: str  # where the code package archive is
    package_sha: str
    package_env: dict[str, str]  # post-extract variables with "{package_dir}" placeholders
    python: str
    python_prefixes: list[str]
    flow_file: str
    cache_dir: str
    service_url: str | None = None
    service_headers: dict[str, str] = field(default_factory=dict)
    step_env: dict[str, str] = field(default_factory=dict)
    #: Where local metadata lives on the launcher (the datastore root for the local datastore).
    metadata_root: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    #: Non-secret S3 settings the step needs (endpoint, region, datastore root).
    s3_env: dict[str, str] = field(default_factory=dict)
    #: How the sandbox gets datastore credentials: "sts", "forward" or "none".
    s3_credentials: str = "sts"
    #: Extra deny-list patterns (METAFLOW_SANDBOX_ENV_DENYLIST) as the runtime saw them.
    env_denylist: str = ""
    trusted_types: list[str] | str = field(default_factory=list)
    run_time_limit: float = 5 * 24 * 3600
    #: The task's inputs as "run/step/task": their artifacts are already accepted into the flow.
    parents: list[str] = field(default_factory=list)
    #: Bounds on checking the task's results (bytes read plus inflated; seconds).
    max_result_bytes: int = 16 << 30
    #: The largest artifact a step without a memory limit may return (bytes, as pickled).
    max_artifact_bytes: int = 1 << 30
    #: Print the launcher's phase timings for the task (METAFLOW_SANDBOX_TIMINGS).
    timings: bool = False
    relay_timeout: float = 1800.0
    #: How many tasks this task's foreach split starts (0: not a foreach split, or METAFLOW_SANDBOX_PREWARM=0)
    #: and the run's --max-workers: the sandbox host creates sandboxes for the splits still to come ahead.
    foreach_size: int = 0
    max_workers: int = 16
    #: `--environment=uv`: a `UvTarget` as a dict (project directory, Python version, platform), else None.
    uv: dict[str, str] | None = None
    #: `@pypi`/`@conda` on a remote backend: what the sandbox builds the environment from
    #: (`conda_environment.remote_environment`), else None.
    conda: dict | None = None

    @property
    def labels(self) -> dict[str, str]:
        return {
            "metaflow.flow": self.flow,
            "metaflow.run": self.run_id,
            "metaflow.step": self.step,
            "metaflow.task": self.task_id,
            "metaflow.attempt": str(self.attempt),
        }

    def save(self, directory: str) -> str:
        """Write to a private file in `directory`; return its path."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(
            prefix=f"{self.step}-{self.task_id}-{self.attempt}-", suffix=".json", dir=directory
        )
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        return path

    @classmethod
    def load(cls, path: str) -> TaskLaunch:
        with open(path) as f:
            return cls(**json.load(f))
