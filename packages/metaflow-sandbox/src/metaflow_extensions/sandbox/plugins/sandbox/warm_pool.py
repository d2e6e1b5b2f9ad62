"""Sandboxes created ahead for the splits of a foreach still to come (in the sandbox host only).

A task of a foreach tells the host how many splits the foreach has and the run's --max-workers. The host
counts the splits that have arrived and keeps up to min(still to come, max-workers) sandboxes ready for that
group: created from the spec the group's tasks share, its bootstrap started and prepared (code package and
libraries fetched and extracted), then waiting for its task's plan (armed). An arriving task takes one; none
serves more than one task attempt, and none has run user code before its task. A group's sandboxes are
destroyed when one of its tasks fails or is interrupted (the run may stop there), after `IDLE_SECONDS` without an arrival, when older than
`MAX_WAIT_SECONDS`, and when the host exits; one still being prepared then is destroyed as soon as it exists.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from metaflow_sandbox_core import Sandbox, Started

from .task_dirs import remove

#: A group with no arrival for this long is given up (its run ended early or moved on).
IDLE_SECONDS = 30.0
#: A warm sandbox's lifetime is its step's time limit plus this; one that waited longer is not used.
MAX_WAIT_SECONDS = 600.0


@dataclass
class WarmSandbox:
    """A sandbox made ahead, its bootstrap if one waits in it for the task's plan (`Started`), and the staging
    directory mounted in it for its task (a mounting backend's), removed with it unless a task adopted it."""

    sandbox: Sandbox
    started: Started | None = None
    staging: str | None = None

    def destroy(self) -> None:
        self.sandbox.destroy()
        if self.started is not None:
            self.started.close()
        remove(self.staging)


class Making:
    """A sandbox being made ahead: its maker reports it as soon as the backend created it (`created`), so a
    group given up (`cancel`) destroys it then, not only once its preparation ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sandbox: Sandbox | None = None
        self.cancelled = False

    def created(self, sandbox: Sandbox) -> None:
        with self._lock:
            self._sandbox = sandbox
            cancelled = self.cancelled
        if cancelled:
            sandbox.destroy()  # the maker's next call on it fails, and it gives up

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            sandbox = self._sandbox
        if sandbox is not None:
            sandbox.destroy()


@dataclass(eq=False)
class _Entry:
    made_at: float
    future: Future[WarmSandbox]
    making: Making


@dataclass
class _Group:
    size: int
    max_workers: int
    arrived: int = 0
    ready: list[_Entry] = field(default_factory=list)
    last_seen: float = field(default_factory=time.monotonic)
    stopped: bool = False  # a task of the group failed or was interrupted: make no more ahead


class WarmPool:
    """Warm sandboxes per group key (backend, shared spec, run, step, foreach parent)."""

    def __init__(self, log: Callable[[str], None]):
        self._log = log
        self._groups: dict[str, _Group] = {}
        self._lock = threading.Lock()

    def arrive(self, key: str, size: int, max_workers: int, first_attempt: bool) -> WarmSandbox | None:
        """A task of the group arrived: count it and hand it a warm sandbox if one is (being) made."""
        now = time.monotonic()
        with self._lock:
            group = self._groups.setdefault(key, _Group(size, max(1, max_workers)))
            group.last_seen = now
            group.arrived += 1 if first_attempt else 0
            entry = group.ready.pop(0) if group.ready else None
        if entry is None:
            return None
        try:
            warm = entry.future.result()
        except Exception:  # its maker logged why; the task creates its own
            return None
        if time.monotonic() - entry.made_at > MAX_WAIT_SECONDS:
            warm.destroy()
            return None
        return warm

    def fill(self, key: str, make: Callable[[Making], WarmSandbox]) -> None:
        """Start making sandboxes until the group has one for each split still to come (up to max-workers)."""
        with self._lock:
            group = self._groups.get(key)
            if group is None or group.stopped:
                return
            wanted = min(group.size - group.arrived, group.max_workers) - len(group.ready)
            entries = [_Entry(time.monotonic(), Future(), Making()) for _ in range(max(0, wanted))]
            group.ready += entries
        for entry in entries:
            threading.Thread(target=self._make, args=(make, entry), name="warm", daemon=True).start()

    def _make(self, make: Callable[[Making], WarmSandbox], entry: _Entry) -> None:
        try:
            entry.future.set_result(make(entry.making))
        except BaseException as error:
            if not entry.making.cancelled:
                self._log(f"could not prepare a sandbox ahead: {error}")
            entry.future.set_exception(error)

    def drop(self, prefix: str) -> None:
        """Destroy the warm sandboxes of the groups whose key starts with `prefix` and make no more for them
        (one of their tasks failed or was interrupted: the run may stop there)."""
        entries: list[_Entry] = []
        with self._lock:
            for key, group in self._groups.items():
                if key.startswith(prefix):
                    group.stopped = True
                    entries += group.ready
                    group.ready = []
        _destroy_all(entries)

    def expire(self) -> None:
        """Destroy groups idle for `IDLE_SECONDS` and warm sandboxes past `MAX_WAIT_SECONDS`."""
        now = time.monotonic()
        stale: list[_Entry] = []
        with self._lock:
            for key, group in list(self._groups.items()):
                if now - group.last_seen > IDLE_SECONDS:
                    stale += self._groups.pop(key).ready
                    continue
                old = [entry for entry in group.ready if now - entry.made_at > MAX_WAIT_SECONDS]
                group.ready = [entry for entry in group.ready if entry not in old]
                stale += old
        _destroy_all(stale)

    def close(self, wait: float = 60.0) -> None:
        """Destroy every warm sandbox, waiting up to `wait` seconds for the makers still running to give up."""
        with self._lock:
            entries = [entry for group in self._groups.values() for entry in group.ready]
            self._groups = {}
        for entry in entries:
            entry.making.cancel()
        deadline = time.monotonic() + wait
        for entry in entries:
            try:
                entry.future.result(timeout=max(0.0, deadline - time.monotonic())).destroy()
            except Exception:
                pass

    def count(self) -> int:
        with self._lock:
            return sum(len(group.ready) for group in self._groups.values())


def _destroy_all(entries: list[_Entry]) -> None:
    """Destroy each sandbox: one made now, one still being made as soon as it exists (and whatever its maker
    returns, once it gives up)."""

    def destroy(future: Future[WarmSandbox]) -> None:
        try:
            future.result().destroy()
        except Exception:
            pass

    for entry in entries:
        entry.making.cancel()
        if entry.future.done():
            destroy(entry.future)
        else:
            entry.future.add_done_callback(destroy)
