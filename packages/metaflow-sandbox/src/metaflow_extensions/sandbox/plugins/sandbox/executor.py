"""Runs one task attempt in a sandbox: backend + runtime + relay. Never imports metaflow.

Exit codes follow @batch: the step's own code (retryable by @retry), or 202 for an infrastructure
failure that retrying the user's code will not fix.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from metaflow_sandbox_core import (
    Backend,
    Mount,
    NetworkPolicy,
    Sandbox,
    SandboxError,
    SandboxSpec,
    SandboxTimeoutError,
    Started,
    call_with_retries,
    load_backend,
    neutralize_controls,
)
from metaflow_sandbox_core.housekeeping import later
from metaflow_sandbox_relay import RelayRefusedError, ServiceReplayError
from metaflow_sandbox_runtime import Plan, bootstrap_source
from metaflow_sandbox_runtime.plan import PREPARED

from .conda_environment import package_urls, plan_fields
from .datastore_channels import SANDBOX_SUBDIR, Channel, channel_for
from .env_denylist import denied_names, denylist
from .step_command import StepCommand
from .task_dirs import remove, sweep_once, task_dir
from .task_launch import TaskLaunch
from .uv_environment import UvTarget, environment_archive, environment_dir
from .warm_pool import MAX_WAIT_SECONDS, Making, WarmPool, WarmSandbox

EXIT_INFRASTRUCTURE = 202  # metaflow.exception.METAFLOW_EXIT_DISALLOW_RETRY
EXIT_TIMEOUT = 124
TIMEOUT_GRACE = 30.0  # the in-task @timeout fires first; the sandbox limit is the backstop


class Interrupted(Exception):
    """SIGINT/SIGTERM/SIGHUP arrived (or the task's client went away); unwind so the sandbox is destroyed."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _say(message: str) -> None:
    """A launcher message: unstructured, so Metaflow stores it in the task's `runtime` log."""
    sys.stderr.write(f"[sandbox] {message}\n")
    sys.stderr.flush()


def _forward(stream: str, line: bytes) -> None:
    out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
    out.write(line)
    out.flush()


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


class TaskExecutor:
    """Composes the pieces for one attempt; `run()` returns the process exit code.

    In the task's own process (`launch.py`) it writes to that process's stdout/stderr and handles its
    signals; in the sandbox host, `say`/`output` go to the task's client and `interrupt()` comes from it.
    """

    def __init__(
        self,
        launch: TaskLaunch,
        command: StepCommand,
        say: Callable[[str], None] = _say,
        output: Callable[[str, bytes], None] = _forward,
        backends: Callable[[str], Backend] = load_backend,
        extra_labels: dict[str, str] | None = None,
        cwd: str | None = None,
        warm_pool: WarmPool | None = None,
    ):
        self.launch = launch
        self.command = command
        self.say = say
        self.output = output
        self.backends = backends
        self.extra_labels = extra_labels or {}
        self.cwd = cwd or os.getcwd()  # the task's: relative paths of its command line resolve there
        self.warm_pool = warm_pool
        self._group: str | None = None  # this task's group in the warm pool, if it has one
        # The spec's mount of `staging`: the one part of a foreach split's spec that no sibling shares.
        self._staging_mount: str | None = None
        self._interrupted: int | None = None
        self._sandbox: Sandbox | None = None
        self._sandbox_lock = threading.Lock()
        self.staging = task_dir(launch.cache_dir, "staging")
        self.scratch = task_dir(launch.cache_dir, "relay")
        self._environment_dir: str | None = None  # --environment=uv, mounted read-only
        self._environment_url: str | None = None  # --environment=uv, fetched by a sandbox that cannot mount
        self._conda_reads: list[str] = []  # @pypi/@conda remotely: presigned reads of the package cache
        self._micromamba_url: str | None = None
        self._timings: list[tuple[str, float]] = []
        self._last = time.monotonic()

    def _mark(self, phase: str) -> None:
        now = time.monotonic()
        self._timings.append((phase, now - self._last))
        self._last = now

    def interrupt(self, signum: int) -> None:
        """From another thread: stop the task as if `signum` arrived (its sandbox is destroyed now)."""
        with self._sandbox_lock:
            if self._interrupted is None:
                self._interrupted = signum
            sandbox = self._sandbox
        if sandbox is not None:
            sandbox.destroy()

    def _check_interrupted(self) -> None:
        if self._interrupted is not None:
            raise Interrupted(self._interrupted)

    def run(self, install_signal_handlers: bool = True) -> int:
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if install_signal_handlers else ()
        previous = {s: signal.signal(s, _raise_interrupted) for s in signals}
        code = EXIT_INFRASTRUCTURE
        try:
            code = self._attempt()
            return code
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if code != 0 and self.warm_pool is not None:
                self.warm_pool.drop(self._group_prefix())  # the run may stop here: none ahead is wanted

    def _attempt(self) -> int:
        channel: Channel | None = None
        try:
            try:
                sweep_once(self.launch.cache_dir)
                backend = self.backends(self.launch.backend)
                threading.Thread(target=backend.preload, name="preload", daemon=True).start()
                os.makedirs(self.staging, mode=0o700)
                os.makedirs(self.scratch, mode=0o700)
                channel = channel_for(self.launch, backend, self.staging, self.scratch, self.say)
                channel.prepare()
                self._prepare_environment(backend, channel)
                spec = self._spec(backend, channel)
                self._mark("prepare")
            except SandboxError as error:
                self.say(f"{error}")
                return EXIT_INFRASTRUCTURE
            self._check_interrupted()
            code = self._run_in_sandbox(backend, spec, channel)
            self._mark("destroy")
            self._check_interrupted()
            if code == EXIT_INFRASTRUCTURE:
                return code
            try:
                channel.relay(code)
                self._mark("relay")
            except (RelayRefusedError, ServiceReplayError) as error:
                self.say(f"Task failed: {error}")
                return EXIT_INFRASTRUCTURE
            return code
        except Interrupted as interrupted:
            self.say(f"Interrupted ({interrupted}); the sandbox was destroyed.")
            return 128 + interrupted.signum
        finally:
            later(functools.partial(_tidy, channel, self.staging, self.scratch))  # after the result is out
            self._mark("cleanup")
            if self.launch.timings:
                self.say("timings: " + ", ".join(f"{name} {seconds:.3f}s" for name, seconds in self._timings))

    def _prepare_environment(self, backend: Backend, channel: Channel) -> None:
        """The step's dependencies: `--environment=uv` installed once per environment on this side; @pypi/@conda
        on a remote backend: read links to exactly the cached packages its environment needs, and micromamba."""
        conda = self.launch.conda
        if conda:
            self._conda_reads = channel.presigned_reads(package_urls(conda))
            self._micromamba_url = channel.publish(conda["micromamba"])
        if not self.launch.uv:
            return
        directory = environment_dir(UvTarget(**self.launch.uv), self.launch.cache_dir, self.say)
        if backend.capabilities.can_mount:
            self._environment_dir = directory
        else:
            self._environment_url = channel.publish(environment_archive(directory))

    def _environment_libraries(self, base: str) -> list[dict]:
        """The environment as a plan library: no modules to probe, so the bootstrap always provides it."""
        if self._environment_url is None:
            return []
        return [
            {
                "modules": [],
                "url": self._environment_url,
                "dir": f"{base}/environment",
                "what": "the uv environment",
            }
        ]

    def _spec(self, backend: Backend, channel: Channel) -> SandboxSpec:
        launch = self.launch
        mounts = [*channel.mounts(), *channel.package()[1]]
        if self._environment_dir is not None:
            mounts.append(Mount(self._environment_dir, self._environment_dir, read_only=True))
        readable = channel.readable()
        if backend.capabilities.can_mount:
            mounts += [Mount(prefix, prefix, read_only=True) for prefix in launch.python_prefixes]
            config_file = self.command.option_value("--local-config-file")
            if config_file:
                path = os.path.normpath(os.path.join(self.cwd, config_file))
                mounts.append(Mount(path, path, read_only=True))
                readable.append(path)
        spec = dict(launch.spec)
        if spec.get("timeout") is None:
            spec["timeout"] = launch.run_time_limit + TIMEOUT_GRACE
        if spec.get("network") is None:  # unset: what the datastore needs, nothing more
            needed = channel.network
            if needed not in backend.capabilities.network_policies:
                # The step cannot run without its datastore and this backend cannot narrow egress to it (the
                # runtime said so once for the run).
                needed = NetworkPolicy.FULL
            spec["network"] = needed.value
        if spec["network"] == NetworkPolicy.DATASTORE.value:
            allow = []
            for endpoint in channel.endpoints():
                allow.append(f"{_host(endpoint['host'])}:{endpoint['port']}")
                allow += [
                    f"{host}:{endpoint['port']}" for host in endpoint.get("also", "").split(",") if host
                ]
            spec["network_allow"] = tuple(allow)
        spec["egress_allow"] = tuple(spec.get("egress_allow") or ())
        labels = {**launch.labels, **self.extra_labels}
        if any(mount.host_path == channel.staging for mount in mounts):
            self._staging_mount = channel.staging
        return SandboxSpec(**spec, mounts=tuple(mounts), readable=tuple(readable), labels=labels)

    def _plan(self, channel: Channel) -> Plan:
        launch = self.launch
        package, _ = channel.package()
        package_dir = str(package["dir"])
        env = {k: v.replace("{package_dir}", package_dir) for k, v in launch.package_env.items()}
        env.update(launch.step_env)
        # Defense in depth: whatever the step's settings say, denied names never enter (the channel's own
        # credentials, added below, are the only exception).
        for name in denied_names(env, denylist(launch.env_denylist)):
            self.say(f"Not passing {name} into the sandbox (it is on the deny list).")
            del env[name]
        env.update(channel.env())
        if self._environment_dir is not None:  # after the code package, before the interpreter's own packages
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (env.get("PYTHONPATH"), self._environment_dir) if p
            )
        workdir = f"{channel.base}/work"
        conda: dict = {}
        if launch.conda and self._micromamba_url:
            conda = plan_fields(launch.conda, workdir, self._conda_reads, self._micromamba_url)
        return Plan(
            python=launch.python,
            argv=self.command.inner_argv(os.path.join(package_dir, launch.flow_file)),
            package_dir=package_dir,
            package_url=package.get("url"),
            workdir=workdir,
            env=env,
            log_paths=channel.log_paths(),
            endpoints=channel.endpoints(),
            uploads=channel.uploads(),
            libraries=[*self._environment_libraries(channel.base), *channel.libraries()],
            **conda,
        )

    def _warm_group(self, backend: Backend, spec: SandboxSpec) -> str | None:
        """This task's group for sandboxes prepared ahead, in the sandbox host: a foreach split, whose spec
        is its siblings' (same inputs, mounts and readable files: the foreach parent's) but for its labels and
        its own staging directory; else None."""
        launch = self.launch
        if self.warm_pool is None or launch.foreach_size < 2 or len(launch.parents) != 1:
            return None
        shared = dataclasses.asdict(dataclasses.replace(spec, labels={}, mounts=self._shared_mounts(spec)))
        return self._group_prefix() + json.dumps([backend.name, shared], sort_keys=True, default=str)

    def _shared_mounts(self, spec: SandboxSpec) -> tuple[Mount, ...]:
        return tuple(mount for mount in spec.mounts if mount.host_path != self._staging_mount)

    def _group_prefix(self) -> str:
        """What every warm-pool group of this task's foreach starts with (a failure drops them all, even one
        before the task knew its spec)."""
        launch = self.launch
        return json.dumps([launch.flow, launch.run_id, launch.step, launch.parents]) + "|"

    def _prepare_ahead(
        self, backend: Backend, spec: SandboxSpec, channel: Channel, making: Making
    ) -> WarmSandbox:
        """A sandbox for a later task of this group: created, its bootstrap started with the code package and
        libraries ready, and waiting for that task's plan (armed).

        Its labels name the step, not a task; its lifetime adds the time it may wait for its task. Where the
        task's spec mounts its staging directory, the sandbox gets a new one of its own in the same place, which
        the task that takes it adopts."""
        labels = {k: v for k, v in spec.labels.items() if k not in ("metaflow.task", "metaflow.attempt")}
        timeout = spec.timeout + MAX_WAIT_SECONDS if spec.timeout else None
        mounts, staging = spec.mounts, None
        if self._staging_mount is not None:
            staging = task_dir(self.launch.cache_dir, "staging")
            os.makedirs(staging, mode=0o700)
            mounts = (*self._shared_mounts(spec), Mount(staging, staging, read_only=False))
        try:
            sandbox = call_with_retries(
                lambda: backend.create(
                    dataclasses.replace(spec, labels=labels, timeout=timeout, mounts=mounts)
                )
            )
        except BaseException:
            remove(staging)
            raise
        started: Started | None = None
        try:
            making.created(sandbox)  # from now on, giving up the group destroys it at once
            base = _channel_dir(sandbox)
            package, _ = channel.package(base)
            plan = Plan(
                python=self.launch.python,
                argv=[],
                package_dir=str(package["dir"]),
                package_url=package.get("url"),
                workdir=f"{base}/work",
                endpoints=channel.endpoints(),
                libraries=[*self._environment_libraries(base), *channel.libraries(base)],
                prepare_only=True,
                then_plan=f"{base}/{PLAN_FILE}",
                then_wait=MAX_WAIT_SECONDS,
            )
            bootstrap, plan_file = f"{base}/bootstrap.py", f"{base}/prepare.json"
            sandbox.upload(bootstrap_source(), bootstrap)
            sandbox.upload(plan.to_json().encode(), plan_file)
            started = sandbox.start(plan.command(bootstrap, plan_file))
            started.read_until(PREPARED, timeout=600)
            return WarmSandbox(sandbox, started, staging)
        except BaseException:
            WarmSandbox(sandbox, started, staging).destroy()
            raise

    def _run_in_sandbox(self, backend: Backend, spec: SandboxSpec, channel: Channel) -> int:
        started = time.monotonic()
        sandbox: Sandbox | None = None
        waiting: Started | None = None  # a sandbox prepared ahead: its bootstrap waits for this task's plan
        returned = False  # the step's command returned (rather than timing out or failing)
        try:
            launch, pool = self.launch, self.warm_pool
            self._group = self._warm_group(backend, spec)
            if self._group is not None and pool is not None:
                armed = pool.arrive(self._group, launch.foreach_size, launch.max_workers, launch.attempt == 0)
                if armed is not None:
                    sandbox, waiting = armed.sandbox, armed.started
                    if armed.staging is not None:  # mounted where the task's own would have been
                        remove(self.staging)
                        self.staging = channel.staging = armed.staging
            warm = sandbox is not None
            if sandbox is None:
                sandbox = call_with_retries(
                    lambda: backend.create(spec),
                    on_retry=lambda error, delay: self.say(f"{error} — retrying in {delay:.1f}s"),
                )
            with self._sandbox_lock:
                self._sandbox = sandbox
            self._mark("create")
            self._check_interrupted()
            ahead = " (prepared ahead)" if warm else ""
            self.say(
                f"Running in {backend.name} sandbox {sandbox.id}{ahead} (ready in "
                f"{time.monotonic() - started:.2f}s)."
            )
            channel.base = _channel_dir(sandbox)
            if self._group is not None and pool is not None:
                group = self._group
                pool.fill(group, lambda making: self._prepare_ahead(backend, spec, channel, making))
            plan = self._plan(channel)
            bootstrap, plan_file = f"{channel.base}/bootstrap.py", f"{channel.base}/{PLAN_FILE}"
            if not warm:
                sandbox.upload(bootstrap_source(), bootstrap)
            sandbox.upload(plan.to_json().encode(), plan_file)  # a waiting bootstrap runs it once it is whole
            self._mark("upload")

            def on_output(stream: str, line: bytes) -> None:
                self.output(stream, neutralize_controls(line))

            if waiting is not None:
                code = waiting.follow(timeout=spec.timeout, on_output=on_output)
            else:
                code = sandbox.run(
                    plan.command(bootstrap, plan_file), timeout=spec.timeout, on_output=on_output
                )
            self._mark("run")
            returned = True
            if code > 128 and sandbox.memory_exceeded():  # killed by a signal: by the memory limit?
                limit = f"memory={spec.memory_mb} MiB" if spec.memory_mb else "the backend's default memory"
                self.say(
                    f"The step exceeded {limit} and was killed by the sandbox's memory limit; give it more "
                    f"memory (memory=... in MiB, e.g. memory={2 * (spec.memory_mb or 2048)})."
                )
            return code
        except SandboxTimeoutError:
            self.say(f"The step ran past its {spec.timeout:.0f}s sandbox time limit and was killed.")
            return EXIT_TIMEOUT
        except SandboxError as error:
            self._check_interrupted()  # destroyed on purpose: not an infrastructure failure
            self.say(f"Sandbox infrastructure failure: {error}")
            return EXIT_INFRASTRUCTURE
        finally:
            if waiting is not None:
                waiting.close()
            if sandbox is not None:
                if returned and backend.capabilities.processes_end_with_command:
                    later(sandbox.destroy)  # nothing in it runs any more: its remains go after the result
                else:
                    sandbox.destroy()  # before the relay reads what the sandbox shared


