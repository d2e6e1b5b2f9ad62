"""`--environment=uv` for sandboxed steps: the project's locked dependencies, installed once by the launcher.

Metaflow's own uv bootstrap downloads uv and syncs from the package index inside every task. Here the
trusted launcher runs uv once per environment (key: the lock, pyproject.toml, the sandbox's Python version
and platform) into a `--target` directory under the sandbox cache; the sandbox never reaches an index:
- a backend that can mount gets that directory read-only and on its PYTHONPATH (zero install per task);
- a remote backend gets it as one archive stored content-addressed next to the datastore and fetched through
  a presigned URL, extracted once per sandbox.
The project itself (`[project]` code) is not installed: the code package carries it, as Metaflow's does.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from metaflow_sandbox_core import ConfigError

ENVIRONMENT_TYPE = "uv"
READY_MARKER = ".metaflow-sandbox-ready"
#: Never installed from the lock: the code package carries metaflow and this extension.
SKIPPED_PACKAGES = ("metaflow", "metaflow-sandbox")
#: Metaflow's target platforms a sandbox can be, as uv names them.
PLATFORMS = {"linux-64": "x86_64-manylinux_2_28", "linux-aarch64": "aarch64-manylinux_2_28"}
_MACHINES = {"x86_64": "linux-64", "amd64": "linux-64", "aarch64": "linux-aarch64", "arm64": "linux-aarch64"}


@dataclass(frozen=True)
class UvTarget:
    """The uv project and what the sandbox runs it with (a TaskLaunch carries it as a dict)."""

    project: str  # the directory holding pyproject.toml and uv.lock
    python_version: str  # "3.11"
    platform: str  # a key of PLATFORMS

    @property
    def key(self) -> str:
        digest = hashlib.sha256()
        for name in ("uv.lock", "pyproject.toml"):
            with open(os.path.join(self.project, name), "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
        digest.update(f"{self.python_version}|{self.platform}".encode())
        return digest.hexdigest()[:24]


def find_project(start: str) -> str:
    """The nearest directory at or above `start` with a pyproject.toml (where Metaflow looks too)."""
    current = os.path.abspath(start)
    while True:
        if os.path.isfile(os.path.join(current, "pyproject.toml")):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            raise ConfigError(
                "--environment=uv needs a pyproject.toml in %s or a parent directory; create one with "
                "`uv init --bare` and add the step's dependencies with `uv add`." % start
            )
        current = parent


def uv_binary() -> str:
    """The launcher's uv: beside its Python (a venv with uv installed) or on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "uv")
    found = beside if os.access(beside, os.X_OK) else shutil.which("uv")
    if not found:
        raise ConfigError("--environment=uv needs uv on the launcher; install it (`pip install uv`).")
    return found


def sandbox_platform(target_platform: str, runs_on_this_machine: bool) -> str:
    """The platform the step's packages are for: this machine's when the sandbox shares it, else the
    decorator's `target_platform`."""
    if runs_on_this_machine:
        machine = platform.machine().lower()
        if sys.platform != "linux" or machine not in _MACHINES:
            raise ConfigError(
                "This sandbox runs on this %s/%s machine, which cannot run Linux packages; use a remote "
                "backend (@daytona, @e2b)." % (sys.platform, machine)
            )
        return _MACHINES[machine]
    if target_platform not in PLATFORMS:
        raise ConfigError(
            "target_platform=%r cannot be a sandbox's; use one of %s."
            % (target_platform, ", ".join(sorted(PLATFORMS)))
        )
    return target_platform


