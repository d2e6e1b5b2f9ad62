"""Where a sandbox's staged results are read from: a local directory, an S3 prefix, or both (a task's own
files and metadata came home in one archive, its blobs in a prefix)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from typing import IO, Any

from .stores import S3_CONCURRENCY, each

SMALL = 1 << 20  # S3 bodies up to this size are kept after the first read
#: At most this many bytes of small bodies are fetched ahead, concurrently, per task.
PREFETCH_BYTES = 64 << 20


class LocalStaging:
    """A staging tree on the launcher's disk (mounted into the sandbox, or extracted from an archive)."""

    def __init__(self, root: str):
        self.root = root
        self.problems: list[str] = []

    def files(self) -> Iterator[tuple[str, int]]:
        """(relative path with "/" separators, size) of each regular file; anything else is a problem."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in list(dirnames):
                if os.path.islink(os.path.join(dirpath, name)):
                    self.problems.append(f"symlink {self._rel(os.path.join(dirpath, name))}")
                    dirnames.remove(name)
            for name in filenames:
                path = os.path.join(dirpath, name)
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode):
                    self.problems.append(f"{self._rel(path)} is not a regular file")
                    continue
                yield self._rel(path), info.st_size

    def open(self, rel: str) -> IO[bytes]:
        """Open a staged regular file, never following a link nor blocking on a FIFO the sandbox planted."""
        fd = os.open(os.path.join(self.root, rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{rel} is not a regular file")
        return os.fdopen(fd, "rb")

    def prefetch(self, rels: list[str], sizes: dict[str, int]) -> None:
        """Nothing to do: local files are read when opened."""

    def is_partial_write(self, rel: str) -> bool:
        """An interrupted atomic write (Metaflow's local storage writes a `tmp*` file, then renames it)."""
        return "/" in rel and rel.rsplit("/", 1)[-1].startswith("tmp")

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")


class S3Staging:
    """A staging prefix in S3 (or an S3-compatible store), read with the launcher's boto3 client."""

    def __init__(self, client: Any, url: str):
        if not url.startswith("s3://"):
            raise ValueError(f"not an s3:// url: {url}")
        self.client = client
        self.bucket, _, prefix = url[len("s3://") :].partition("/")
        self.prefix = prefix.rstrip("/") + "/"
        self.problems: list[str] = []
        self._small: dict[str, bytes] = {}  # bodies read once (blob check, then artifact check)
        self._listed: list[tuple[str, int]] | None = None

    def files(self) -> Iterator[tuple[str, int]]:
        """The staged files and their sizes: the listing `list_once` took, else a fresh one."""
        if self._listed is not None:
            yield from self._listed
            return
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix) :], int(item["Size"])

    def list_once(self) -> None:
        """List the prefix now (e.g. while another round trip is in flight); `files` then returns this
        listing. Only for a task that has ended: nothing is staged after it."""
        self._listed = None
        self._listed = list(self.files())

    def open(self, rel: str) -> IO[bytes]:
        cached = self._small.get(rel)
        if cached is not None:
            return io.BytesIO(cached)
        response = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))
        if int(response.get("ContentLength", SMALL + 1)) <= SMALL:
            self._small[rel] = body = response["Body"].read()
            return io.BytesIO(body)
        return response["Body"]

    def prefetch(self, rels: list[str], sizes: dict[str, int]) -> None:
        """Read the small ones of `rels` (by their listed `sizes`) concurrently, up to `PREFETCH_BYTES` in
        all, so that checking them later waits on no round trip. A body longer than listed is not kept."""
        wanted, total = [], 0
        for rel in rels:
            size = sizes.get(rel, SMALL + 1)
            if rel not in self._small and size <= SMALL and total + size <= PREFETCH_BYTES:
                wanted.append(rel)
                total += size

        def fetch(rel: str) -> None:
            stream = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"]
            try:
                body = stream.read(SMALL + 1)
            finally:
                stream.close()
            if len(body) <= SMALL:
                self._small[rel] = body

        each(S3_CONCURRENCY, fetch, wanted)

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def is_partial_write(self, rel: str) -> bool:
        return False  # an S3 object appears whole or not at all

    def delete_all(self) -> None:
        keys = [{"Key": self.key(rel)} for rel, _ in self.files()]
        for start in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000]})


class StagedTree:
    """A task's results from two places: `local` (its own files and metadata, shipped home in one archive) and
    `remote` (its blobs, in a staging prefix). A path staged in both places is a problem: the task is refused."""

    def __init__(self, remote: S3Staging, local: LocalStaging):
        self.remote = remote
        self.local = local
        self._local: set[str] = set()
        self._twice: list[str] = []

    @property
    def problems(self) -> list[str]:
        return [
            *self.local.problems,
            *self.remote.problems,
            *(f"{rel} is staged twice" for rel in self._twice),
        ]

    def files(self) -> Iterator[tuple[str, int]]:
        self._local, self._twice = (
            set(),
            [],
        )  # a fresh listing: what an earlier one found does not count twice
        for rel, size in self.local.files():
            self._local.add(rel)
            yield rel, size
        for rel, size in self.remote.files():
            if rel in self._local:
                self._twice.append(rel)
            else:
                yield rel, size

    def open(self, rel: str) -> IO[bytes]:
        return self.local.open(rel) if rel in self._local else self.remote.open(rel)

    def prefetch(self, rels: list[str], sizes: dict[str, int]) -> None:
        self.remote.prefetch([rel for rel in rels if rel not in self._local], sizes)

    def is_partial_write(self, rel: str) -> bool:
        return rel in self._local and self.local.is_partial_write(rel)


def extract_bounded(archive: str, directory: str, max_bytes: int, max_files: int) -> None:
    """Extract a sandbox-made .tgz into `directory`: regular files and directories only, inside it, at most
    `max_files` entries and `max_bytes` of content in all (counted from the headers before anything is
    written, so an archive that inflates without end is refused after reading `max_bytes`). ValueError
    names what is wrong."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members: list[tarfile.TarInfo] = []
            total = 0
            for member in tar:
                if len(members) >= max_files:
                    raise ValueError(f"it holds more than {max_files} entries")
                if not (member.isreg() or member.isdir()):
                    raise ValueError(f"{member.name} is neither a file nor a directory")
                total += member.size
                if total > max_bytes:
                    raise ValueError(f"its files hold more than {max_bytes} bytes")
                members.append(member)
            tar.extractall(directory, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ValueError(f"it cannot be read safely: {error}") from error
