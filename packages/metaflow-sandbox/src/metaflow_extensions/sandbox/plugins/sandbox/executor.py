"""Runs one task attempt in a sandbox: backend + runtime + relay. Never imports metaflow.

Exit codes follow @batch: the step's own code (retryable by @retry), or 202 for an infrastructure
failure that retrying the user's code will not fix.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from typing import IO

from metaflow_sandbox_core import (
    Backend,
    ConfigError,
    Mount,
    Sandbox,
    SandboxError,
    SandboxSpec,
    SandboxTimeoutError,
    call_with_retries,
    load_backend,
)
from metaflow_sandbox_relay import (
    RelayRefusedError,
    ServiceReplayError,
    StagedTask,
    TaskScope,
    apply_local_metadata,
    apply_to_datastore,
    artifact_problems,
    collect_staged_task,
    replay_to_service,
)
from metaflow_sandbox_runtime import Plan, bootstrap_source

from .code_package import ensure_extracted
from .step_command import StepCommand
from .task_launch import TaskLaunch

EXIT_INFRASTRUCTURE = 202  # metaflow.exception.METAFLOW_EXIT_DISALLOW_RETRY
EXIT_TIMEOUT = 124
SANDBOX_DIR = "/tmp/metaflow-sandbox"  # where the bootstrap and plan go inside the sandbox
TIMEOUT_GRACE = 30.0  # the in-task @timeout fires first; the sandbox limit is the backstop


class Interrupted(Exception):
    """SIGINT/SIGTERM/SIGHUP arrived; unwind so the sandbox is destroyed."""


def _say(message: str) -> None:
    """A launcher message: unstructured, so Metaflow stores it in the task's `runtime` log."""
    sys.stderr.write(f"[sandbox] {message}\n")
    sys.stderr.flush()


def _forward(stream: str, line: bytes) -> None:
    out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
    out.write(line)
    out.flush()


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