def check_project(target: UvTarget, uv: str | None = None) -> None:
    """Fail with the fix when uv.lock is missing, stale, or excludes the sandbox's Python."""
    lock = os.path.join(target.project, "uv.lock")
    if not os.path.isfile(lock):
        raise ConfigError(
            "--environment=uv needs %s; run `uv lock` in %s and commit it." % (lock, target.project)
        )
    _check_python(target)
    uv = uv or uv_binary()
    check = [uv, "lock", "--check", "--quiet", "--project", target.project]
    try:
        # From uv's cache first (no index needed when nothing changed), else against the index.
        done = subprocess.run([*check, "--offline"], capture_output=True, text=True)
        if done.returncode != 0:
            done = subprocess.run(check, capture_output=True, text=True)
    except OSError as error:
        raise ConfigError("--environment=uv cannot run uv (%s); install it (`pip install uv`)." % error)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        if "needs to be updated" in said:
            raise ConfigError(
                "%s is out of date with pyproject.toml; run `uv lock` in %s." % (lock, target.project)
            )
        raise ConfigError("`uv lock --check` failed in %s: %s" % (target.project, _last_line(said)))


def _check_python(target: UvTarget) -> None:
    from metaflow._vendor.packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python < 3.11
        return
    with open(os.path.join(target.project, "pyproject.toml"), "rb") as f:
        requires = (tomllib.load(f).get("project") or {}).get("requires-python")
    if not requires:
        return
    try:
        allowed = SpecifierSet(requires)
    except InvalidSpecifier:
        return  # uv reports it
    if not allowed.contains(target.python_version + ".0", prereleases=True) and not allowed.contains(
        target.python_version + ".99", prereleases=True
    ):
        raise ConfigError(
            "The project needs Python %s but the sandbox runs Python %s; widen requires-python in "
            "pyproject.toml (then `uv lock`) or give the step a matching interpreter (options={'python': ...})."
            % (requires, target.python_version)
        )


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def environment_dir(target: UvTarget, cache_dir: str, say: Callable[[str], None]) -> str:
    """The installed environment (a `--target` directory), built once per key; concurrent tasks wait."""
    dest = os.path.join(cache_dir, "environments", f"uv-{target.key}")
    if os.path.exists(os.path.join(dest, READY_MARKER)):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(dest, READY_MARKER)):
            return dest
        started = time.monotonic()
        partial = dest + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        count = _install(target, partial)
        os.replace(partial, dest)
        open(os.path.join(dest, READY_MARKER), "w").close()
        say(
            "Hydrated the uv environment %s (%d packages) in %.1fs, once: later tasks reuse it."
            % (target.key, count, time.monotonic() - started)
        )
    return dest


def _install(target: UvTarget, dest: str) -> int:
    uv = uv_binary()
    skip = [arg for name in SKIPPED_PACKAGES for arg in ("--no-emit-package", name)]
    export = _run(
        [uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-header", "--quiet", *skip],
        target.project,
    )
    requirements = dest + ".requirements.txt"
    os.makedirs(dest)
    with open(requirements, "w") as f:
        f.write(export)
    try:
        _run(
            [
                uv, "pip", "install", "--quiet", "--no-deps", "--compile-bytecode",
                "--target", dest,
                "--python-platform", PLATFORMS[target.platform],
                "--python-version", target.python_version,
                "--requirements", requirements,
            ],
            target.project,
        )  # fmt: skip
    finally:
        os.unlink(requirements)
    return sum(1 for line in export.splitlines() if line and not line[0].isspace() and line[0] != "#")


def _run(argv: list[str], cwd: str) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(
            "uv could not install the project's locked dependencies (%s): %s"
            % (" ".join(argv[1:3]), _last_line(done.stderr or done.stdout))
        )
    return done.stdout


def environment_archive(directory: str) -> str:
    """The environment as one .tgz beside it (built once), for sandboxes that cannot mount it."""
    archive = directory + ".tgz"
    if os.path.exists(archive):
        return archive
    with open(directory + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(archive):
            partial = archive + ".partial"
            with tarfile.open(partial, "w:gz", compresslevel=3) as tar:
                for entry in sorted(os.listdir(directory)):
                    if entry != READY_MARKER:
                        tar.add(os.path.join(directory, entry), arcname=entry)
            os.replace(partial, archive)
    return archive
