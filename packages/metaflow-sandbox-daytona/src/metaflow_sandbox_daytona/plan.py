"""What to ask Daytona for, from a `SandboxSpec` (pure: no SDK, so it is checked before anything exists).

Sizes: Daytona takes whole CPUs and GiB, and only for sandboxes built from an image (`image=`); a snapshot
(`options={"snapshot": name}`, or Daytona's default snapshot when neither is given) carries its own sizing,
so explicit `cpu` / `memory_mb` / `disk_mb` / `gpu` are refused there rather than silently ignored.

Network: none → `network_block_all`; full → nothing blocked; datastore → Daytona's allow-lists: IPv4 addresses
and CIDRs in `network_allow_list`, host names in `domain_allow_list` (the datastore's endpoints and the step's
entries). Daytona filters by address or domain, not by port, and takes no wildcards and no IPv6: those entries
are refused.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from typing import Any

from metaflow_sandbox_core import ConfigError, NetworkPolicy, SandboxSpec, parse_destination

#: `spec.options` keys this backend understands.
OPTION_KEYS = ("snapshot", "create_timeout", "auto_stop_minutes", "ttl_minutes", "target")
#: Keys the metaflow-sandbox extension itself reads from the same `options={...}` (not for Daytona).
EXTENSION_OPTION_KEYS = ("python",)
DEFAULT_CREATE_TIMEOUT = 300.0
DEFAULT_AUTO_STOP_MINUTES = 15
SUPPORTED_NETWORK = (NetworkPolicy.NONE, NetworkPolicy.FULL, NetworkPolicy.DATASTORE)


@dataclass(frozen=True)
class CreatePlan:
    """The Daytona create request, SDK-independent."""

    image: str | None = None
    snapshot: str | None = None
    cpu: int | None = None
    memory_gib: int | None = None
    disk_gib: int | None = None
    gpu: int | None = None
    network_block_all: bool = True
    #: Comma-separated IPv4 CIDRs / domains allowed (network="datastore"), else None.
    network_allow_list: str | None = None
    domain_allow_list: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    create_timeout: float = DEFAULT_CREATE_TIMEOUT
    auto_stop_minutes: int = DEFAULT_AUTO_STOP_MINUTES
    ttl_minutes: int | None = None
    target: str | None = None

    @property
    def has_resources(self) -> bool:
        return any(value is not None for value in (self.cpu, self.memory_gib, self.disk_gib, self.gpu))


def mib_to_gib(mib: float) -> int:
    """Whole GiB, rounded up (1 MiB → 1 GiB, 1024 → 1, 1025 → 2)."""
    return max(1, math.ceil(mib / 1024))


def plan_create(spec: SandboxSpec) -> CreatePlan:
    """The create request for `spec`, or `ConfigError` naming the fix for what Daytona cannot honour."""
    if spec.mounts:
        raise ConfigError(
            "mounts: a Daytona sandbox runs in Daytona's cloud and cannot see this machine's files. "
            "Remove the mounts (use an S3 datastore: --datastore=s3) or pick a local backend (bubblewrap)."
        )
    networks, domains = _allow_lists(spec)
    options = dict(spec.options)
    unknown = sorted(set(options) - set(OPTION_KEYS) - set(EXTENSION_OPTION_KEYS))
    if unknown:
        raise ConfigError(f"Unknown daytona option(s) {unknown}; known: {', '.join(OPTION_KEYS)}.")
    snapshot = _text(options, "snapshot")
    if snapshot is not None and spec.image is not None:
        raise ConfigError(
            f"image={spec.image!r} and options={{'snapshot': {snapshot!r}}}: a Daytona sandbox starts from "
            "either an image (built by Daytona) or a snapshot; give one of them."
        )
    sizes = {"cpu": spec.cpu, "memory_mb": spec.memory_mb, "disk_mb": spec.disk_mb}
    if spec.gpu:
        sizes["gpu"] = spec.gpu
    requested = {name: value for name, value in sizes.items() if value is not None}
    if spec.image is None and requested:
        source = f"snapshot {snapshot!r}" if snapshot else "Daytona's default snapshot"
        asked = ", ".join(f"{name}={value}" for name, value in requested.items())
        raise ConfigError(
            f"{asked}: this sandbox starts from {source}, which carries its own CPU, memory and disk. "
            "Daytona applies sizes only when it builds from an image: set image= (e.g. "
            "image='python:3.12-slim'), or drop the sizes (and size the snapshot when you create it)."
        )
    return CreatePlan(
        image=spec.image,
        snapshot=snapshot,
        cpu=math.ceil(spec.cpu) if spec.cpu is not None else None,
        memory_gib=mib_to_gib(spec.memory_mb) if spec.memory_mb is not None else None,
        disk_gib=mib_to_gib(spec.disk_mb) if spec.disk_mb is not None else None,
        gpu=spec.gpu or None,
        network_block_all=spec.network is NetworkPolicy.NONE
        or (spec.network is NetworkPolicy.DATASTORE and not networks and not domains),
        network_allow_list=",".join(networks) or None,
        domain_allow_list=",".join(domains) or None,
        env=dict(spec.env),
        labels=dict(spec.labels),
        create_timeout=_number(options, "create_timeout", DEFAULT_CREATE_TIMEOUT, minimum=1),
        auto_stop_minutes=int(_number(options, "auto_stop_minutes", DEFAULT_AUTO_STOP_MINUTES, minimum=0)),
        ttl_minutes=_ttl(options),
        target=_text(options, "target"),
    )


def _allow_lists(spec: SandboxSpec) -> tuple[list[str], list[str]]:
    """(IPv4 CIDRs, domains) Daytona must allow for `spec` (both empty unless network="datastore")."""
    networks: list[str] = []
    domains: list[str] = []
    if spec.network is not NetworkPolicy.DATASTORE:
        return networks, domains
    for entry in (*spec.network_allow, *spec.egress_allow):
        destination = parse_destination(entry)
        if destination.network is not None:
            if not isinstance(destination.network, ipaddress.IPv4Network):
                raise ConfigError(
                    f"network entry {entry!r}: Daytona's allow-list takes IPv4 addresses and CIDRs only; "
                    "use an IPv4 network or a host name."
                )
            target = networks
            value = str(destination.network)
        else:
            target = domains
            value = destination.host
        if value not in target:
            target.append(value)
    return networks, domains


def _text(options: dict[str, Any], key: str) -> str | None:
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"options[{key!r}]={value!r} must be a non-empty string.")
    return value


def _number(options: dict[str, Any], key: str, default: float, minimum: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"options[{key!r}]={value!r} must be a number >= {minimum:g}.")
    return float(value)


def _ttl(options: dict[str, Any]) -> int | None:
    if options.get("ttl_minutes") is None:
        return None
    value = _number(options, "ttl_minutes", 0, minimum=1)
    if value != int(value):
        raise ConfigError(f"options['ttl_minutes']={value!r} must be a whole number of minutes.")
    return int(value)
