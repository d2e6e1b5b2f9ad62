"""The relay's private, checked copy of a staged blob."""

import gzip
import hashlib
import io
import zlib

import pytest

from metaflow_sandbox_relay import BlobRefused, Budget, copy_verified_blob

PAYLOAD = b"artifact bytes " * 100
SHA = hashlib.sha1(PAYLOAD).hexdigest()


def copy(stored: bytes, declared=None, budget=None):
    target = io.BytesIO()
    raw = copy_verified_blob(io.BytesIO(stored), SHA, target, declared, budget or Budget(1 << 30, 60))
    assert target.getvalue() == stored
    return raw


def test_raw_and_gzip_readings():
    assert copy(PAYLOAD) is True
    assert copy(gzip.compress(PAYLOAD), declared=len(PAYLOAD)) is False


def test_a_second_gzip_member_is_refused():
    """Metaflow's GzipFile would read both members: the checked bytes would not be the loaded ones."""
    with pytest.raises(BlobRefused, match="after its compressed stream"):
        copy(gzip.compress(PAYLOAD) + gzip.compress(b"more"))


def test_wrong_hash_is_refused():
    with pytest.raises(BlobRefused, match="does not hash"):
        copy(gzip.compress(PAYLOAD + b"x"))


def test_inflation_stops_at_the_declared_size():
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    stored = bomb.compress(bytes(256 << 20)) + bomb.flush()
    with pytest.raises(BlobRefused, match="inflates past the limit of its declared size, 1000 bytes"):
        copy(stored, declared=1000)


def test_the_task_budget_bounds_bytes():
    with pytest.raises(BlobRefused, match="METAFLOW_SANDBOX_MAX_RESULT_BYTES"):
        copy(PAYLOAD, budget=Budget(100, 60))
