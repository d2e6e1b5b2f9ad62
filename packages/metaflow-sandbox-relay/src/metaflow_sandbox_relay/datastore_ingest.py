"""Putting a vetted task's blobs and files into the real datastore (a local root or an s3:// root)."""

from __future__ import annotations

from .stores import Datastore, cas_meta, each
from .vetting import VettedTask


def apply_to_datastore(vetted: VettedTask, store: Datastore) -> None:
    """Create what is not there yet, from the relay's checked copies: blobs (each with the CAS metadata the
    check established) first, then task files, then the `DONE.lock` alone, so readers never see a finished
    task whose data is missing. Nothing that exists is overwritten. On a remote store, what exists is what
    vetting found (or asked here once for all of them at once), and each stage's writes run concurrently."""
    files = sorted(vetted.task_files)
    stages: list[list[tuple[str, str, dict[str, object] | None]]] = [
        [(rel, copy, cas_meta(raw)) for rel, copy, raw in vetted.blobs],
        [(rel, copy, None) for rel, copy in files if not rel.endswith("DONE.lock")],
        [(rel, copy, None) for rel, copy in files if rel.endswith("DONE.lock")],
    ]
    remote = store.concurrency > 1
    if remote:
        present = vetted.present
        if present is None:
            every = [rel for stage in stages for rel, _, _ in stage]
            present = {
                rel for rel, there in zip(every, each(store.concurrency, store.exists, every)) if there
            }
        stages = [[item for item in stage if item[0] not in present] for stage in stages]
    for stage in stages:
        each(store.concurrency, lambda item: store.put(*item, absent=remote), stage)
