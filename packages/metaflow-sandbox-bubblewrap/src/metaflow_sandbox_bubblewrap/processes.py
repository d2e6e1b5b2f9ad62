"""Process bookkeeping: starting bwrap from one long-lived thread, recognising a recorded pid, and killing its
process group from any process."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

#: The thread every bwrap is forked from. `--die-with-parent` (PR_SET_PDEATHSIG) fires when the *thread* that
#: forked bwrap ends, not the process: a sandbox prepared ahead on a short-lived thread would die with it.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bwrap-spawn")


def spawn(start: Callable[[], T]) -> T:
    """Run `start` (which forks a process) on the process-long spawning thread, and return what it returns."""
    return _SPAWNER.submit(start).result()


@dataclass(frozen=True)
class ProcessRef:
    """A pid plus its kernel start time, so a reused pid is never mistaken for ours."""

    pid: int
    start_time: int | None

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        return cls(pid, process_start_time(pid))

    def is_alive(self) -> bool:
        """True while this very process (not a later one with the same pid) runs; zombies count as gone."""
        fields = _stat_fields(self.pid)
        return fields is not None and fields[0] not in (b"Z", b"X") and int(fields[19]) == self.start_time


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat from field 3 (state) on, None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), None if gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def kill_recorded(ref: ProcessRef, wait: float = 5.0) -> None:
    """SIGKILL the process group of a recorded (possibly foreign-parented) bwrap and wait until it is gone."""
    if not ref.is_alive():
        return
    try:
        os.killpg(ref.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait
    while ref.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
