"""Inside the sandbox: the task reads the real datastore but writes only to its private staging area.

Every datastore write (artifacts, task files) goes to a staging root with the same relative layout —
a local directory for the local datastore; for S3, a private prefix for blobs and the sandbox's disk for the
task's own files — and reads of what the task staged look there, everything else at the real root. Local
metadata goes to a private directory (with the task's own files: one archive home). After the task, the
launcher's relay accepts from staging only what belongs to this task. Works for any
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


class _AllClosed:
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


def is_blob(path):
    """A content-addressed blob (`<flow>/data/<xx>/<sha>`), as opposed to a task's own files."""
    parts = path.strip("/").split("/")
    return len(parts) <= 4 and len(parts) > 1 and parts[1] == "data"


def _staging(storage_cls, staging_root, staged_paths=None, own_files=None):
    """Patch `storage_cls` so every instance stages its writes under `staging_root`.

    With `staged_paths`, whether a path is staged is known without asking the store; without it (a local
    staging tree, where asking is a stat), the staging root is asked first. With `own_files` (a storage on the
    sandbox's disk), the task's own files (everything but blobs) are staged there instead: they go home in
    one archive with the task's metadata, not one request each. Metaflow writes blobs and task files in
    separate calls; a call is routed by its first path."""
    # A subclass keeping the original methods: the two views (staging and real) of an instance.
    plain = type(
        "Unstaged" + storage_cls.__name__,
        (storage_cls,),
        {m: getattr(storage_cls, m) for m in STAGED_METHODS},
    )

    def views(self):
        """(staging, real, own files or None)."""
        cached = self.__dict__.get("_sandbox_views")
        if cached is None:
            # Copies of the instance that differ only in their root: they share its client and connections.
            cached = []
            for root in (staging_root, self.datastore_root):
                view = copy.copy(self)
                view.__class__ = plain
                view.datastore_root = root
                cached.append(view)
            cached = self.__dict__["_sandbox_views"] = (*cached, own_files)
        return cached

    def where(self, paths):
        """For each path, the view that holds it: staged (in staging or the own files), else the real root."""
        stage, real, own = views(self)
        found = [real] * len(paths)
        mine = [i for i, p in enumerate(paths) if own is not None and not is_blob(p)]
        blobs = [i for i, p in enumerate(paths) if own is None or is_blob(p)]
        if mine:
            for i, there in zip(mine, own.is_file([paths[i] for i in mine])):
                found[i] = own if there else real
        if blobs:
            asked = [paths[i] for i in blobs]
            staged = staged_paths.staged(asked) if staged_paths is not None else stage.is_file(asked)
            for i, there in zip(blobs, staged):
                found[i] = stage if there else real
        return found

    def by_view(self, paths):
        groups: dict = {}  # id(view) -> (view, its paths)
        for path, view in zip(paths, where(self, paths)):
            groups.setdefault(id(view), (view, []))[1].append(path)
        return groups.values()

    def is_file(self, paths):
        real = views(self)[1]
        paths = list(paths)
        held = where(self, paths)
        found = iter(real.is_file([p for p, v in zip(paths, held) if v is real]))
        return [next(found) if v is real else True for v in held]

    def info_file(self, path):
        return where(self, [path])[0].info_file(path)

    def size_file(self, path):
        return where(self, [path])[0].size_file(path)

    def list_content(self, paths):
        stage, real, own = views(self)
        merged = {}
        for view in (real, stage, own):
            if view is not None:
                merged.update({r.path: r for r in view.list_content(paths)})
        return list(merged.values())

    def save_bytes(self, path_and_bytes_iter, overwrite=False, len_hint=0):
        items = iter(path_and_bytes_iter)
        first = next(items, None)
        if first is None:
            return None
        items = chain([first], items)
        stage, _, own = views(self)
        if own is not None and not is_blob(first[0]):
            return own.save_bytes(items, overwrite=overwrite, len_hint=len_hint)
        written = []

        def noting():
            for item in items:
                written.append(item[0])
                yield item

        result = stage.save_bytes(noting(), overwrite=overwrite, len_hint=len_hint)
        if staged_paths is not None:
            staged_paths.add(written)
        return result

    def load_bytes(self, paths):
        loads = [view.load_bytes(group) for view, group in by_view(self, list(paths))]
        return CloseAfterUse(chain(*(load.__enter__() for load in loads)), closer=_AllClosed(*loads))

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

    `datastore_staging` is the staging root of a remote datastore (e.g. an s3:// prefix) for the task's blobs;
    its own files (data.json, markers) are staged in `metadata_dir` with its metadata. For the local datastore
    the staging tree is `metadata_dir` itself.
    """
    from metaflow.plugins.datastores.local_storage import LocalStorage
    from metaflow.plugins.metadata_providers.local import LocalMetadataProvider

    if getattr(LocalStorage, "sandbox_staging_root", None) is not None:
        return
    os.makedirs(metadata_dir, exist_ok=True)
    # The task's own files of a remote datastore are kept next to its metadata, in a plain local storage.
    own_files = type(
        "UnstagedLocalStorage", (LocalStorage,), {m: getattr(LocalStorage, m) for m in STAGED_METHODS}
    )
    _staging(LocalStorage, metadata_dir)
    if datastore_staging and datastore_staging.startswith("s3://"):
        from metaflow.plugins.datastores.s3_storage import S3Storage

        if not os.environ.get(STAGED_PATHS_ENV):  # the task's first process; its children inherit the file
            descriptor, path = tempfile.mkstemp(prefix="staged-paths-")
            os.close(descriptor)
            os.environ[STAGED_PATHS_ENV] = path
        _staging(
            S3Storage, datastore_staging, StagedPaths(os.environ[STAGED_PATHS_ENV]), own_files(metadata_dir)
        )
    # Local metadata gets a storage class of its own, rooted in the private directory.
    metadata_root = type("SandboxMetadataRoot", (LocalStorage,), {"datastore_root": metadata_dir})
    setattr(LocalMetadataProvider, "_get_storage_class", classmethod(lambda cls: metadata_root))  # noqa: B010
