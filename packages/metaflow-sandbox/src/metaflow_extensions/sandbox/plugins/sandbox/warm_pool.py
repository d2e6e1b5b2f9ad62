"""Sandboxes created ahead for the splits of a foreach still to come (in the sandbox host only).

A task of a foreach tells the host how many splits the foreach has and the run's --max-workers. The host
counts the splits that have arrived and keeps up to min(still to come, max-workers) sandboxes ready for that
group: created from the spec the group's tasks share, its bootstrap started and prepared (code package and
libraries fetched and extracted), then waiting for its task's plan (armed). An arriving task takes one; none
serves more than one task attempt, and none has run user code before its task. A group's sandboxes are
destroyed when one of its tasks fails or is interrupted (the run may stop there), after `IDLE_SECONDS` without an arrival, when older than
`MAX_WAIT_SECONDS`, and when the host exits.
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


@dataclass
class _Group:
    size: int
    max_workers: int
    arrived: int = 0
    ready: list[tuple[float, Future[WarmSandbox]]] = field(default_factory=list)
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
        created, future = entry
        try:
            warm = future.result()
        except Exception:  # its maker logged why; the task creates its own
            return None
        if time.monotonic() - created > MAX_WAIT_SECONDS:
            warm.destroy()
            return None
        return warm

    def fill(self, key: str, make: Callable[[], WarmSandbox]) -> None:
        """Start making sandboxes until the group has one for each split still to come (up to max-workers)."""
        with self._lock:
            group = self._groups.get(key)
            if group is None or group.stopped:
                return
            wanted = min(group.size - group.arrived, group.max_workers) - len(group.ready)
            futures: list[Future[WarmSandbox]] = []
            for _ in range(max(0, wanted)):
                future: Future[WarmSandbox] = Future()
                group.ready.append((time.monotonic(), future))
                futures.append(future)
        for future in futures:
            threading.Thread(target=self._make, args=(make, future), name="warm", daemon=True).start()

    def _make(self, make: Callable[[], WarmSandbox], future: Future[WarmSandbox]) -> None:
        try:
            future.set_result(make())
        except BaseException as error:
            self._log(f"could not prepare a sandbox ahead: {error}")
            future.set_exception(error)

    def drop(self, prefix: str) -> None:
        """Destroy the warm sandboxes of the groups whose key starts with `prefix` and make no more for them
        (one of their tasks failed or was interrupted: the run may stop there)."""
        entries: list[tuple[float, Future[WarmSandbox]]] = []
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
        stale: list[tuple[float, Future[WarmSandbox]]] = []
        with self._lock:
            for key, group in list(self._groups.items()):
                if now - group.last_seen > IDLE_SECONDS:
                    stale += self._groups.pop(key).ready
                    continue
                old = [entry for entry in group.ready if now - entry[0] > MAX_WAIT_SECONDS]
                group.ready = [entry for entry in group.ready if entry not in old]
                stale += old
        _destroy_all(stale)

    def close(self, wait: float = 60.0) -> None:
        """Destroy every warm sandbox, waiting up to `wait` seconds for those still being made."""
        with self._lock:
            groups, self._groups = list(self._groups.values()), {}
        deadline = time.monotonic() + wait
        for group in groups:
            for _, future in group.ready:
                try:
                    future.result(timeout=max(0.0, deadline - time.monotonic())).destroy()
                except Exception:
                    pass

    def count(self) -> int:
        with self._lock:
            return sum(len(group.ready) for group in self._groups.values())


def _destroy_all(entries: list[tuple[float, Future[WarmSandbox]]]) -> None:
    """Destroy each sandbox once it is made (a maker still running is waited for on a thread)."""

    def destroy(future: Future[WarmSandbox]) -> None:
        try:
            future.result().destroy()
        except Exception:
            pass

    for _, future in entries:
        if future.done():
            destroy(future)
        else:
            future.add_done_callback(destroy)
