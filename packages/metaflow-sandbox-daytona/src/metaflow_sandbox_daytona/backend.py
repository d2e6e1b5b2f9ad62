"""`DaytonaBackend`: sandboxes in Daytona's cloud (or any server speaking its API, such as the emulator)."""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from collections.abc import Mapping
from datetime import datetime
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
    UnavailableError,
    create_limits,
    default_state_dir,
    labels_match,
)
from metaflow_sandbox_core.aio import call

from .connection import DaytonaConnection
from .errors import KEY_HELP, is_connection_error, is_daytona_error, is_not_found, status_of, translate
from .plan import OPTION_KEYS, CreatePlan, plan_create
from .sandbox import DaytonaSandbox
from .sdk import sdk

DEFAULT_API_URL = "https://app.daytona.io/api"
STATE_DIR_ENV = "METAFLOW_SANDBOX_DAYTONA_STATE_DIR"
#: States of a sandbox that is gone or going (never listed).
GONE_STATES = ("destroyed", "destroying")
FAILED_STATES = ("error", "build_failed")

log = logging.getLogger(__name__)


class DaytonaBackend(Backend):
    """Daytona sandboxes: containers on Daytona's hosts, built from an image or started from a snapshot.

    Settings default to the environment: `api_key` ← DAYTONA_API_KEY, `api_url` ← DAYTONA_API_URL (default
    https://app.daytona.io/api), `target` ← DAYTONA_TARGET (region), `state_dir` ←
    METAFLOW_SANDBOX_DAYTONA_STATE_DIR (where core's create limiter keeps its files), `creates_per_minute`:
    this instance's creation rate (default 600 a minute, shared by all processes on this machine;
    METAFLOW_SANDBOX_DAYTONA_CREATES_PER_MINUTE overrides it).
    """

    name: ClassVar[str] = "daytona"
    capabilities = Capabilities(
        isolation=Isolation.CONTAINER,
        local=False,
        can_mount=False,
        # datastore: networkAllowList (IPv4 CIDRs) and domainAllowList (exact domains); no ports, no wildcards.
        network_policies=frozenset({NetworkPolicy.NONE, NetworkPolicy.FULL, NetworkPolicy.DATASTORE}),
        egress_kinds=frozenset({EgressKind.HOST, EgressKind.CIDR}),
        max_creates_per_minute=600,
    )
    option_keys: ClassVar[frozenset[str]] = frozenset(OPTION_KEYS)

    def __init__(
        self,
        api_key: str | None = None,
        api_url: str | None = None,
        target: str | None = None,
        state_dir: str | None = None,
        creates_per_minute: float | None = None,
    ):
        self.api_key = api_key if api_key is not None else os.environ.get("DAYTONA_API_KEY", "")
        self.api_url = (api_url or os.environ.get("DAYTONA_API_URL") or DEFAULT_API_URL).rstrip("/")
        self.target = target or os.environ.get("DAYTONA_TARGET") or None
        self.state_dir = state_dir or default_state_dir(self.name, STATE_DIR_ENV)
        if creates_per_minute is not None:
            self.capabilities = dataclasses.replace(
                self.capabilities, max_creates_per_minute=creates_per_minute
            )
        self._connection: DaytonaConnection | None = None

    # -- set-up -----------------------------------------------------------------------------------------

    def check(self) -> None:
        """`ConfigError` if the SDK is missing or DAYTONA_API_KEY is not set (no request is made)."""
        sdk()
        if not self.api_key:
            raise ConfigError(f"DAYTONA_API_KEY is not set: {KEY_HELP}.")
        create_limits(self.name, self.capabilities)  # a malformed METAFLOW_SANDBOX_DAYTONA_* limit

    def validate(self, spec: SandboxSpec) -> None:
        plan_create(spec)

    @property
    def connection(self) -> DaytonaConnection:
        if self._connection is None:
            self.check()
            self._connection = DaytonaConnection(self.api_key, self.api_url, self.target)
        return self._connection

    def close(self) -> None:
        """Close the client (also done at exit)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # -- create -----------------------------------------------------------------------------------------

    def preload(self) -> None:
        try:
            from daytona import AsyncDaytona  # noqa: F401 - most of a launcher's start-up time
        except ImportError:
            pass

    def _create(self, spec: SandboxSpec) -> DaytonaSandbox:
        plan = plan_create(spec)
        connection = self.connection
        name = f"mfs-{uuid.uuid4().hex[:20]}"
        try:
            remote, workdir = call(self._create_remote(plan, name))
        except SandboxError:
            raise
        except BaseException:
            # Interrupted (a signal, Ctrl-C) while Daytona may already have made it: do not leave it behind.
            try:
                call(self._discard(name), timeout=30)
            except BaseException:
                pass
            raise
        return DaytonaSandbox(connection, remote, spec, workdir)

    async def _create_remote(self, plan: CreatePlan, name: str) -> tuple[Any, str]:
        daytona = sdk()
        client = await self.connection.client()
        try:
            remote = await client.create(_sdk_params(daytona, plan, name), timeout=plan.create_timeout)
        except Exception as error:
            failure = await self._failed_create(error, name, plan)
            raise failure from error
        try:
            workdir = str(await remote.get_user_home_dir())
        except Exception as error:
            await self._discard(name)
            action = f"read the home directory of new sandbox {remote.id} (deleted)"
            raise translate(error, api_url=self.api_url, action=action, control_plane=False) from error
        return remote, workdir.rstrip("/") or "/"

    async def _failed_create(self, error: BaseException, name: str, plan: CreatePlan) -> SandboxError:
        """The typed error for a failed create, after deleting what Daytona may have made of it."""
        status = status_of(error) if is_daytona_error(error) else None
        made = (
            is_daytona_error(error) and not is_connection_error(error) and (status is None or status >= 500)
        )
        found = await self._discard(name) if made else None
        if found is not None and found.get("state") in FAILED_STATES:
            return UnavailableError(
                f"Daytona sandbox {found['id']} ({_source(plan)}) ended in state {found['state']!r}: "
                f"{found.get('error_reason') or 'no reason given'}. It was deleted; retrying may help."
            )
        if is_daytona_error(error) and isinstance(error, sdk().DaytonaTimeoutError) and status is None:
            what = f"sandbox {found['id']}" if found is not None else "sandbox"
            return UnavailableError(
                f"Daytona {what} ({_source(plan)}) was not started within {plan.create_timeout:g} s "
                f"(options={{'create_timeout': seconds}} allows longer image builds)"
                + ("; it was deleted." if found is not None else ".")
            )
        return translate(error, api_url=self.api_url, action="create a sandbox", request_is_config=True)

    async def _discard(self, name: str) -> dict[str, Any] | None:
        """Delete the sandbox called `name` if it exists; what it was (id, state, error reason) or None."""
        client = await self.connection.client()
        try:
            remote = await client.get(name)
        except Exception:
            return None
        found = {
            "id": remote.id,
            "state": _state(remote),
            "error_reason": getattr(remote, "error_reason", None),
        }
        try:
            await remote.delete()
        except Exception as error:
            if not is_not_found(error):
                log.warning("Could not delete Daytona sandbox %s after a failed create: %s", remote.id, error)
        return found

    # -- sweeping ---------------------------------------------------------------------------------------

    def list(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        wanted = dict(labels or {})

        async def collect(client: Any) -> list[SandboxInfo]:
            query = sdk().ListSandboxesQuery(labels=wanted or None)
            found: list[SandboxInfo] = []
            async for remote in client.list(query):
                remote_labels = dict(remote.labels or {})
                if _state(remote) in GONE_STATES or not labels_match(remote_labels, wanted):
                    continue
                found.append(SandboxInfo(remote.id, remote_labels, _timestamp(remote.created_at)))
            return found

        try:
            return self.connection.with_client(collect, timeout=120)
        except Exception as error:
            raise translate(error, api_url=self.api_url, action="list sandboxes") from error

    def destroy(self, sandbox_id: str) -> None:
        """Delete a sandbox by id or name; a missing one is fine."""

        async def delete(client: Any) -> None:
            try:
                remote = await client.get(sandbox_id)
                await remote.delete()
            except Exception as error:
                if not is_not_found(error):
                    raise

        try:
            self.connection.with_client(delete, timeout=120)
        except Exception as error:
            raise translate(error, api_url=self.api_url, action=f"delete sandbox {sandbox_id}") from error


def _sdk_params(daytona: Any, plan: CreatePlan, name: str) -> Any:
    common: dict[str, Any] = {
        "name": name,
        "language": "python",
        "labels": dict(plan.labels),
        "env_vars": dict(plan.env),
        "network_block_all": plan.network_block_all,
        **{
            key: value
            for key, value in (
                ("network_allow_list", plan.network_allow_list),
                ("domain_allow_list", plan.domain_allow_list),
            )
            if value is not None
        },
        "auto_stop_interval": plan.auto_stop_minutes,
        "ephemeral": True,  # deleted as soon as it stops (auto-stop of a leaked sandbox included)
    }
    if plan.ttl_minutes is not None:
        common["ttl_minutes"] = plan.ttl_minutes
    if plan.target is not None:
        common["target"] = plan.target
    if plan.image is None:
        return daytona.CreateSandboxFromSnapshotParams(snapshot=plan.snapshot, **common)
    resources = None
    if plan.has_resources:
        resources = daytona.Resources(cpu=plan.cpu, memory=plan.memory_gib, disk=plan.disk_gib, gpu=plan.gpu)
    return daytona.CreateSandboxFromImageParams(image=plan.image, resources=resources, **common)


def _source(plan: CreatePlan) -> str:
    if plan.image is not None:
        return f"image {plan.image!r}"
    return f"snapshot {plan.snapshot!r}" if plan.snapshot else "default snapshot"


def _state(remote: Any) -> str:
    state = getattr(remote, "state", None)
    return str(getattr(state, "value", state) or "")


def _timestamp(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


__all__ = ["DEFAULT_API_URL", "DaytonaBackend"]
