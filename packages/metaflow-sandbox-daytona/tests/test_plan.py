"""Spec → Daytona create request: size mapping and what is refused (no SDK call, no server)."""

from __future__ import annotations

import pytest

from metaflow_sandbox_core import ConfigError, Mount, NetworkPolicy, SandboxSpec
from metaflow_sandbox_daytona import DaytonaBackend
from metaflow_sandbox_daytona.plan import mib_to_gib, plan_create


@pytest.mark.parametrize(("mib", "gib"), [(1, 1), (512, 1), (1024, 1), (1025, 2), (2048, 2), (10_000, 10)])
def test_mib_round_up_to_whole_gib(mib: int, gib: int) -> None:
    assert mib_to_gib(mib) == gib


def test_image_create_maps_cpu_memory_disk_and_gpu() -> None:
    plan = plan_create(SandboxSpec(image="python:3.12-slim", cpu=1.5, memory_mb=1500, disk_mb=10240, gpu=1))
    assert (plan.cpu, plan.memory_gib, plan.disk_gib, plan.gpu) == (2, 2, 10, 1)
    assert plan.image == "python:3.12-slim" and plan.snapshot is None and plan.has_resources


def test_image_without_sizes_asks_for_none() -> None:
    plan = plan_create(SandboxSpec(image="debian:12"))
    assert not plan.has_resources


def test_network_none_blocks_everything_full_allows() -> None:
    assert plan_create(SandboxSpec(network=NetworkPolicy.NONE)).network_block_all is True
    assert plan_create(SandboxSpec(network=NetworkPolicy.FULL)).network_block_all is False


def test_datastore_network_maps_onto_daytonas_allow_lists() -> None:
    plan = plan_create(
        SandboxSpec(
            network=NetworkPolicy.DATASTORE,
            network_allow=("127.0.0.1:9000", "s3.example.com:443"),
            egress_allow=("api.example.org", "10.0.0.0/8", "10.1.2.3"),
        )
    )
    assert plan.network_block_all is False
    assert plan.network_allow_list == "127.0.0.1/32,10.0.0.0/8,10.1.2.3/32"
    assert plan.domain_allow_list == "s3.example.com,api.example.org"
    # Nothing to allow: everything is blocked (never silently wider).
    assert plan_create(SandboxSpec(network=NetworkPolicy.DATASTORE)).network_block_all is True
    assert NetworkPolicy.DATASTORE in DaytonaBackend.capabilities.network_policies


def test_allow_list_forms_daytona_cannot_enforce_are_refused_naming_what_it_can() -> None:
    backend = DaytonaBackend.__new__(DaytonaBackend)
    for entry, fix in [
        ("*.example.com", "enforces only host, CIDR entries"),
        ("api.example.com:443", "enforces only host, CIDR entries"),
    ]:
        with pytest.raises(ConfigError, match=fix):
            backend.check_network(SandboxSpec(network=NetworkPolicy.DATASTORE, egress_allow=(entry,)))
    with pytest.raises(ConfigError, match="IPv4 addresses and CIDRs only"):
        plan_create(SandboxSpec(network=NetworkPolicy.DATASTORE, egress_allow=("2001:db8::/32",)))


@pytest.mark.parametrize(
    "sizes",
    [{"cpu": 2}, {"memory_mb": 2048}, {"disk_mb": 4096}, {"gpu": 1}],
    ids=["cpu", "memory", "disk", "gpu"],
)
def test_snapshot_sizing_belongs_to_the_snapshot(sizes: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match=r"snapshot 'fast'.*set image="):
        plan_create(SandboxSpec(options={"snapshot": "fast"}, **sizes))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="default snapshot"):
        plan_create(SandboxSpec(**sizes))  # type: ignore[arg-type]


def test_snapshot_fast_path_and_gpu_zero() -> None:
    plan = plan_create(SandboxSpec(options={"snapshot": "fast"}, gpu=0))
    assert plan.snapshot == "fast" and plan.image is None and not plan.has_resources


def test_image_and_snapshot_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="either an image"):
        plan_create(SandboxSpec(image="debian:12", options={"snapshot": "fast"}))


def test_mounts_are_refused() -> None:
    with pytest.raises(ConfigError, match="cannot see this machine's files"):
        plan_create(SandboxSpec(mounts=(Mount("/data", "/data"),)))


def test_options() -> None:
    plan = plan_create(
        SandboxSpec(
            options={"create_timeout": 900, "auto_stop_minutes": 0, "ttl_minutes": 60, "target": "eu"}
        )
    )
    assert (plan.create_timeout, plan.auto_stop_minutes, plan.ttl_minutes, plan.target) == (900, 0, 60, "eu")
    plan_create(SandboxSpec(options={"python": "/opt/venv/bin/python"}))  # the extension's own option
    with pytest.raises(ConfigError, match="Unknown daytona option"):
        plan_create(SandboxSpec(options={"snapshott": "typo"}))
    with pytest.raises(ConfigError, match="create_timeout"):
        plan_create(SandboxSpec(options={"create_timeout": "soon"}))
    with pytest.raises(ConfigError, match="ttl_minutes"):
        plan_create(SandboxSpec(options={"ttl_minutes": 1.5}))


def test_validate_is_the_same_check() -> None:
    with pytest.raises(ConfigError):
        DaytonaBackend(api_key="k").validate(SandboxSpec(mounts=(Mount("/a", "/a"),)))
    DaytonaBackend(api_key="k").validate(SandboxSpec(image="debian:12", cpu=1))
