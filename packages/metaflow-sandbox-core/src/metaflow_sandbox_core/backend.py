"""The `Backend` contract every backend package implements (the `Sandbox` it creates is in `sandbox.py`)."""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .egress import EgressKind, check_egress_kinds
from .errors import ConfigError
from .limiter import STATE_DIR_SETTING, CreateLimiter, create_limits, setting_name
from .sandbox import Sandbox
from .spec import NetworkPolicy, SandboxSpec
from .state_dir import default_state_dir


class Isolation(enum.IntEnum):
    """How strongly a backend isolates code; higher is stronger."""

    NAMESPACES = 10  # Linux namespaces on the host kernel (bubblewrap)
    CONTAINER = 20  # a container on someone else's host (cloud sandboxes)
    MICROVM = 30  # a guest kernel of its own


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the extension adapts to these instead of to backend names."""

    isolation: Isolation
    #: Runs on this machine with no account (eligible for automatic selection).
    local: bool
    #: Can make a host path visible inside (so a local datastore can be used).
    can_mount: bool
    network_policies: frozenset[NetworkPolicy] = field(
        default_factory=lambda: frozenset({NetworkPolicy.NONE, NetworkPolicy.FULL})
    )
    #: The forms of `SandboxSpec.egress_allow` entry this backend enforces (none: it cannot filter egress).
    egress_kinds: frozenset[EgressKind] = frozenset()
    #: The provider's limit on creations per minute, if any: `Backend.create` keeps every process of the
    #: user on this machine under it together (`METAFLOW_SANDBOX_<NAME>_CREATES_PER_MINUTE` overrides).
    max_creates_per_minute: float | None = None
    #: How many creations may be in progress at once on this machine, if limited
    #: (`METAFLOW_SANDBOX_<NAME>_CONCURRENT_CREATES` overrides).
    max_concurrent_creates: int | None = None
    #: Every process a command starts ends when the command returns (e.g. its own PID namespace), so nothing
    #: can still write what the sandbox shares once `run` has returned: the launcher may finish destroying the
    #: sandbox after it has taken the results (the conformance suite checks the claim).
    processes_end_with_command: bool = False


@dataclass(frozen=True)
class SandboxInfo:
    """A live sandbox as found by `Backend.list` (for leak sweeps)."""

    id: str
    labels: Mapping[str, str]
    created_at: float | None = None


def labels_match(labels: Mapping[str, str], wanted: Mapping[str, str] | None) -> bool:
    """Whether `labels` carry every key of `wanted` with the same value (`Backend.list`'s filter)."""
    return all(labels.get(key) == value for key, value in (wanted or {}).items())


class Backend(abc.ABC):
    """A kind of sandbox. Instances are cheap; `check` says whether it can work here.

    `create` is implemented here: it validates the spec, waits for the create limiter (the declared
    limits, shared by the machine's processes), then calls the backend's `_create`.
    """

    name: ClassVar[str]
    #: What this backend can do: a class attribute, which an instance may replace with its own (a backend
    #: whose local and remote runtimes differ in `local`/`can_mount`). Always read it from the instance.
    capabilities: Capabilities
    #: Where this backend keeps per-machine state such as the create limiter's files; None means
    #: `default_state_dir(name, "METAFLOW_SANDBOX_<NAME>_STATE_DIR")`.
    state_dir: str | None = None
    _create_limiter: CreateLimiter | None = None
    #: The `SandboxSpec.options` keys this backend reads; callers refuse any other key (`check_options`).
    option_keys: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def check_options(cls, options: Mapping[str, Any], also: Iterable[str] = ()) -> None:
        """`ConfigError` naming the known keys when `options` holds a key neither this backend reads nor the
        caller does (`also`: keys the caller reads from the same mapping itself)."""
        known = cls.option_keys | frozenset(also)
        unknown = sorted(str(key) for key in options if key not in known)
        if unknown:
            accepted = ", ".join(repr(key) for key in sorted(known)) or "none"
            raise ConfigError(
                f"Unknown {cls.name} option(s) {', '.join(repr(key) for key in unknown)} in options={{...}}; "
                f"known: {accepted}. Remove or correct them."
            )

    def check(self) -> None:  # noqa: B027 - optional hook, most backends have nothing to check
        """Raise `ConfigError`/`UnavailableError` naming the fix if this backend cannot work here."""

    def preload(self) -> None:  # noqa: B027 - optional hook
        """Import heavy client libraries ahead of `create` (launchers call it on a background thread while
        they prepare the task); must not fail: `create` reports what is missing."""

    def validate(self, spec: SandboxSpec) -> None:  # noqa: B027 - optional hook
        """Raise `ConfigError` naming the fix for a spec this backend cannot honour.

        Called before a run starts (so bad input stops it before any sandbox exists) and again by `create`.
        """

    def check_network(self, spec: SandboxSpec) -> None:
        """`ConfigError` naming what this backend can do when it cannot enforce `spec`'s network policy or an
        allow-list entry's form (never silently wider)."""
        policies = self.capabilities.network_policies
        if spec.network not in policies:
            raise ConfigError(
                f"network={spec.network.value!r} is not supported by the {self.name!r} backend (it supports "
                f"{', '.join(sorted(p.value for p in policies))})."
            )
        check_egress_kinds(self.name, self.capabilities.egress_kinds, spec.egress_allow)

    def create(self, spec: SandboxSpec) -> Sandbox:
        """Create and start a sandbox; it is ready to `run` when this returns."""
        self.check_network(spec)
        self.validate(spec)
        with self.create_limiter().hold():
            return self._create(spec)

    def create_limiter(self) -> CreateLimiter:
        """The limiter `create` waits for (see `limiter.py`); `ConfigError` for a malformed setting."""
        per_minute, concurrent = create_limits(self.name, self.capabilities)
        state_dir = self.state_dir or default_state_dir(self.name, setting_name(self.name, STATE_DIR_SETTING))
        limiter = self._create_limiter
        if limiter is None or limiter.settings != (per_minute, concurrent, state_dir):
            limiter = self._create_limiter = CreateLimiter(
                state_dir, per_minute=per_minute, concurrent=concurrent
            )
        return limiter

    @abc.abstractmethod
    def _create(self, spec: SandboxSpec) -> Sandbox:
        """Create and start a sandbox for a validated `spec` (`create` has waited for the limiter)."""

    @abc.abstractmethod
    def list(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        """Live sandboxes carrying all of `labels` (see `labels_match`)."""

    @abc.abstractmethod
    def destroy(self, sandbox_id: str) -> None:
        """Destroy a sandbox by id (for sweepers); a missing one is not an error."""
