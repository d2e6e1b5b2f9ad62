"""Putting a vetted task's blobs and files into the real datastore (a local root or an s3:// root)."""

from __future__ import annotations

from .stores import Datastore, cas_meta
from .vetting import VettedTask


def apply_to_datastore(vetted: VettedTask, store: Datastore) -> None:
    """Create what is not there yet, from the relay's checked copies: blobs (each with the CAS metadata the
    check established) first, then task files with the `DONE.lock` last, so readers never see a finished
    task whose data is missing. Nothing that exists is overwritten."""
    for rel, copy, raw in vetted.blobs:
        store.put(rel, copy, cas_meta(raw))
    for rel, copy in sorted(vetted.task_files, key=lambda item: item[0].endswith("DONE.lock")):
        store.put(rel, copy)
