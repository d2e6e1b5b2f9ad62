"""Putting a vetted task's blobs and files into the real datastore (a local root or an s3:// root)."""

from __future__ import annotations

from .stores import Datastore, cas_meta, each
from .vetting import VettedTask


def apply_to_datastore(vetted: VettedTask, store: Datastore) -> None:
    """Create what is not there yet, from the relay's checked copies: blobs (each with the CAS metadata the
    check established) first, then task files, then the `DONE.lock` alone, so readers never see a finished
    task whose data is missing. Nothing that exists is overwritten. Each stage's writes run concurrently
    where the store is remote."""
    each(store.concurrency, lambda blob: store.put(blob[0], blob[1], cas_meta(blob[2])), vetted.blobs)
    files = sorted(vetted.task_files)
    for last in (False, True):
        stage = [item for item in files if item[0].endswith("DONE.lock") is last]
        each(store.concurrency, lambda item: store.put(*item), stage)
