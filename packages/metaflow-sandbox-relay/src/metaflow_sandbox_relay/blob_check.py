"""Checking that a content-addressed blob's bytes hash to its name."""

from __future__ import annotations

import gzip
import hashlib
import json
import os

CHUNK = 1 << 20


def blob_matches_name(path: str) -> bool:
    """True when the blob at `path` (with its optional `<path>_meta`) hashes to its file name.

    Metaflow names a blob by the sha1 of the bytes it was given; unless `cas_raw` is set it stores them
    gzip-compressed.
    """
    raw = True
    meta_path = path + "_meta"
    if os.path.exists(meta_path):
        with open(meta_path, "rb") as f:
            raw = bool(json.load(f).get("cas_raw", True))
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            stream = f if raw else gzip.GzipFile(fileobj=f, mode="rb")
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                digest.update(chunk)
    except (OSError, EOFError):
        return False
    return digest.hexdigest() == os.path.basename(path)
