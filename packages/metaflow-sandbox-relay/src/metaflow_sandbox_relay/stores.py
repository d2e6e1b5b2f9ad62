"""The real datastore, as the relay reads and writes it: a local root or an s3:// root.

Writes only ever create: a file that exists is never replaced (blobs, sidecars, other tasks' files). What is
written comes from the relay's own checked copy, with fixed modes, never the sandbox's files themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import IO, Any, TypeVar, Union

#: Mode of every file the relay writes into a local datastore: the launcher's, as Metaflow writes its own.
FILE_MODE = 0o600
S3_USER_METADATA = "metaflow-user-attributes"  # how Metaflow's S3 storage keeps a blob's CAS metadata
#: Requests kept in flight at once against an S3 store: each call is a round trip the relay would wait out.
S3_CONCURRENCY = 8

_T = TypeVar("_T")
_R = TypeVar("_R")


#: Threads shared by every `each` in the process (a warm host relays many tasks: no thread starts per call).
POOL_THREADS = 32
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_in_pool = threading.local()


def _shared_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                POOL_THREADS, "relay-io", initializer=lambda: setattr(_in_pool, "worker", True)
            )
        return _pool


def each(concurrency: int, call: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    """`call` on every item, results in order, up to `concurrency` at once (threads: the calls wait on the
    network); after a failure nothing more starts, and the first failure (in item order) is raised once the
    started calls have ended. Called from one of the pool's threads, it runs the calls in turn (a pool thread
    never waits for the pool)."""
    items = list(items)
    if concurrency <= 1 or len(items) <= 1 or getattr(_in_pool, "worker", False):
        return [call(item) for item in items]
    pool = _shared_pool()
    futures: list[Future[_R]] = []
    running: set[Future[_R]] = set()
    for item in items:
        if len(running) >= concurrency:
            _, running = wait(running, return_when=FIRST_COMPLETED)
        if any(f.done() and f.exception() is not None for f in futures):
            break
        future = pool.submit(call, item)
        futures.append(future)
        running.add(future)
    wait(futures)
    return [future.result() for future in futures]


def cas_meta(raw: bool) -> dict[str, object]:
    """The CAS metadata Metaflow keeps beside a blob: how to read it back."""
    return {"cas_raw": raw, "cas_version": 1}


class LocalDatastore:
    """A local datastore root (`.metaflow`)."""

    concurrency = 1  # a local disk gains nothing from threads

    def __init__(self, root: str):
        self.root = root

    def path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    def location(self, rel: str) -> str:
        return self.path(rel)

    def version(self, rel: str) -> str | None:
        """What identifies the stored content of `rel` (changes when it is rewritten), or None if absent."""
        try:
            info = os.lstat(self.path(rel))
        except FileNotFoundError:
            return None
        return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"

    def open(self, rel: str, version: str | None = None) -> IO[bytes]:
        """Read `rel` (`version` is for remote stores: a local one is read as it is)."""
        return open(self.path(rel), "rb")

    def cas_raw(self, rel: str) -> bool | None:
        """How Metaflow reads the stored blob `rel`: raw (True), gzip (False), or None (no sidecar: gzip)."""
        try:
            with open(self.path(rel) + "_meta") as f:
                return bool(json.load(f).get("cas_raw", False))
        except (OSError, ValueError, AttributeError):
            return None

    def listdir(self, rel: str) -> list[str]:
        try:
            return os.listdir(self.path(rel))
        except OSError:
            return []

    def put(
        self, rel: str, source: str, meta: dict[str, object] | None = None, *, absent: bool = False
    ) -> bool:
        """Create `rel` from the local file `source` (and its `_meta` sidecar first, when given); False, and
        nothing written, when `rel` exists (checked here whatever `absent` says: it costs a stat)."""
        target = self.path(rel)
        if os.path.lexists(target):
            return False
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        if meta is not None:
            # A sidecar without its blob is meaningless (an interrupted write); the blob itself is created once.
            self._create(
                directory, target + "_meta", lambda f: f.write(json.dumps(meta).encode()), replace=True
            )
        with open(source, "rb") as src:
            return self._create(
                directory, target, lambda f: shutil.copyfileobj(src, f, 1 << 20), replace=False
            )

    @staticmethod
    def _create(directory: str, target: str, write: Any, *, replace: bool) -> bool:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".relay-")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                write(f)
            if replace:
                os.replace(temporary, target)
                return True
            try:
                os.link(temporary, target)  # fails if it exists: never overwrites
            except FileExistsError:
                return False
            return True
        finally:
            if os.path.lexists(temporary):
                os.unlink(temporary)


class Rewritten(Exception):
    """The object is no longer the version asked about: another writer replaced it meanwhile (two relays may
    both store a blob that a foreach's tasks share; its compressed bytes, hence its ETag, differ)."""


#: Up to this size a relayed object is stored with one PUT; larger ones go through boto3's multipart transfer.
SINGLE_PUT_BYTES = 8 << 20


class S3Datastore:
    """An s3:// datastore root, with the launcher's own client (boto3 clients are thread-safe)."""

    concurrency = S3_CONCURRENCY

    def __init__(self, client: Any, root_url: str):
        if not root_url.startswith("s3://"):
            raise ValueError(f"not an s3:// url: {root_url}")
        self.client = client
        self.root = root_url
        self.bucket, _, prefix = root_url[len("s3://") :].partition("/")
        self.prefix = prefix.strip("/")

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _head(self, rel: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            head: dict = self.client.head_object(Bucket=self.bucket, Key=self.key(rel))
            return head
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def exists(self, rel: str) -> bool:
        return self._head(rel) is not None

    def location(self, rel: str) -> str:
        return f"{self.client.meta.endpoint_url}|{self.bucket}|{self.key(rel)}"

    def version(self, rel: str) -> str | None:
        """The stored object's ETag (it changes when the object is rewritten), or None if absent."""
        head = self._head(rel)
        return None if head is None else str(head.get("ETag", ""))

    def open(self, rel: str, version: str | None = None) -> IO[bytes]:
        """Read `rel`; with `version` (an ETag), only that content: `Rewritten` if it was rewritten since."""
        from botocore.exceptions import ClientError

        extra = {"IfMatch": version} if version else {}
        try:
            body: IO[bytes] = self.client.get_object(Bucket=self.bucket, Key=self.key(rel), **extra)["Body"]
        except ClientError as error:
            if version and str(error.response.get("Error", {}).get("Code")) in ("412", "PreconditionFailed"):
                raise Rewritten(rel) from error
            raise
        return body

    def cas_raw(self, rel: str) -> bool | None:
        head = self._head(rel)
        attributes = (head or {}).get("Metadata", {}).get(S3_USER_METADATA)
        try:
            return bool(json.loads(attributes).get("cas_raw", False)) if attributes else None
        except (ValueError, AttributeError):
            return None

    def listdir(self, rel: str) -> list[str]:
        prefix = self.key(rel).rstrip("/") + "/"
        names = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        ):
            names += [item["Key"][len(prefix) :] for item in page.get("Contents", [])]
        return names

    def put(
        self, rel: str, source: str, meta: dict[str, object] | None = None, *, absent: bool = False
    ) -> bool:
        """Create `rel` from `source`; False, and nothing written, when it exists (`absent`: the caller has
        just checked that it does not)."""
        if not absent and self.exists(rel):
            return False
        extra = {"Metadata": {S3_USER_METADATA: json.dumps(meta)}} if meta is not None else {}
        if os.path.getsize(source) <= SINGLE_PUT_BYTES:  # most artifacts: one request, no transfer manager
            with open(source, "rb") as body:
                self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=body, **extra)
        else:
            self.client.upload_file(source, self.bucket, self.key(rel), ExtraArgs=extra)
        return True


Datastore = Union[LocalDatastore, S3Datastore]  # noqa: UP007 - also runs on Python 3.9
