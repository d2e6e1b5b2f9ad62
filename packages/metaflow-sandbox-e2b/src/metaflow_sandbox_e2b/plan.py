"""What to ask E2B for, from a `SandboxSpec` (pure: no SDK, so bad input is refused before anything exists).

- `image` is the E2B template (name or ID); `options={"template": ...}` says the same. Default: E2B's `base`.
- `cpu` / `memory_mb` / `disk_mb` / `gpu` are refused: E2B sizes a sandbox by its template (built with
  `e2b template build --cpu-count --memory-mb`), and building one per step is too slow to do on the fly.
- Lifetime: E2B kills a sandbox at its `timeout` (300 s unless told). The sandbox is created with a lease
  (`options={"lease": s}`, default 300 s) that the backend renews while the sandbox is in use, up to the step's
  own limit (`SandboxSpec.timeout` + 30 s) and never past E2B's maximum lifetime (`options={"max_lifetime": s}`,
  default 86,400 s, Pro; Hobby allows 3,600). A launcher that dies stops renewing, so its sandbox ends within
  one lease.
- `network`: none → `allow_internet_access=False`; full → True; datastore → deny all but the datastore hosts
  and the step's allow-list (`network={"deny_out": ["0.0.0.0/0"], "allow_out": [...]}`): E2B filters by host,
  `*.domain` or CIDR, not by port (`host:port` entries are refused; the datastore's endpoint is allowed by host).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metaflow_sandbox_core import ConfigError, EgressKind, NetworkPolicy, SandboxSpec, parse_destination

#: `spec.options` keys this backend reads.
OPTION_KEYS = ("template", "lease", "max_lifetime")
DEFAULT_TEMPLATE = "base"
DEFAULT_LEASE = 300.0
DEFAULT_MAX_LIFETIME = 86_400.0
#: How long past the step's own limit the sandbox may live (the in-task @timeout fires first).
LIFETIME_GRACE = 30.0
ALL_TRAFFIC = "0.0.0.0/0"


@dataclass(frozen=True)
class CreatePlan:
    template: str = DEFAULT_TEMPLATE
    lease: float = DEFAULT_LEASE
    #: Seconds from creation after which the lease is no longer renewed.
    lifetime: float = DEFAULT_MAX_LIFETIME
    max_lifetime: float = DEFAULT_MAX_LIFETIME
    #: True/False for network full/none; None (unset) when `network` filters egress.
    allow_internet_access: bool | None = False
    network: dict[str, list[str]] | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def first_timeout(self) -> int:
        """The `timeout` of the create request: one lease, or less when the whole lifetime is shorter."""
        return max(1, int(min(self.lease, self.lifetime)))


def plan_create(spec: SandboxSpec) -> CreatePlan:
    """The create request for `spec`, or `ConfigError` naming the fix for what E2B cannot honour."""
    if spec.mounts:
        raise ConfigError(
            "mounts: an E2B sandbox runs in E2B's cloud and cannot see this machine's files; use an S3 "
            "datastore (--datastore=s3) or a local backend (bubblewrap)."
        )
    options = dict(spec.options)
    template = options.get("template")
    if template is not None and (not isinstance(template, str) or not template):
        raise ConfigError(f"options['template']={template!r} must be an E2B template name or ID.")
    if spec.image is not None and template is not None and spec.image != template:
        raise ConfigError(
            f"image={spec.image!r} and options={{'template': {template!r}}}: for E2B both name the template; "
            "give one of them."
        )
    sizes = {"cpu": spec.cpu, "memory_mb": spec.memory_mb, "disk_mb": spec.disk_mb, "gpu": spec.gpu or None}
    asked = ", ".join(f"{name}={value}" for name, value in sizes.items() if value is not None)
    if asked:
        raise ConfigError(
            f"{asked}: an E2B sandbox gets its CPU, memory and disk from its template; build a template of "
            "that size (e2b template build --cpu-count N --memory-mb M) and use options={'template': 'name'} "
            "instead (no GPUs on E2B)."
        )
    lease = _seconds(options, "lease", DEFAULT_LEASE)
    max_lifetime = _seconds(options, "max_lifetime", DEFAULT_MAX_LIFETIME)
    lifetime = max_lifetime if spec.timeout is None else min(spec.timeout + LIFETIME_GRACE, max_lifetime)
    network = None
    if spec.network is NetworkPolicy.DATASTORE:
        hosts = sorted(
            {_host(entry) for entry in spec.network_allow} | {_allow_out(e) for e in spec.egress_allow}
        )
        network = {"deny_out": [ALL_TRAFFIC], "allow_out": hosts}
    return CreatePlan(
        template=spec.image or template or DEFAULT_TEMPLATE,
        lease=lease,
        lifetime=lifetime,
        max_lifetime=max_lifetime,
        allow_internet_access=None if network else spec.network is NetworkPolicy.FULL,
        network=network,
        metadata=dict(spec.labels),
    )


def _seconds(options: dict[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
        raise ConfigError(f"options[{key!r}]={value!r} must be a number of seconds >= 1.")
    return float(value)


def _allow_out(entry: str) -> str:
    """A step's allow-list entry as E2B writes it (lower case; `*.` kept for a wildcard)."""
    destination = parse_destination(entry)
    return ("*." if destination.kind is EgressKind.WILDCARD else "") + destination.host


def _host(entry: str) -> str:
    """`host:port`, `[v6]:port` or a bare host → the host (E2B filters egress by host or address)."""
    if entry.startswith("["):
        return entry[1:].split("]", 1)[0]
    return entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry
