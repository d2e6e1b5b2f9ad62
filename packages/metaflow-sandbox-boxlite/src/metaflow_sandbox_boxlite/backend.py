"""`BoxliteBackend`: boxlite micro-VMs, from a local runtime or a remote boxlite REST server.

- Local (BOXLITE_REST_URL unset): one runtime per boxlite home in this process. The warm sandbox host keeps
  one backend instance, so every task of the machine goes through its runtime (boxlite allows one runtime
  per home across processes). Host paths can be mounted (the local datastore, read-only). `check()` runs the
  boot probe (`probe.py`).
- Remote (BOXLITE_REST_URL, BOXLITE_API_KEY, BOXLITE_REST_PATH_PREFIX: the SDK's own variables): boxes on a
  server that cannot see this machine's files, so steps need a remote datastore (S3), as with cloud backends.

boxlite boxes carry no labels, so the labels of the boxes this machine creates are kept in
`<state_dir>/labels/<box id>.json`; `list` reports boxes named `mfs-…` with those labels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
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
    SandboxInfo,
    SandboxSpec,
    UnavailableError,
    create_limits,
    default_state_dir,
    labels_match,
    parse_destination,
)
from metaflow_sandbox_core.aio import at_exit, call

from .probe import DEFAULT_TIMEOUT, boot_problem
from .sandbox import BoxliteSandbox
from .sdk import is_not_found, sdk, translate

DEFAULT_IMAGE = "python:3.12-slim"
NAME_PREFIX = "mfs-"
#: boxlite's host alias: the guest reaches the host's 127.0.0.1 at this address.
HOST_ALIAS = "192.168.127.254"
PROBE_TIMEOUT_ENV = "METAFLOW_SANDBOX_BOXLITE_PROBE_TIMEOUT"
GONE_STATES = ("stopped", "failed", "stopping")
POLICIES = frozenset({NetworkPolicy.NONE, NetworkPolicy.DATASTORE, NetworkPolicy.FULL})

log = logging.getLogger(__name__)
_runtimes: dict[str, Any] = {}  # one per boxlite home (or REST URL) in this process


class BoxliteBackend(Backend):
    """Boxes from the local runtime (`home_dir`: BOXLITE_HOME, else ~/.boxlite) or, with BOXLITE_REST_URL,
    from that server."""

    name: ClassVar[str] = "boxlite"
    capabilities = Capabilities(
        isolation=Isolation.MICROVM,
        local=True,
        can_mount=True,
        network_policies=POLICIES,
        # allow_net: "a hostname, wildcard hostname, IPv4 or IPv4 CIDR" (no ports, no IPv6).
        egress_kinds=frozenset({EgressKind.HOST, EgressKind.WILDCARD, EgressKind.CIDR}),
        max_concurrent_creates=4,
    )

    def __init__(self, home_dir: str | None = None, state_dir: str | None = None):
        self.rest_url = os.environ.get("BOXLITE_REST_URL") or None
        self._api_key = os.environ.get("BOXLITE_API_KEY") or None  # for the SDK only: never into a box
        self.path_prefix = os.environ.get("BOXLITE_REST_PATH_PREFIX") or None
        self.home_dir = home_dir or os.environ.get("BOXLITE_HOME") or os.path.expanduser("~/.boxlite")
        self.state_dir = self.own_dir = state_dir or default_state_dir(
            self.name, "METAFLOW_SANDBOX_BOXLITE_STATE_DIR"
        )
        if self.rest_url:
            self.capabilities = dataclasses.replace(
                self.capabilities, local=False, can_mount=False, max_concurrent_creates=None
            )

    @property
    def where(self) -> str:
        return (
            f"boxlite server {self.rest_url}" if self.rest_url else f"local boxlite runtime {self.home_dir}"
        )

    # -- set-up -----------------------------------------------------------------------------------------

    def check(self) -> None:
        boxlite = sdk()
        create_limits(self.name, self.capabilities)
        if self.rest_url:
            return
        if platform.system() == "Linux" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            raise UnavailableError(
                "boxlite needs KVM, and /dev/kvm is missing or not accessible to this user. Run on a machine "
                "with hardware virtualization (or add yourself to the kvm group), set BOXLITE_REST_URL to "
                "use a boxlite server, or use @bubblewrap.",
                retryable=False,
            )
        try:
            timeout = float(os.environ.get(PROBE_TIMEOUT_ENV) or DEFAULT_TIMEOUT)
        except ValueError:
            raise ConfigError(f"{PROBE_TIMEOUT_ENV} must be a number of seconds (e.g. 60).") from None
        problem = boot_problem(self.own_dir, getattr(boxlite, "__version__", "?"), timeout)
        if problem is not None:
            hypervisor = "KVM" if platform.system() == "Linux" else "The hypervisor"
            raise UnavailableError(
                f"{hypervisor} is present but cannot boot a virtual machine on this host ({problem}). Run on a "
                "machine with hardware virtualization, set BOXLITE_REST_URL to use a boxlite server, or use "
                f"@bubblewrap. (Probe cached in {os.path.join(self.own_dir, 'boot-probe.json')}; delete "
                "it to probe again.)",
                retryable=False,
            )

    def preload(self) -> None:
        try:
            import boxlite  # noqa: F401
        except ImportError:
            pass

    def validate(self, spec: SandboxSpec) -> None:
        self._options(spec)

    def _options(self, spec: SandboxSpec) -> Any:
        return sdk().BoxOptions(**self.plan(spec))

    def plan(self, spec: SandboxSpec) -> dict[str, Any]:
        """The `BoxOptions` arguments for `spec`, or `ConfigError` naming the fix."""
        boxlite = sdk()
        if spec.gpu:
            raise ConfigError(
                f"gpu={spec.gpu}: boxlite VMs have no GPUs. Remove gpu= or use another backend."
            )
        if spec.mounts and self.rest_url:
            raise ConfigError(
                f"mounts: boxes on {self.where} cannot see this machine's files. Use an S3 datastore "
                "(--datastore=s3), or unset BOXLITE_REST_URL to run boxes on this machine."
            )
        image = spec.image or DEFAULT_IMAGE
        source: dict[str, Any] = {"image": image}
        if image.startswith(("/", "./", "../")):
            if not self.rest_url and not os.path.isfile(os.path.join(image, "index.json")):
                raise ConfigError(
                    f"image={image!r} is not an OCI image layout directory (no index.json). Build one from a "
                    "root filesystem with: python -m metaflow_sandbox_boxlite.oci_layout ROOTFS_DIR LAYOUT_DIR"
                )
            source = {"rootfs_path": os.path.abspath(image) if not self.rest_url else image}
        outbound = boxlite.OutboundNetworkSpec(mode="enabled")
        allow = (
            self._allow(spec.network_allow, spec.egress_allow)
            if spec.network is NetworkPolicy.DATASTORE
            else []
        )
        if spec.network is NetworkPolicy.NONE or (spec.network is NetworkPolicy.DATASTORE and not allow):
            outbound = boxlite.OutboundNetworkSpec(mode="disabled")
        elif spec.network is NetworkPolicy.DATASTORE:
            outbound = boxlite.OutboundNetworkSpec(mode="enabled", allow_net=allow)
        options: dict[str, Any] = {
            **source,
            "cpus": math.ceil(spec.cpu) if spec.cpu else None,
            "memory_mib": int(spec.memory_mb) if spec.memory_mb else None,
            "disk_size_gb": max(1, math.ceil(spec.disk_mb / 1024)) if spec.disk_mb else None,
            "network": boxlite.NetworkSpec(outbound=outbound),
        }
        if self.rest_url:
            options["auto_delete"] = 60  # a leaked box that stops is removed a minute later
        else:
            options["volumes"] = [(m.host_path, m.sandbox_path, m.read_only) for m in spec.mounts]
            # The standard preset (jailer + seccomp); never an empty SecurityOptions(), which turns all off.
            options["advanced"] = boxlite.AdvancedBoxOptions(security=boxlite.SecurityOptions.standard())
        return {key: value for key, value in options.items() if value is not None}

    def _allow(self, endpoints: tuple[str, ...], entries: tuple[str, ...] = ()) -> list[str]:
        """The datastore's host:port endpoints (by host) and the step's entries as boxlite `allow_net` rules
        (loopback → the host alias with the local runtime); `ConfigError` for IPv6, which boxlite cannot take."""
        hosts: list[str] = []
        for entry in (*endpoints, *entries):
            destination = parse_destination(entry)
            if destination.network is not None and destination.network.version == 6:
                raise ConfigError(
                    f"network entry {entry!r}: boxlite's allow_net takes host names, wildcards, IPv4 addresses "
                    "and IPv4 CIDRs only; use one of those."
                )
            host = destination.host
            if destination.kind is EgressKind.WILDCARD:
                host = "*." + host
            elif not self.rest_url and host in ("127.0.0.1", "localhost"):
                host = HOST_ALIAS
            if host not in hosts:
                hosts.append(host)
        return hosts

    async def runtime(self) -> Any:
        """This process's runtime for this backend's home or server (made on core's loop, closed at exit)."""
        key = repr((self.rest_url, self._api_key, self.path_prefix)) if self.rest_url else self.home_dir
        runtime = _runtimes.get(key)
        if runtime is None:
            boxlite = sdk()
            try:
                if self.rest_url:
                    key_credential = boxlite.ApiKeyCredential(self._api_key) if self._api_key else None
                    runtime = boxlite.Boxlite.rest(
                        boxlite.BoxliteRestOptions(
                            url=self.rest_url, credential=key_credential, path_prefix=self.path_prefix
                        )
                    )
                else:
                    runtime = boxlite.Boxlite(boxlite.Options(home_dir=self.home_dir))
            except Exception as error:
                raise translate(error, "start its runtime", self.where) from error
            _runtimes[key] = runtime
            at_exit(_settle)
        return runtime

    # -- create -----------------------------------------------------------------------------------------

    def _create(self, spec: SandboxSpec) -> BoxliteSandbox:
        options = self._options(spec)
        name = f"{NAME_PREFIX}{uuid.uuid4().hex[:20]}"
        self._remember(name, spec.labels)
        try:
            box, workdir = call(self._create_box(options, name))
        except BaseException:
            try:  # interrupted or failed after boxlite may have made it: do not leave it behind
                call(self._remove(name), timeout=60)
            except BaseException:
                pass
            self._forget(name)
            raise
        os.replace(self._label_file(name), self._label_file(box.id))
        return BoxliteSandbox(self, box, spec, workdir)

    async def _create_box(self, options: Any, name: str) -> tuple[Any, str]:
        runtime = await self.runtime()
        try:
            box = await runtime.create(options, name=name)
            # Boots the box (creation is lazy) and finds its home: a directory on the box's own disk.
            execution = await box.exec("sh", ["-c", 'printf %s "$HOME"'])
            home = "".join([text async for text in execution.stdout()])
            code = (await execution.wait()).exit_code
        except Exception as error:
            raise translate(error, "create a box", self.where) from error
        if code != 0 or not home.startswith("/"):
            raise UnavailableError(
                f"boxlite box {box.id} did not start a shell (exit {code}); it was removed."
            )
        return box, home.rstrip("/") or "/root"

    async def _remove(self, box_id: str) -> None:
        runtime = await self.runtime()
        try:
            await runtime.remove(box_id, force=True)
        except Exception as error:
            if not is_not_found(error):
                raise translate(error, f"remove box {box_id}", self.where) from error

    # -- labels -----------------------------------------------------------------------------------------

    def _label_file(self, key: str) -> str:
        return os.path.join(self.own_dir, "labels", f"{key}.json")

    def _remember(self, key: str, labels: Mapping[str, str]) -> None:
        os.makedirs(os.path.dirname(self._label_file(key)), mode=0o700, exist_ok=True)
        with open(self._label_file(key), "w") as out:
            json.dump(dict(labels), out)

    def _forget(self, key: str) -> None:
        try:
            os.unlink(self._label_file(key))
        except FileNotFoundError:
            pass

    def _prune(self, live: set[str]) -> None:
        """Forget the labels of boxes that no longer exist (creates in flight are still named `mfs-…`)."""
        directory = os.path.dirname(self._label_file("x"))
        for entry in os.listdir(directory) if os.path.isdir(directory) else []:
            key = entry.removesuffix(".json")
            if key not in live and not key.startswith(NAME_PREFIX):
                self._forget(key)

    def _labels(self, key: str) -> dict[str, str]:
        try:
            with open(self._label_file(key)) as found:
                return dict(json.load(found))
        except (OSError, ValueError):
            return {}

    # -- sweeping ---------------------------------------------------------------------------------------

    def list(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        async def collect() -> list[Any]:
            return list(await (await self.runtime()).list_info())

        try:
            infos = call(collect(), timeout=120)
        except Exception as error:
            raise translate(error, "list boxes", self.where) from error
        self._prune({info.id for info in infos})
        found = []
        for info in infos:
            status = str(getattr(getattr(info, "state", None), "status", "") or "")
            if not str(info.name or "").startswith(NAME_PREFIX) or status in GONE_STATES:
                continue
            box_labels = self._labels(info.id)
            if labels_match(box_labels, labels):
                found.append(SandboxInfo(info.id, box_labels, _timestamp(info.created_at)))
        return found

    def destroy(self, sandbox_id: str) -> None:
        """Remove a box by id or name; a missing one is fine."""
        call(self._remove(sandbox_id), timeout=120)
        self._forget(sandbox_id)


async def _settle() -> None:
    """At exit: close the runtimes, then give the SDK's threads a moment, so REST mode's abort at interpreter
    exit (boxlite 0.10.8) does not turn a task that succeeded into a failure."""
    import asyncio

    runtimes = list(_runtimes.values())
    _runtimes.clear()
    for runtime in runtimes:
        try:
            await runtime.close()
        except Exception as error:
            log.debug("Closing a boxlite runtime: %s", error)
    await asyncio.sleep(0.2)


def _timestamp(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() if value else None
    except ValueError:
        return None


__all__ = ["DEFAULT_IMAGE", "BoxliteBackend"]
