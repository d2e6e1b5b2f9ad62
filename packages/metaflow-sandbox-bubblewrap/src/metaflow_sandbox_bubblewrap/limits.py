"""A sandbox's resource limits: what is enforced and how, and the pre-exec hook that applies them.

- `cpu`: CPU affinity to ceil(cpu) CPUs (so `nproc` shows it), plus a cgroup CPU quota of `cpu` CPUs
  where a cgroup can be created.
- `memory_mb`: a cgroup memory limit for the whole sandbox where a cgroup can be created, else
  RLIMIT_AS per process (weaker: counts address space, not memory, and each process separately).
- `disk_mb`: RLIMIT_FSIZE (no single file larger than that); total disk use is not limited.
- `gpu`: no GPU passthrough; asking for one is a `ConfigError`.
- processes (always): RLIMIT_NPROC of `MAX_PROCESSES` (1024, or 32 per CPU) for the sandbox's own host uid when the launcher is
  root (each sandbox has a uid of its own, so it counts exactly the sandbox's processes and threads); not
  limited under an unprivileged launcher, whose uid the sandbox shares (TODO: a pids cgroup there).
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from metaflow_sandbox_core import ConfigError, SandboxSpec

from .cgroups import SandboxCgroup, create_sandbox_cgroup

MIB = 1024 * 1024
#: Processes and threads a sandbox may have at once (a fork bomb stops here, the host stays usable): 1024, or
#: 32 per CPU on larger machines (thread pools of numeric libraries size themselves by CPUs).
MAX_PROCESSES = max(1024, 32 * (os.cpu_count() or 1))


@dataclass
class SandboxLimits:
    """The limits of one sandbox, applied to each of its bwrap processes before exec."""

    cpus: frozenset[int] | None = None
    cgroup: SandboxCgroup = field(default_factory=SandboxCgroup)
    rlimits: tuple[tuple[int, int], ...] = ()
    #: resource ("cpu" | "memory" | "disk") → how it is enforced, or why it is not.
    enforcement: dict[str, str] = field(default_factory=dict)

    def prepare_child(self) -> None:
        """Runs in the forked child just before exec: plain system calls only."""
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        self.cgroup.join(os.getpid())
        for limit, value in self.rlimits:
            resource.setrlimit(limit, (value, value))

    @property
    def preexec_fn(self) -> Callable[[], None] | None:
        """`prepare_child` when there is anything to apply (for `subprocess.Popen(preexec_fn=...)`)."""
        return self.prepare_child if self.cpus or self.cgroup.dirs or self.rlimits else None

    def memory_exceeded(self) -> bool:
        """True when the sandbox's memory cgroup killed a process (False under RLIMIT_AS: there an
        allocation fails inside the process instead, e.g. as a `MemoryError`)."""
        return self.cgroup.memory_exceeded()

    def release(self) -> None:
        """Remove the sandbox's cgroups (killing anything left in them)."""
        self.cgroup.remove()


def reject_unsupported(spec: SandboxSpec) -> None:
    """`ConfigError` for resources this backend cannot provide."""
    if spec.gpu:
        raise ConfigError(
            f"gpu={spec.gpu}: the bubblewrap backend has no GPU passthrough. Drop the GPU request or use a "
            "backend that offers GPUs."
        )


def pick_cpus(cpu: float, available: Iterable[int], seed: int) -> frozenset[int]:
    """ceil(cpu) of the `available` CPUs (all of them if fewer), starting at an offset derived from `seed`
    so that concurrent sandboxes spread over the machine instead of piling onto CPU 0."""
    ordered = sorted(available)
    count = min(len(ordered), math.ceil(cpu))
    start = seed % len(ordered)
    return frozenset(ordered[(start + i) % len(ordered)] for i in range(count))


def apply_limits(spec: SandboxSpec, *, cgroup_name: str, seed: int, own_uid: bool = False) -> SandboxLimits:
    """Create what the spec's limits need (a cgroup, if any) and describe how each is enforced. `own_uid`:
    the sandbox runs as a host uid of its own (a root launcher), so RLIMIT_NPROC bounds its processes.

    The spec must have passed `reject_unsupported`.
    """
    wanted: dict[str, float] = {}
    if spec.memory_mb:
        wanted["memory"] = int(spec.memory_mb * MIB)
    if spec.cpu:
        wanted["cpu"] = spec.cpu
    limits = SandboxLimits(cgroup=create_sandbox_cgroup(cgroup_name, wanted) if wanted else SandboxCgroup())
    rlimits: list[tuple[int, int]] = []
    if spec.cpu:
        limits.cpus = pick_cpus(spec.cpu, os.sched_getaffinity(0), seed)
        quota = _cgroup_note(limits.cgroup, "cpu", f"a CPU quota of {spec.cpu:g} CPUs")
        limits.enforcement["cpu"] = f"affinity to CPUs {sorted(limits.cpus)}; {quota}"
    if spec.memory_mb:
        if "memory" in limits.cgroup.limits:
            limits.enforcement["memory"] = _cgroup_note(
                limits.cgroup, "memory", f"{spec.memory_mb} MiB for the whole sandbox"
            )
        else:
            rlimits.append((resource.RLIMIT_AS, int(spec.memory_mb * MIB)))
            limits.enforcement["memory"] = (
                f"RLIMIT_AS of {spec.memory_mb} MiB per process (weaker than a cgroup: address space, each process "
                f"separately) because {limits.cgroup.failures['memory']}"
            )
    if spec.disk_mb:
        rlimits.append((resource.RLIMIT_FSIZE, int(spec.disk_mb * MIB)))
        limits.enforcement["disk"] = (
            f"RLIMIT_FSIZE: no single file over {spec.disk_mb} MiB; total disk use is not limited"
        )
    if own_uid:
        rlimits.append((resource.RLIMIT_NPROC, MAX_PROCESSES))
        limits.enforcement["processes"] = f"RLIMIT_NPROC: at most {MAX_PROCESSES} processes and threads"
    else:
        limits.enforcement["processes"] = "not limited: the sandbox shares the unprivileged launcher's uid"
    limits.rlimits = tuple(rlimits)
    return limits


def _cgroup_note(cgroup: SandboxCgroup, controller: str, what: str) -> str:
    if controller in cgroup.limits:
        return f"cgroup {cgroup.limits[controller]} enforces {what}"
    return f"{what} is not enforced because {cgroup.failures[controller]}"
