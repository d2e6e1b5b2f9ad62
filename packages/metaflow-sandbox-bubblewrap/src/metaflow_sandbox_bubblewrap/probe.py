"""Is bubblewrap usable here? Finding `bwrap` and a cached trial run that explains failures."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

from metaflow_sandbox_core import ConfigError, NetworkPolicy, UnavailableError

from .command import BASE_ENV, SETPRIV, namespace_args, privilege_drop, system_args
from .host import detect_host_system
from .layout import SandboxUser

INSTALL_HINT = (
    "apt-get install -y bubblewrap (Debian/Ubuntu; `dnf install -y bubblewrap` on Fedora/RHEL, "
    "`apk add bubblewrap` on Alpine, `pacman -S bubblewrap` on Arch)"
)
USERNS_HINT = (
    "bubblewrap needs unprivileged user namespaces. Likely fix: allow them "
    "(`sysctl -w user.max_user_namespaces=15000`; Debian <= 10: `sysctl -w kernel.unprivileged_userns_clone=1`; "
    "Ubuntu >= 23.10: `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor profile "
    "granting `userns` to /usr/bin/bwrap); inside Docker run the container with "
    "`--security-opt seccomp=unconfined --security-opt apparmor=unconfined` (or `--privileged`)."
)
PROBE_TIMEOUT = 15.0


def locate_bwrap(configured: str | None = None) -> str:
    """The `bwrap` executable: `configured` if given, else the one on PATH. `ConfigError` naming the fix."""
    if not sys.platform.startswith("linux"):
        raise ConfigError(
            f"The bubblewrap backend needs Linux (this is {sys.platform}); choose another backend, e.g. boxlite."
        )
    if configured is not None:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise ConfigError(
            f"bubblewrap executable {configured!r} does not exist or is not executable. Install it: {INSTALL_HINT}"
        )
    found = shutil.which("bwrap")
    if found is None:
        raise ConfigError(
            f"bubblewrap (`bwrap`) is not installed (not found on PATH). Install it: {INSTALL_HINT}"
        )
    return found


@functools.cache
def probe_failure(bwrap: str) -> str | None:
    """Why a minimal sandbox (same namespaces as a real one) cannot start, or None. Cached per executable."""
    user = SandboxUser.for_sandbox("bwrap-probe0000000000")
    if user.drop_from_root and not os.access(SETPRIV, os.X_OK):
        return f"{SETPRIV} is missing (a root launcher drops sandboxes to an unprivileged user with it; it is in util-linux)"
    argv = [
        bwrap,
        *namespace_args(NetworkPolicy.NONE, user),
        *system_args(detect_host_system()),
        "--",
        *privilege_drop(user),
        "true",
    ]
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=dict(BASE_ENV),
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"a trial sandbox did not finish within {PROBE_TIMEOUT:.0f} s"
    except OSError as error:
        return f"{bwrap} could not be started: {error}"
    if result.returncode == 0:
        return None
    message = result.stderr.decode(errors="replace").strip() or f"exit code {result.returncode}"
    return f"a trial sandbox failed: {message}"


def check_bubblewrap(configured: str | None = None) -> str:
    """The usable `bwrap` path; `ConfigError` if missing, `UnavailableError` (not retryable) if it cannot run."""
    bwrap = locate_bwrap(configured)
    failure = probe_failure(bwrap)
    if failure is not None:
        raise UnavailableError(
            f"bubblewrap cannot create sandboxes here: {failure}. {USERNS_HINT}", retryable=False
        )
    return bwrap
