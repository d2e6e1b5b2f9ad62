"""Variables that never enter a sandbox, whoever asks: provider keys and long-lived credentials."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Mapping

from metaflow_sandbox_core import ConfigError

#: Sandbox-provider keys (they let code create and delete the user's sandboxes), the launcher's long-lived
#: cloud keys, and metadata-service credentials. Extend with METAFLOW_SANDBOX_ENV_DENYLIST (comma-separated
#: names or shell patterns).
DEFAULT_DENYLIST = (
    "DAYTONA_API_KEY",
    "E2B_API_KEY",
    "E2B_ACCESS_TOKEN",
    "BOXLITE_API_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "METAFLOW_SERVICE_AUTH_KEY",
    "METAFLOW_SERVICE_HEADERS",
)
DENYLIST_ENV = "METAFLOW_SANDBOX_ENV_DENYLIST"


def denylist(extra: str | None = None) -> tuple[str, ...]:
    configured = extra if extra is not None else os.environ.get(DENYLIST_ENV, "")
    return DEFAULT_DENYLIST + tuple(p.strip() for p in configured.split(",") if p.strip())


def denied_names(names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    patterns = tuple(patterns)
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def refuse_denied(env: Mapping[str, str], where: str, patterns: Iterable[str]) -> None:
    """`ConfigError` naming each denied variable a flow tries to pass into a sandbox."""
    names = denied_names(env, patterns)
    if names:
        raise ConfigError(
            f"{where} passes {', '.join(names)} into the sandbox; these never enter a sandbox (provider keys "
            f"and long-lived credentials; see {DENYLIST_ENV}). Remove them from the step's env."
        )
