"""What to create: `SandboxSpec` and its parts."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .egress import destinations
from .errors import ConfigError


def env_problem(name: object, value: object) -> str | None:
    """Why `name=value` cannot be an environment variable (a phrase naming the fix), or None."""
    if not isinstance(name, str) or not isinstance(value, str):
        return "environment names and values must be strings"
    if not name:
        return "an environment variable needs a name; remove the empty key"
    if "=" in name:
        return "a variable name cannot contain '=' (it separates name from value); use the part before '=' as the key"
    if "\0" in name or "\0" in value:
        return "no environment variable can hold a NUL byte; remove it"
    return None


class NetworkPolicy(str, enum.Enum):
    """How much network a sandbox gets."""

    NONE = "none"  # no network at all
    DATASTORE = (
        "datastore"  # only the datastore's endpoints and the step's allow-list (`SandboxSpec.egress_allow`)
    )
    FULL = "full"  # unrestricted egress

    @classmethod
    def parse(cls, value: str | NetworkPolicy) -> NetworkPolicy:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(repr(p.value) for p in cls)
            raise ConfigError(f"network={value!r} is not a network policy; use one of {choices}.") from None


@dataclass(frozen=True)
class Mount:
    """A host path made visible inside the sandbox (only for backends that can mount)."""

    host_path: str
    sandbox_path: str
    read_only: bool = True


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a backend needs to create one sandbox.

    Sizes are in MiB, times in seconds. `None` means "the backend's default". `timeout` is the sandbox's
    lifetime: a command still running that long after creation is killed (`SandboxTimeoutError`).
    `network_allow` lists the datastore's host:port endpoints (made by the launcher) and `egress_allow` the
    step's own allow-list entries (see `egress.py`); both only with `NetworkPolicy.DATASTORE`, which allows
    exactly their union.
    `readable` lists host files inside read-only mounts that the sandboxed code must be able to read: a
    backend that runs sandboxes as another host user than the launcher's makes them readable to it.
    """

    image: str | None = None
    cpu: float | None = None
    memory_mb: int | None = None
    gpu: int | None = None
    disk_mb: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None
    network: NetworkPolicy = NetworkPolicy.NONE
    network_allow: tuple[str, ...] = ()
    egress_allow: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    readable: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "network", NetworkPolicy.parse(self.network))
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the fix when a field is out of range."""
        for name in ("cpu", "memory_mb", "gpu", "disk_mb", "timeout"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name}={value!r} must be a number.")
            if value < 0 or (value == 0 and name != "gpu"):
                raise ConfigError(f"{name}={value!r} must be greater than 0.")
        for key, value in self.env.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigError(f"env[{key!r}]={value!r}: environment keys and values must be strings.")
            problem = env_problem(key, value)
            if problem:
                raise ConfigError(f"env[{key!r}]: {problem}.")
        for key, value in self.labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigError(f"labels[{key!r}]={value!r}: labels must map strings to strings.")
        if self.egress_allow:
            if self.network is not NetworkPolicy.DATASTORE:
                raise ConfigError(
                    f"egress_allow={list(self.egress_allow)!r} needs network='datastore' (an allow-list filters egress)."
                )
            destinations(self.egress_allow)
        for mount in self.mounts:
            if not mount.sandbox_path.startswith("/"):
                raise ConfigError(f"mount target {mount.sandbox_path!r} must be an absolute path.")