def _tidy(channel: Channel | None, *directories: str) -> None:
    """Remove what a finished task left: its staging in the datastore and its directories here."""
    if channel is not None:
        channel.cleanup()
    for directory in directories:
        remove(directory)


#: The task's plan, next to the bootstrap (where an armed bootstrap waits for it).
PLAN_FILE = "plan.json"


def _channel_dir(sandbox: Sandbox) -> str:
    return f"{sandbox.workdir.rstrip('/')}/{SANDBOX_SUBDIR}"


def load_task(argv: list[str]) -> tuple[TaskLaunch, StepCommand]:
    """The task a trampoline argv describes; its TaskLaunch file is read once and removed."""
    from .step_command import parse_step_command

    command = parse_step_command(argv)
    try:
        return TaskLaunch.load(command.launch_path), command
    finally:
        try:
            os.unlink(command.launch_path)
        except OSError:
            pass


def launch_from_argv(argv: list[str]) -> int:
    """Entry point shared by the light launcher and `flow.py sandbox step`: the task runs in this process."""
    launch, command = load_task(argv)
    return TaskExecutor(launch, command).run()


__all__ = ["EXIT_INFRASTRUCTURE", "TaskExecutor", "launch_from_argv", "load_task"]


def _host(host: str) -> str:
    """`host` as an allow-list entry's host part (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
