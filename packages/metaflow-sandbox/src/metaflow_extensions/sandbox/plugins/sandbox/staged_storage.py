"""Inside the sandbox: the task reads the real datastore but writes only to its private staging area.

Every datastore write (artifacts, task files) goes to a staging root with the same relative layout —
a local directory for the local datastore, a private prefix for S3 — and reads look there first, then
at the real root. Local metadata goes to a private directory. After the task, the launcher's relay
accepts from staging only what belongs to this task. Works for any `DataStoreStorage` class.
"""

import os
from itertools import chain

from metaflow.datastore.datastore_storage import CloseAfterUse

STAGED_METHODS = ("is_file", "info_file", "size_file", "list_content", "save_bytes", "load_bytes")


class _BothClosed:
    def __init__(self, *contexts):
        self._contexts = contexts

    def close(self):
        for context in self._contexts:
            context.__exit__(None, None, None)


def _staging(storage_cls, staging_root):
    """Patch `storage_cls` so every instance stages its writes under `staging_root`."""
    # A subclass keeping the original methods: the two views (staging and real) of an instance.
    plain = type(
        "Unstaged" + storage_cls.__name__,
        (storage_cls,),
        {m: getattr(storage_cls, m) for m in STAGED_METHODS},
    )

    def views(self):
        cached = self.__dict__.get("_sandbox_views")
        if cached is None:
            cached = self.__dict__["_sandbox_views"] = (plain(staging_root), plain(self.datastore_root))
        return cached

    def is_file(self, paths):
        stage, real = views(self)
        return [a or b for a, b in zip(stage.is_file(paths), real.is_file(paths))]

    def info_file(self, path):
        stage, real = views(self)
        found = stage.info_file(path)
        return found if found[0] else real.info_file(path)

    def size_file(self, path):
        stage, real = views(self)
        size = stage.size_file(path)
        return size if size is not None else real.size_file(path)

    def list_content(self, paths):
        stage, real = views(self)
        merged = {r.path: r for r in real.list_content(paths)}
        merged.update({r.path: r for r in stage.list_content(paths)})
        return list(merged.values())

    def save_bytes(self, path_and_bytes_iter, overwrite=False, len_hint=0):
        return views(self)[0].save_bytes(path_and_bytes_iter, overwrite=overwrite, len_hint=len_hint)

    def load_bytes(self, paths):
        stage, real = views(self)
        paths = list(paths)
        staged = stage.is_file(paths)
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

        _staging(S3Storage, datastore_staging)
    # Local metadata gets a storage class of its own, rooted in the private directory.
    metadata_root = type("SandboxMetadataRoot", (LocalStorage,), {"datastore_root": metadata_dir})
    setattr(LocalMetadataProvider, "_get_storage_class", classmethod(lambda cls: metadata_root))  # noqa: B010
