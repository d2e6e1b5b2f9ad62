"""Writing a staged task's metadata records into local metadata (`.metaflow/.../_meta`)."""

from __future__ import annotations

import json
import os
import tempfile

from .staging import StagedTask


def apply_local_metadata(staged: StagedTask, metadata_root: str) -> int:
    """Write each record that is not there yet; return how many were written."""
    meta_dir = os.path.join(metadata_root, *staged.scope.task_path, "_meta")
    os.makedirs(meta_dir, exist_ok=True)
    written = 0
    for name, record in staged.records:
        target = os.path.join(meta_dir, name + ".json")
        if os.path.exists(target):
            continue
        fd, tmp = tempfile.mkstemp(dir=meta_dir)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, target)
        written += 1
    return written
