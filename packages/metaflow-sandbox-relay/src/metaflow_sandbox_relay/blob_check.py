"""Checking that a content-addressed blob's bytes hash to its name."""

from __future__ import annotations

import hashlib
import zlib
from typing import IO

CHUNK = 1 << 20


def blob_matches_name(stream: IO[bytes], sha: str) -> bool:
    """True when the blob's bytes, as stored or gunzipped, hash (sha1) to `sha`.

    Metaflow names a blob by the sha1 of the bytes it was given and stores them either raw or
    gzip-compressed; both are hashed in one pass, so no sidecar metadata needs to be trusted.
    """
    raw = hashlib.sha1()
    unzipped = hashlib.sha1()
    inflater: zlib._Decompress | None = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with stream:
        for chunk in iter(lambda: stream.read(CHUNK), b""):
            raw.update(chunk)
            if inflater is not None:
                try:
                    unzipped.update(inflater.decompress(chunk))
                except zlib.error:
                    inflater = None
    if raw.hexdigest() == sha:
        return True
    return inflater is not None and inflater.eof and unzipped.hexdigest() == sha
