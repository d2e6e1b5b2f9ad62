"""Putting a staged task's blobs and files into the real datastore (a local root or an s3:// root)."""

from __future__ import annotations

import os
import shutil

from .sources import LocalStaging, S3Staging
from .staging import StagedTask


def _move(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:  # another filesystem
        shutil.copyfile(src, dst + ".partial")
        os.replace(dst + ".partial", dst)


def _ordered(staged: StagedTask) -> list[str]:
    """Blobs first (with their sidecars), then task files, the `DONE.lock` last: readers never see a
    finished task whose data is missing."""
    blobs = []
    for rel in staged.blobs:
        blobs += [rel + "_meta", rel]
    return blobs + sorted(staged.task_files, key=lambda r: r.endswith("DONE.lock"))


def apply_to_datastore(staged: StagedTask, datastore_root: str) -> None:
    """Copy accepted files into the datastore; blobs already stored are left alone."""
    source = staged.source
    if isinstance(source, LocalStaging):
        for rel in _ordered(staged):
            src, dst = source.path(rel), os.path.join(datastore_root, rel)
            if os.path.exists(src) and not (rel in staged.blobs and os.path.exists(dst)):
                _move(src, dst)
        return
    assert isinstance(source, S3Staging) and datastore_root.startswith("s3://")
    bucket, _, prefix = datastore_root[len("s3://") :].partition("/")
    existing = {rel for rel, _ in source.files()}
    for rel in _ordered(staged):
        if rel not in existing:
            continue
        key = f"{prefix.rstrip('/')}/{rel}" if prefix else rel
        source.client.copy_object(
            Bucket=bucket, Key=key, CopySource={"Bucket": source.bucket, "Key": source.key(rel)}
        )
