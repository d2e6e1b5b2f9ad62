"""Inside the sandbox: the task reads the real datastore but writes only to its private staging area.

Every datastore write (artifacts, task files) goes to a staging root with the same relative layout —
a local directory for the local datastore, a private prefix for S3 — and reads of what the task staged
look there, everything else at the real root. Local metadata goes to a private directory. After the
task, the launcher's relay accepts from staging only what belongs to this task. Works for any
`DataStoreStorage` class.
"""

import copy
import os
import tempfile
from itertools import chain

from metaflow.datastore.datastore_storage import CloseAfterUse

STAGED_METHODS = ("is_file", "info_file", "size_file", "list_content", "save_bytes", "load_bytes")

#: The file listing what this task staged so far (its processes share it through the environment).
STAGED_PATHS_ENV = "METAFLOW_SANDBOX_STAGED_PATHS"


class _BothClosed:
    def __init__(self, *contexts):
        self._contexts = contexts

    def close(self):
        for context in self._contexts:
            context.__exit__(None, None, None)


class StagedPaths:
    """Which paths this task staged, in a file every process of the task appends to: a read of anything
    else goes straight to the real root, one round trip instead of two against a remote store."""

    def __init__(self, path):
        self.path = path

    def add(self, paths):
        if paths:  # one O_APPEND write: lines from concurrent processes do not interleave
            with open(self.path, "a") as f:
                f.write("".join(p + "\n" for p in paths))

    def staged(self, paths):
        try:
            with open(self.path) as f:
                known = set(f.read().splitlines())
        except FileNotFoundError:
            known = set()
        return [p in known for p in paths]


def _staging(storage_cls, staging_root, staged_paths=None):
    """Patch `storage_cls` so every instance stages its writes under `staging_root`.

    With `staged_paths`, whether a path is staged is known without asking the store; without it (a local
    staging tree, where asking is a stat), the staging root is asked first."""
    # A subclass keeping the original methods: the two views (staging and real) of an instance.
    plain = type(
        "Unstaged" + storage_cls.__name__,
        (storage_cls,),
        {m: getattr(storage_cls, m) for m in STAGED_METHODS},
    )

    def views(self):
        cached = self.__dict__.get("_sandbox_views")
        if cached is None:
            # Copies of the instance that differ only in their root: they share its client and connections.
            cached = []
            for root in (staging_root, self.datastore_root):
                view = copy.copy(self)
                view.__class__ = plain
                view.datastore_root = root
                cached.append(view)
            cached = self.__dict__["_sandbox_views"] = tuple(cached)
        return cached

    def where(self, paths):
        """For each path: staged (True), or only in the real root (False)."""
        if staged_paths is not None:
            return staged_paths.staged(paths)
        return views(self)[0].is_file(paths) if paths else []

    def is_file(self, paths):
        real = views(self)[1]
        paths = list(paths)
        staged = where(self, paths)
        found = iter(real.is_file([p for p, s in zip(paths, staged) if not s]))
        return [True if s else next(found) for s in staged]

    def info_file(self, path):
        stage, real = views(self)
        return (stage if where(self, [path])[0] else real).info_file(path)

    def size_file(self, path):
        stage, real = views(self)
        return (stage if where(self, [path])[0] else real).size_file(path)

    def list_content(self, paths):
        stage, real = views(self)
        merged = {r.path: r for r in real.list_content(paths)}
        merged.update({r.path: r for r in stage.list_content(paths)})
        return list(merged.values())

    def save_bytes(self, path_and_bytes_iter, overwrite=False, len_hint=0):
        written = []

        def noting():
            for item in path_and_bytes_iter:
                written.append(item[0])
                yield item

        result = views(self)[0].save_bytes(noting(), overwrite=overwrite, len_hint=len_hint)
        if staged_paths is not None:
            staged_paths.add(written)
        return result

    def load_bytes(self, paths):
        stage, real = views(self)
        paths = list(paths)
        staged = where(self, paths)
        first = stage.load_bytes([p for p, s in zip(paths, staged) if s])
        second = real.load_bytes([p for p, s in zip(paths, staged) if not s])
        return CloseAfterUse(chain(first.__enter__(), second.__enter__()), closer=_BothClosed(first, second))

    for name, method in (
        ("is_file", is_file),
        ("info_file", info_file),
        ("size_file", size_file),
        ("list_content", list_content),
        ("save_bytes", save_bytes),
        ("load_bytes", load_bytes),
    ):
        setattr(storage_cls, name, method)
    setattr(storage_cls, "sandbox_staging_root", staging_root)  # noqa: B010 - a patched-in marker


def install_staged_storage(metadata_dir, datastore_staging=None):
    """Stage this process's datastore writes and send its local metadata to `metadata_dir`. Idempotent.

    `datastore_staging` is the staging root of a remote datastore (e.g. an s3:// prefix); for the local
    datastore the staging tree is `metadata_dir` itself.
    """
    from metaflow.plugins.datastores.local_storage import LocalStorage
    from metaflow.plugins.metadata_providers.local import LocalMetadataProvider

    if getattr(LocalStorage, "sandbox_staging_root", None) is not None:
        return
    os.makedirs(metadata_dir, exist_ok=True)
    _staging(LocalStorage, metadata_dir)
    if datastore_staging and datastore_staging.startswith("s3://"):
        from metaflow.plugins.datastores.s3_storage import S3Storage

        if not os.environ.get(STAGED_PATHS_ENV):  # the task's first process; its children inherit the file
            descriptor, path = tempfile.mkstemp(prefix="staged-paths-")
            os.close(descriptor)
            os.environ[STAGED_PATHS_ENV] = path
        _staging(S3Storage, datastore_staging, StagedPaths(os.environ[STAGED_PATHS_ENV]))
    # Local metadata gets a storage class of its own, rooted in the private directory.
    metadata_root = type("SandboxMetadataRoot", (LocalStorage,), {"datastore_root": metadata_dir})
    setattr(LocalMetadataProvider, "_get_storage_class", classmethod(lambda cls: metadata_root))  # noqa: B010
