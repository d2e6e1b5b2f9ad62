"""Where a task's directories on this machine live, and removing those a killed launcher left.

A task's staging tree and the relay's scratch are `<cache>/staging|relay/<launcher>/<random>`, `<launcher>`
being the label of the process that runs the executor (machine, pid, start time: `host_label`). A launcher
that is SIGKILLed mid-task leaves them; the first task of every later launcher on the machine has the
directories of launchers that are gone removed, on the housekeeping thread. A name without a label (an older
layout) or of another machine is left alone.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
import uuid

from metaflow_sandbox_core.housekeeping import later

from .host_identity import host_alive, host_label

KINDS = ("staging", "relay")
_swept: set[str] = set()
_swept_lock = threading.Lock()


@functools.cache
def _launcher() -> str:
    return host_label()


def task_dir(cache_dir: str, kind: str) -> str:
    """A new directory's path for one task (or one sandbox prepared ahead) of this launcher; not created."""
    return os.path.join(cache_dir, kind, _launcher(), uuid.uuid4().hex)


def remove(directory: str | None) -> None:
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def sweep_dead_owners(cache_dir: str) -> None:
    """Remove the task directories of launchers on this machine that no longer run."""
    for kind in KINDS:
        root = os.path.join(cache_dir, kind)
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            if name.count(":") == 2 and not host_alive(name):
                remove(os.path.join(root, name))


def sweep_once(cache_dir: str) -> None:
    """Queue `sweep_dead_owners` the first time this process runs a task with this cache."""
    with _swept_lock:
        if cache_dir in _swept:
            return
        _swept.add(cache_dir)
    later(functools.partial(sweep_dead_owners, cache_dir))
