"""The `Backend` / `Sandbox` contract every backend package implements."""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError
from .spec import NetworkPolicy, SandboxSpec

_S = TypeVar("_S", bound="Sandbox")

#: Receives each output line as it arrives: ("stdout" | "stderr", the line's bytes with its newline).
OutputCallback = Callable[[str, bytes], None]


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
    #: Provider's published limit on creations per minute, if any.
    max_creates_per_minute: int | None = None


@dataclass(frozen=True)
class SandboxInfo:
    """A live sandbox as found by `Backend.list` (for leak sweeps)."""

    id: str
    labels: Mapping[str, str]
    created_at: float | None = None


class Sandbox(abc.ABC):
    """One live sandbox. `destroy` is idempotent; using it as a context manager always destroys.

    Paths: `upload`/`download` must support absolute paths under `workdir`, where the extension puts the
    bootstrap and its plan. `download` of a missing file raises `FileNotFoundError`.
    After `destroy`, `run` raises `SandboxError`; a command killed by `destroy` returns 137.
    """

    id: str

    @property
    def workdir(self) -> str:
        """A private, writable directory inside the sandbox (absolute). The extension keeps its bootstrap,
        plan, package and logs below it. Backends whose sandboxes have their own home say so here."""
        return "/tmp"

    @abc.abstractmethod
    def upload(self, data: bytes, sandbox_path: str) -> None:
        """Write `data` to `sandbox_path` (parent directories are created)."""

    @abc.abstractmethod
    def download(self, sandbox_path: str) -> bytes:
        """Read the whole file at `sandbox_path`."""

    @abc.abstractmethod
    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        on_output: OutputCallback | None = None,
    ) -> int:
        """Run `argv`, streaming each line to `on_output` as it arrives; return the exit code.

        Output is never accumulated: memory stays flat whatever the command prints. A command
        still running after `timeout` seconds is killed and `SandboxTimeoutError` is raised.
        A command killed by a signal returns 128 + the signal number.
        """

    @abc.abstractmethod
    def destroy(self) -> None:
        """Kill everything running in the sandbox and release it. Safe to call twice."""

    def memory_exceeded(self) -> bool:
        """True when the sandbox's memory limit killed a process in it (since it was created).

        Optional: callers ask after a command ended by a signal, before `destroy`, to tell the user why.
        Backends that cannot tell return False (the default).
        """
        return False

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class Backend(abc.ABC):
    """A kind of sandbox. Instances are cheap; `check` says whether it can work here."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
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

    @abc.abstractmethod
    def create(self, spec: SandboxSpec) -> Sandbox:
        """Create and start a sandbox; it is ready to `run` when this returns."""

    @abc.abstractmethod
    def list(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        """Live sandboxes carrying all of `labels`."""

    @abc.abstractmethod
    def destroy(self, sandbox_id: str) -> None:
        """Destroy a sandbox by id (for sweepers); a missing one is not an error."""
