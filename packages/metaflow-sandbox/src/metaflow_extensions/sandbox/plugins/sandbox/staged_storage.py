"""Inside the sandbox: the task reads the real local datastore but writes only to its private staging tree.

The real datastore is mounted read-only at its own path; writes (artifacts, task files, local
metadata) land in `$METAFLOW_SANDBOX_STAGING` with the same relative layout. After the task, the
launcher's relay accepts from there only what belongs to this task.
"""

import os

from metaflow.plugins.datastores.local_storage import LocalStorage


class _StagedMethods(LocalStorage):
    """Methods patched onto `LocalStorage`: reads see staging, then the real root; writes go to staging."""

    staging_root = ""

    def _staged(self, path):
        return os.path.join(self.staging_root, path.lstrip("/"))

    def _read_uri(self, path):
        staged = self._staged(path)
        return staged if os.path.exists(staged) else self.full_uri(path)

    def is_file(self, paths):
        return [os.path.isfile(self._read_uri(p)) for p in paths]

    def info_file(self, path):
        uri = self._read_uri(path)
        if not os.path.isfile(uri):
            return False, None
        try:
            with open(uri + "_meta") as f:
                import json

                return True, json.load(f)
        except OSError:
            return True, None

    def size_file(self, path):
        uri = self._read_uri(path)
        return os.path.getsize(uri) if os.path.isfile(uri) else None

    def list_content(self, paths):
        seen = {}
        for root in (self.datastore_root, self.staging_root):
            for path in paths:
                if path == self.METADATA_DIR:
                    continue
                try:
                    names = os.listdir(os.path.join(root or "", path))
                except OSError:
                    continue
                for name in names:
                    if name != self.METADATA_DIR:
                        child = self.path_join(path, name)
                        seen[child] = self.list_content_result(path=child, is_file=self.is_file([child])[0])
        return list(seen.values())

    def save_bytes(self, path_and_bytes_iter, overwrite=False, len_hint=0):
        import json

        for path, obj in path_and_bytes_iter:
            byte_obj, metadata = obj if isinstance(obj, tuple) else (obj, None)
            target = self._staged(path)
            if not overwrite and os.path.exists(self._read_uri(path)):
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            self._atomic_write(target, byte_obj.read(), mode="wb")
            if metadata:
                self._atomic_write(target + "_meta", json.dumps(metadata).encode("utf-8"), mode="wb")

    def load_bytes(self, paths):
        import json

        from metaflow.datastore.datastore_storage import CloseAfterUse

        def results():
            for path in paths:
                uri = self._read_uri(path)
                if not os.path.exists(uri):
                    yield path, None, None
                    continue
                metadata = None
                if os.path.exists(uri + "_meta"):
                    with open(uri + "_meta") as f:
                        metadata = json.load(f)
                yield path, uri, metadata

        return CloseAfterUse(results())


def install_staged_storage(staging_root):
    """Patch `LocalStorage` in this process so datastore writes and local metadata go to `staging_root`.

    The real root stays the datastore root (URIs and reads are unchanged); local metadata gets a storage
    class of its own whose root is the staging tree. Idempotent.
    """
    if getattr(LocalStorage, "staging_root", None) == staging_root:
        return
    for name in (
        "_staged",
        "_read_uri",
        "is_file",
        "info_file",
        "size_file",
        "list_content",
        "save_bytes",
        "load_bytes",
    ):
        setattr(LocalStorage, name, _StagedMethods.__dict__[name])
    setattr(LocalStorage, "staging_root", staging_root)  # noqa: B010 - a patched-in attribute

    from metaflow.plugins.metadata_providers.local import LocalMetadataProvider

    metadata_root = type("StagedMetadataRoot", (LocalStorage,), {"datastore_root": staging_root})
    setattr(LocalMetadataProvider, "_get_storage_class", classmethod(lambda cls: metadata_root))  # noqa: B010
