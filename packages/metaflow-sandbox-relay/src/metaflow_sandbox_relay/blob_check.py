"""Checking a staged blob while taking a private copy of it: the bytes the relay publishes are the bytes it checked.

Metaflow names a blob by the sha1 of the bytes it was given and stores them raw or gzip-compressed; the copy
is hashed both ways in one pass, so no sidecar metadata from the sandbox needs to be trusted, and the result
says how Metaflow must read it back. Inflation is bounded by the artifact's declared size and by the task's
budget, in bounded steps: a decompression bomb costs the launcher neither memory nor unbounded time.
"""

from __future__ import annotations

import hashlib
import threading
import time
import zlib
from typing import IO

CHUNK = 1 << 20


class BlobRefused(Exception):
    """The blob may not enter the datastore; the message says why."""


class Budget:
    """What one task's results may cost the launcher: bytes read or inflated, and time."""

    def __init__(self, max_bytes: int, seconds: float):
        self.max_bytes = max_bytes
        self.left = max_bytes
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self._lock = threading.Lock()  # checks run concurrently: no charge may be lost

    def spend(self, count: int) -> None:
        with self._lock:
            self.left -= count
            left = self.left
        if left < 0:
            raise BlobRefused(
                f"the task's results exceed {self.max_bytes} bytes (METAFLOW_SANDBOX_MAX_RESULT_BYTES)"
            )
        if time.monotonic() > self.deadline:
            raise BlobRefused(
                f"checking the task's results took longer than {self.seconds:.0f} s (METAFLOW_SANDBOX_RELAY_TIMEOUT)"
            )


def copy_verified_blob(
    stream: IO[bytes], sha: str, target: IO[bytes], declared_size: int | None, budget: Budget
) -> bool:
    """Copy `stream` to `target`; return True if the blob is stored raw, False if gzip-compressed; raise
    `BlobRefused` unless exactly one reading hashes to `sha` within `declared_size` bytes."""
    raw = hashlib.sha1()
    unzipped = hashlib.sha1()
    inflater: zlib._Decompress | None = zlib.decompressobj(16 + zlib.MAX_WBITS)
    inflate_limit = declared_size if declared_size is not None else budget.max_bytes
    inflated = 0
    gzip_problem = ""
    stored = 0
    with stream:
        for chunk in iter(lambda: stream.read(CHUNK), b""):
            stored += len(chunk)
            budget.spend(len(chunk))
            raw.update(chunk)
            target.write(chunk)
            data = chunk
            while inflater is not None and data:
                if inflater.eof:  # bytes after the gzip stream's end: Metaflow would read them too
                    inflater, gzip_problem = None, "it has data after its compressed stream"
                    break
                try:
                    out = inflater.decompress(data, CHUNK)
                except zlib.error:
                    inflater = None
                    break
                inflated += len(out)
                if inflated > inflate_limit:
                    inflater, gzip_problem = (
                        None,
                        f"it inflates past the limit of its declared size, {inflate_limit} bytes",
                    )
                    break
                budget.spend(len(out))
                unzipped.update(out)
                data = inflater.unconsumed_tail or inflater.unused_data
    if raw.hexdigest() == sha:
        if declared_size is not None and stored > declared_size:
            raise BlobRefused(f"it holds {stored} bytes, more than its declared size of {declared_size}")
        return True
    if inflater is not None and inflater.eof and not inflater.unused_data and unzipped.hexdigest() == sha:
        return False
    raise BlobRefused(gzip_problem or "it does not hash to its name")


def blob_matches_name(stream: IO[bytes], sha: str) -> bool:
    """True when the blob's bytes, as stored or gunzipped, hash (sha1) to `sha` (bounded like the relay's copy)."""

    class _Discard:
        def write(self, data: bytes) -> None:
            pass

    try:
        copy_verified_blob(stream, sha, _Discard(), None, Budget(1 << 40, 3600))  # type: ignore[arg-type]
    except BlobRefused:
        return False
    return True
