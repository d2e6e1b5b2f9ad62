"""The state root: one private directory per sandbox, each with a `sandbox.json` record."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from metaflow_sandbox_core import ConfigError, default_state_dir

from .layout import SandboxLayout
from .processes import ProcessRef

STATE_DIR_ENV = "METAFLOW_SANDBOX_BUBBLEWRAP_STATE_DIR"
SANDBOX_ID_PATTERN = re.compile(r"^bwrap-[0-9a-f]{16}$")


def default_state_root() -> str:
    """`${STATE_DIR_ENV}`, else a per-user directory (see `metaflow_sandbox_core.default_state_dir`)."""
    return default_state_dir("bubblewrap", STATE_DIR_ENV)


@dataclass
class SandboxRecord:
    """What `sandbox.json` holds: enough for `Backend.list` and for destroying from another process."""

    id: str
    labels: dict[str, str]
    created_at: float
    #: The bwrap processes of running commands (one per `run`).
    processes: list[ProcessRef] = field(default_factory=list)
    #: The sandbox's cgroup directories, removed on destroy.
    cgroups: list[str] = field(default_factory=list)

    def save(self, path: str) -> None:
        """Write atomically (readers never see a partial file)."""
        fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".sandbox.json.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(asdict(self), file)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise

    @classmethod
    def load(cls, path: str) -> SandboxRecord:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
        return cls(
            id=data["id"],
            labels=dict(data["labels"]),
            created_at=float(data["created_at"]),
            processes=[ProcessRef(p["pid"], p["start_time"]) for p in data.get("processes", [])],
            cgroups=list(data.get("cgroups", [])),
        )


class StateRoot:
    """The directory holding every sandbox's host directory."""

    def __init__(self, path: str | None = None):
        self.path = os.path.abspath(path) if path else default_state_root()

    def ensure(self) -> None:
        """Create the root, private to this user; `ConfigError` if it (or its parent) belongs to someone else."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        for directory in (os.path.dirname(self.path), self.path):
            info = os.lstat(directory)
            if stat.S_ISLNK(info.st_mode) or info.st_uid not in (os.getuid(), 0):
                raise ConfigError(
                    f"The bubblewrap state directory {directory!r} is a symlink or owned by another user; "
                    f"remove it or point {STATE_DIR_ENV} at a directory you own."
                )

    def new_id(self) -> str:
        return f"bwrap-{secrets.token_hex(8)}"

    def layout(self, sandbox_id: str) -> SandboxLayout:
        """The host directory of `sandbox_id`; `ConfigError` for a malformed id (never a path outside)."""
        if not SANDBOX_ID_PATTERN.match(sandbox_id):
            raise ConfigError(
                f"{sandbox_id!r} is not a bubblewrap sandbox id (they look like 'bwrap-<16 hex digits>')."
            )
        return SandboxLayout(os.path.join(self.path, sandbox_id))

    def records(self) -> Iterator[SandboxRecord]:
        """Records of every sandbox under the root (ones being created or destroyed are skipped)."""
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return
        for entry in entries:
            if not SANDBOX_ID_PATTERN.match(entry.name):
                continue
            try:
                yield SandboxRecord.load(SandboxLayout(entry.path).record_file)
            except (OSError, ValueError, KeyError, TypeError):
                continue


def remove_tree(path: str, attempts: int = 5) -> None:
    """Delete a sandbox directory, including files sandboxed code made unwritable; missing is fine.

    Retried when a file appears meanwhile (the owning launcher updating `sandbox.json` while another
    process destroys the sandbox).
    """

    def make_writable_and_retry(function: Callable[[str], object], failed_path: str, _error: object) -> None:
        os.chmod(os.path.dirname(failed_path), 0o700)
        if os.path.isdir(failed_path) and not os.path.islink(failed_path):
            os.chmod(failed_path, 0o700)
        function(failed_path)

    for attempt in range(attempts):
        try:
            if sys.version_info >= (3, 12):
                shutil.rmtree(path, onexc=make_writable_and_retry)
            else:
                shutil.rmtree(path, onerror=make_writable_and_retry)
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.ENOTEMPTY or attempt == attempts - 1:
                raise
            time.sleep(0.05)
