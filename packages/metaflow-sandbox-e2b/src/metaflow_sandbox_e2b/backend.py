"""`E2BBackend`: sandboxes in E2B's cloud (Firecracker micro-VMs), or any server speaking its API (the emulator).

The SDK is configured only by its own variables: E2B_API_KEY (required), E2B_DOMAIN, and E2B_API_URL /
E2B_SANDBOX_URL for a local endpoint. The SDK's async API (`AsyncSandbox`) runs on core's event loop.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from metaflow_sandbox_core import (
    Backend,
    Capabilities,
    ConfigError,
    EgressKind,
    Isolation,
    NetworkPolicy,
    SandboxError,
    SandboxInfo,
    SandboxSpec,
    create_limits,
    labels_match,
)
from metaflow_sandbox_core.aio import call

from .errors import KEY_HELP, sdk, translate
from .plan import OPTION_KEYS, CreatePlan, plan_create
from .sandbox import E2BSandbox

#: Metadata naming one create request, so that an interrupted create can find and kill what it made.
CREATE_KEY = "mfs-create"

log = logging.getLogger(__name__)


class E2BBackend(Backend):
    """E2B sandboxes. Creation is limited to 60 a minute on this machine (E2B's Hobby rate, 1/s; Pro allows
    5/s: METAFLOW_SANDBOX_E2B_CREATES_PER_MINUTE=300)."""

    name: ClassVar[str] = "e2b"
    capabilities = Capabilities(
        isolation=Isolation.MICROVM,
        local=False,
        can_mount=False,
        network_policies=frozenset({NetworkPolicy.NONE, NetworkPolicy.FULL, NetworkPolicy.DATASTORE}),
        # allow_out takes hosts, *.domain and CIDRs; it has no ports.
        egress_kinds=frozenset({EgressKind.HOST, EgressKind.WILDCARD, EgressKind.CIDR}),
        max_creates_per_minute=60,
    )
    option_keys: ClassVar[frozenset[str]] = frozenset(OPTION_KEYS)

    def check(self) -> None:
        """`ConfigError` if the SDK is missing or E2B_API_KEY is not set (no request is made)."""
        sdk()
        if not os.environ.get("E2B_API_KEY"):
            raise ConfigError(f"E2B_API_KEY is not set: {KEY_HELP}.")
        create_limits(self.name, self.capabilities)

    def validate(self, spec: SandboxSpec) -> None:
        plan_create(spec)

    def preload(self) -> None:
        try:
            from e2b import AsyncSandbox  # noqa: F401 - most of a launcher's start-up time
        except ImportError:
            pass

    def _create(self, spec: SandboxSpec) -> E2BSandbox:
        self.check()
        plan = plan_create(spec)
        key = uuid.uuid4().hex
        try:
            remote = call(self._create_remote(plan, key))
        except SandboxError:
            raise
        except BaseException:
            # Interrupted (a signal, Ctrl-C) while E2B may already have made it: do not leave it behind.
            try:
                for info in self.list({CREATE_KEY: key}):
                    self.destroy(info.id)
            except BaseException:
                pass
            raise
        return E2BSandbox(remote, spec, plan)

    async def _create_remote(self, plan: CreatePlan, key: str) -> Any:
        e2b = sdk()
        options: dict[str, Any] = {"network": plan.network} if plan.network else {}
        if plan.allow_internet_access is not None:
            options["allow_internet_access"] = plan.allow_internet_access
        try:
            return await e2b.AsyncSandbox.create(
                template=plan.template,
                timeout=plan.first_timeout,
                metadata={**plan.metadata, CREATE_KEY: key},
                lifecycle={"on_timeout": "kill"},
                **options,
            )
        except Exception as error:
            raise translate(error, f"create a sandbox from template {plan.template!r}", True) from error

    # -- sweeping ---------------------------------------------------------------------------------------

    def list(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        wanted = dict(labels or {})

        async def collect() -> list[SandboxInfo]:
            e2b = sdk()
            pages = e2b.AsyncSandbox.list(query=e2b.SandboxQuery(metadata=wanted or None))
            found: list[SandboxInfo] = []
            while pages.has_next:
                for info in await pages.next_items():
                    metadata = dict(info.metadata or {})
                    if labels_match(metadata, wanted):
                        found.append(SandboxInfo(info.sandbox_id, metadata, info.started_at.timestamp()))
            return found

        try:
            return call(collect(), timeout=120)
        except Exception as error:
            raise translate(error, "list sandboxes") from error

    def destroy(self, sandbox_id: str) -> None:
        """Kill a sandbox by id; a missing one is fine."""
        try:
            call(sdk().AsyncSandbox.kill(sandbox_id), timeout=120)
        except Exception as error:
            raise translate(error, f"kill sandbox {sandbox_id}") from error


__all__ = ["E2BBackend"]
