"""Moving a staged task's blobs and files into the real local datastore."""

from __future__ import annotations

import os
import shutil

from .staging import StagedTask


def _move(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:  # another filesystem
        shutil.copyfile(src, dst + ".partial")
        os.replace(dst + ".partial", dst)


def apply_to_datastore(staged: StagedTask, datastore_root: str) -> None:
    """Move blobs (skipping ones already stored) and task files; the `DONE.lock` goes last."""
    for rel in staged.blobs:
        dst = os.path.join(datastore_root, rel)
        if os.path.exists(dst):
            continue
        meta = os.path.join(staged.root, rel + "_meta")
        if os.path.exists(meta):
            _move(meta, dst + "_meta")
        _move(os.path.join(staged.root, rel), dst)
    for rel in sorted(staged.task_files, key=lambda r: r.endswith("DONE.lock")):
        _move(os.path.join(staged.root, rel), os.path.join(datastore_root, rel))
