"""`BubblewrapBackend`: Linux namespace sandboxes on this machine, made with bubblewrap (`bwrap`)."""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Mapping
from typing import ClassVar

from metaflow_sandbox_core import (
    Backend,
    Capabilities,
    ConfigError,
    EgressKind,
    Isolation,
    NetworkPolicy,
    SandboxInfo,
    SandboxSpec,
    labels_match,
)

from .cgroups import CGROUP_PREFIX, find_cgroup_dirs, remove_cgroup_dirs
from .egress import check_forwarder
from .host import detect_host_system
from .layout import SandboxUser
from .limits import SandboxLimits, apply_limits, reject_unsupported
from .probe import check_bubblewrap
from .processes import kill_recorded
from .sandbox import LIVE_SANDBOXES, BubblewrapSandbox
from .state import SandboxRecord, StateRoot, remove_tree


class BubblewrapBackend(Backend):
    """Sandboxes that share this machine's kernel and read-only system files, with private namespaces,
    a private writable /tmp, HOME and /sandbox, and no network unless the spec asks for it.

    `bwrap`: path of the bwrap executable (default: found on PATH). `state_dir`: where sandbox
    directories live (default: `$METAFLOW_SANDBOX_BUBBLEWRAP_STATE_DIR`, else
    `$XDG_RUNTIME_DIR/metaflow-sandbox/bubblewrap`, else `/tmp/metaflow-sandbox-<uid>/bubblewrap`).
    """

    name: ClassVar[str] = "bubblewrap"
    capabilities = Capabilities(
        isolation=Isolation.NAMESPACES,
        local=True,
        can_mount=True,
        # DATASTORE: an empty network namespace whose only way out is the filtering proxy (egress.py).
        network_policies=frozenset({NetworkPolicy.NONE, NetworkPolicy.DATASTORE, NetworkPolicy.FULL}),
        egress_kinds=frozenset(EgressKind),
        processes_end_with_command=True,  # each command is one bwrap: its PID namespace dies with it
    )

    def __init__(self, bwrap: str | None = None, state_dir: str | None = None):
        self.bwrap = bwrap
        self.state = StateRoot(state_dir)
        self.state_dir = self.state.path

    def check(self) -> None:
        """`ConfigError` if bwrap is missing; `UnavailableError` (not retryable) if it cannot make namespaces."""
        check_bubblewrap(self.bwrap)

    def validate(self, spec: SandboxSpec) -> None:
        """`ConfigError` for an image or a GPU: this backend runs the host system and passes no GPU through."""
        if spec.image is not None:
            raise ConfigError(
                f"image={spec.image!r}: the bubblewrap backend runs the host's own system read-only and cannot "
                "use images. Remove image=, or pick a backend that runs images (boxlite, daytona, e2b)."
            )
        reject_unsupported(spec)
        check_forwarder(spec)

    def _create(self, spec: SandboxSpec) -> BubblewrapSandbox:
        bwrap = check_bubblewrap(self.bwrap)
        _reject_unusable_mounts(spec)
        self.state.ensure()
        sandbox_id = self.state.new_id()
        layout = self.state.layout(sandbox_id)
        user = SandboxUser.for_sandbox(sandbox_id)
        layout.create(user)
        limits: SandboxLimits | None = None
        try:
            limits = apply_limits(
                spec,
                cgroup_name=CGROUP_PREFIX + sandbox_id,
                seed=int(sandbox_id[-8:], 16),
                own_uid=user.drop_from_root,
            )
            record = SandboxRecord(sandbox_id, dict(spec.labels), time.time(), cgroups=limits.cgroup.dirs)
            record.save(layout.record_file)
            for mount in spec.mounts:
                if not mount.read_only and os.path.isdir(mount.host_path):
                    user.give(mount.host_path)  # a writable mount is the sandbox user's to write
            user.grant_read(spec.readable, [m.host_path for m in spec.mounts if m.read_only])
        except BaseException:
            if limits is not None:
                limits.release()
            remove_tree(layout.host_dir)
            raise
        return BubblewrapSandbox(
            record=record,
            spec=spec,
            layout=layout,
            bwrap=bwrap,
            host=detect_host_system(),
            limits=limits,
            user=user,
        )

    def list(self, labels: Mapping[str, str] | None = None) -> list[SandboxInfo]:
        return [
            SandboxInfo(record.id, record.labels, record.created_at)
            for record in self.state.records()
            if labels_match(record.labels, labels)
        ]

    def destroy(self, sandbox_id: str) -> None:
        """Kill the sandbox's recorded commands, remove its cgroups and directory; a missing one is fine."""
        layout = self.state.layout(sandbox_id)
        live = LIVE_SANDBOXES.get(sandbox_id)
        if live is not None and live.layout == layout:
            live.destroy()
        try:
            record: SandboxRecord | None = SandboxRecord.load(layout.record_file)
        except (OSError, ValueError, KeyError, TypeError):
            record = None
        if record is not None:
            for process in record.processes:
                kill_recorded(process)
        # Also found by name: the record may be gone while its cgroups are not.
        cgroups = (record.cgroups if record else []) + find_cgroup_dirs(CGROUP_PREFIX + sandbox_id)
        remove_cgroup_dirs(dict.fromkeys(cgroups))
        remove_tree(layout.host_dir)


def _reject_unusable_mounts(spec: SandboxSpec) -> None:
    """`ConfigError` for mounts that cannot work (checked before anything is created)."""
    for mount in spec.mounts:
        if posixpath.normpath(mount.sandbox_path) == "/":
            raise ConfigError(
                f"Mount {mount.host_path!r}: mounting over the sandbox's root '/' is not allowed."
            )
        if not os.path.isabs(mount.host_path) or not os.path.exists(mount.host_path):
            raise ConfigError(
                f"Mount source {mount.host_path!r} must be an absolute path that exists on this machine."
            )
