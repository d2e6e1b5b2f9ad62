"""Write an OCI image layout directory from a root filesystem, for `image=<that directory>` on hosts without a
registry (standard library only).

    python -m metaflow_sandbox_boxlite.oci_layout ROOTFS_DIR LAYOUT_DIR

The layout holds one gzip'd layer with the whole tree, an image config, a manifest, `index.json` and
`oci-layout` — what boxlite's `rootfs_path` accepts (a plain directory or a tarball is refused).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def _blob(layout: str, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as blob:
        blob.write(data)
    return f"sha256:{digest}", len(data)


def write_layout(rootfs: str, layout: str, *, cmd: list[str] | None = None) -> str:
    """Write `rootfs` (a directory) as an OCI image layout at `layout` (replaced if present); return `layout`."""
    if not os.path.isdir(rootfs):
        raise ValueError(f"{rootfs} is not a directory (a root filesystem, e.g. made by debootstrap)")
    shutil.rmtree(layout, ignore_errors=True)
    os.makedirs(os.path.join(layout, "blobs", "sha256"))
    with tempfile.TemporaryFile() as plain:
        with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name in sorted(os.listdir(rootfs)):
                archive.add(os.path.join(rootfs, name), arcname=name)
        plain.seek(0)
        diff_id = hashlib.sha256()
        with tempfile.TemporaryFile() as compressed:
            with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0) as packed:
                for chunk in iter(lambda: plain.read(1 << 20), b""):
                    diff_id.update(chunk)
                    packed.write(chunk)
            compressed.seek(0)
            layer_digest, layer_size = _blob(layout, compressed.read())
    arch = ARCHITECTURES.get(platform.machine(), platform.machine())
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd or ["/bin/sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id.hexdigest()}"]},
    }
    config_digest, config_size = _blob(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer_size,
            }
        ],
    }
    manifest_digest, manifest_size = _blob(layout, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "platform": {"architecture": arch, "os": "linux"},
            }
        ],
    }
    with open(os.path.join(layout, "index.json"), "w") as out:
        json.dump(index, out)
    with open(os.path.join(layout, "oci-layout"), "w") as out:
        json.dump({"imageLayoutVersion": "1.0.0"}, out)
    return layout


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m metaflow_sandbox_boxlite.oci_layout ROOTFS_DIR LAYOUT_DIR", file=sys.stderr)
        return 2
    print(write_layout(argv[0], argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
