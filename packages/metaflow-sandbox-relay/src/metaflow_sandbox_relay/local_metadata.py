"""Writing a staged task's metadata records into local metadata (`.metaflow/.../_meta`)."""

from __future__ import annotations

import json
import os
import tempfile

from .stores import FILE_MODE


def apply_local_metadata(
    records: list[tuple[str, dict]], task_path: tuple[str, ...], metadata_root: str
) -> int:
    """Write each record that is not there yet; return how many were written."""
    meta_dir = os.path.join(metadata_root, *task_path, "_meta")
    os.makedirs(meta_dir, exist_ok=True)
    written = 0
    for name, record in records:
        target = os.path.join(meta_dir, name + ".json")
        if os.path.exists(target):
            continue
        fd, tmp = tempfile.mkstemp(dir=meta_dir)
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        try:
            os.link(tmp, target)  # never replaces a record that appeared meanwhile
            written += 1
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return written