class TaskExecutor:
    """Composes the pieces for one attempt; `run()` returns the process exit code."""

    def __init__(self, launch: TaskLaunch, command: StepCommand, say: Callable[[str], None] = _say):
        self.launch = launch
        self.command = command
        self.say = say
        self.scope = TaskScope(launch.flow, launch.run_id, launch.step, launch.task_id, launch.attempt)
        self.staging = os.path.join(launch.cache_dir, "staging", uuid.uuid4().hex)

    def run(self) -> int:
        previous = {
            s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            return self._run()
        except Interrupted as signal_name:
            self.say(f"Interrupted ({signal_name}); the sandbox was destroyed.")
            return 128 + signal.SIGINT
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            shutil.rmtree(self.staging, ignore_errors=True)

    def _run(self) -> int:
        try:
            backend = load_backend(self.launch.backend)
            package_dir = ensure_extracted(
                self.launch.package_blob, self.launch.package_sha, self.launch.cache_dir
            )
            os.makedirs(self.staging, mode=0o700)
            plan = self._plan(package_dir)
            spec = self._spec(backend, package_dir)
        except SandboxError as error:
            self.say(f"{error}")
            return EXIT_INFRASTRUCTURE
        code = self._run_in_sandbox(backend, spec, plan)
        if code == EXIT_INFRASTRUCTURE:
            return code
        try:
            self._relay()
        except (RelayRefusedError, ServiceReplayError) as error:
            self.say(f"Task failed: {error}")
            return EXIT_INFRASTRUCTURE
        return code

    def _plan(self, package_dir: str) -> Plan:
        launch = self.launch
        task_dir = os.path.join(self.staging, launch.flow, launch.run_id, launch.step, launch.task_id)
        env = {k: v.replace("{package_dir}", package_dir) for k, v in launch.package_env.items()}
        env.update(launch.step_env)
        env["METAFLOW_SANDBOX_STAGING"] = self.staging
        return Plan(
            python=launch.python,
            argv=self.command.inner_argv(os.path.join(package_dir, launch.flow_file)),
            package_dir=package_dir,
            workdir=f"{SANDBOX_DIR}/work",
            env=env,
            log_paths={
                "stdout": os.path.join(task_dir, f"{launch.attempt}.task_stdout.log"),
                "stderr": os.path.join(task_dir, f"{launch.attempt}.task_stderr.log"),
            },
        )

    def _spec(self, backend: Backend, package_dir: str) -> SandboxSpec:
        launch = self.launch
        if not backend.capabilities.can_mount:
            raise ConfigError(
                f"The {backend.name!r} backend cannot see this machine's files, so it needs a remote "
                "datastore; this version supports the local datastore only with a backend that can mount."
            )
        # Only this run's directory and the flow's content-addressed blobs, read-only: other flows and
        # other runs stay invisible; writes go to the staging tree.
        flow_root = os.path.join(launch.datastore_root, launch.flow)
        readable = [os.path.join(flow_root, launch.run_id), os.path.join(flow_root, "data")]
        mounts = [Mount(path, path, read_only=True) for path in readable if os.path.isdir(path)]
        mounts += [Mount(prefix, prefix, read_only=True) for prefix in launch.python_prefixes]
        mounts.append(Mount(package_dir, package_dir, read_only=True))
        mounts.append(Mount(self.staging, self.staging, read_only=False))
        config_file = self.command.option_value("--local-config-file")
        if config_file:
            mounts.append(Mount(os.path.abspath(config_file), os.path.abspath(config_file), read_only=True))
        spec = dict(launch.spec)
        if spec.get("timeout") is None:
            spec["timeout"] = launch.run_time_limit + TIMEOUT_GRACE
        return SandboxSpec(**spec, mounts=tuple(mounts), labels=launch.labels)

    def _run_in_sandbox(self, backend: Backend, spec: SandboxSpec, plan: Plan) -> int:
        started = time.monotonic()
        sandbox: Sandbox | None = None
        try:
            sandbox = call_with_retries(
                lambda: backend.create(spec),
                on_retry=lambda error, delay: self.say(f"{error} — retrying in {delay:.1f}s"),
            )
            self.say(
                f"Running in {backend.name} sandbox {sandbox.id} (ready in {time.monotonic() - started:.2f}s)."
            )
            sandbox.upload(bootstrap_source(), f"{SANDBOX_DIR}/bootstrap.py")
            sandbox.upload(plan.to_json().encode(), f"{SANDBOX_DIR}/plan.json")
            code = sandbox.run(
                plan.command(f"{SANDBOX_DIR}/bootstrap.py", f"{SANDBOX_DIR}/plan.json"),
                timeout=spec.timeout,
                on_output=_forward,
            )
            return code
        except SandboxTimeoutError:
            self.say(f"The step ran past its {spec.timeout:.0f}s sandbox time limit and was killed.")
            return EXIT_TIMEOUT
        except SandboxError as error:
            self.say(f"Sandbox infrastructure failure: {error}")
            return EXIT_INFRASTRUCTURE
        finally:
            if sandbox is not None:
                sandbox.destroy()

    def _relay(self) -> None:
        launch = self.launch
        staged = collect_staged_task(self.staging, self.scope)
        self._check_artifacts(staged)
        apply_to_datastore(staged, launch.datastore_root)
        if launch.metadata_type == "local":
            apply_local_metadata(staged, launch.datastore_root)
        elif launch.metadata_type == "service" and launch.service_url:
            replay_to_service(staged, launch.service_url, launch.service_headers)

    def _check_artifacts(self, staged: StagedTask) -> None:
        """Refuse artifacts the launcher could not unpickle without running sandboxed code."""
        listing = f"{self.launch.attempt}.data.json"
        data_json = next((rel for rel in staged.task_files if rel.endswith("/" + listing)), None)
        if data_json is None or self.launch.trusted_types == "*":
            return
        staged_blobs = {rel.rsplit("/", 1)[-1]: rel for rel in staged.blobs}
        flow_data = os.path.join(self.launch.datastore_root, self.launch.flow, "data")

        def open_blob(sha: str) -> IO[bytes]:
            if sha in staged_blobs:
                return staged.source.open(staged_blobs[sha])
            return open(os.path.join(flow_data, sha[:2], sha), "rb")

        with staged.source.open(data_json) as f:
            problems = artifact_problems(f.read(), open_blob, self.launch.trusted_types)
        if problems:
            problems.append(
                "to accept other types, list their modules in trusted_types=[...] (see docs/security.md)"
            )
            raise RelayRefusedError(self.scope, problems)


def launch_from_argv(argv: list[str]) -> int:
    """Entry point shared by the light launcher and `flow.py sandbox step`."""
    from .step_command import parse_step_command

    command = parse_step_command(argv)
    launch = TaskLaunch.load(command.launch_path)
    try:
        return TaskExecutor(launch, command).run()
    finally:
        try:
            os.unlink(command.launch_path)
        except OSError:
            pass


__all__ = ["EXIT_INFRASTRUCTURE", "TaskExecutor", "launch_from_argv"]
