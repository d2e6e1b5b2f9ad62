"""The datastore client libraries (boto3, requests and what they need), bundled from the launcher's own
environment for sandboxes whose image lacks them.

A stock image (e.g. `python:3.11-slim`, Daytona's default snapshot) has Python but not boto3; Metaflow's S3
datastore cannot run without it. Instead of installing packages in every sandbox (slow, and it needs egress
to a package index), the launcher packs the distributions it already has, once per set of versions; the
bootstrap fetches the bundle only when the image cannot import them. botocore's service models are cut to
the ones the datastore uses (S3, STS): a step that calls other AWS services needs boto3 in its image.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata as metadata
import os
import re
import sys
import tarfile
from pathlib import Path

#: What the S3 datastore imports in the sandbox (metaflow imports requests; its S3 client is boto3).
MODULES = ("boto3", "requests")
BOTOCORE_SERVICES = frozenset({"s3", "sts"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distributions(roots: tuple[str, ...] = MODULES) -> dict[str, metadata.Distribution]:
    """`roots` and their installed requirements (extras left out), by canonical name."""
    found: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = _canonical(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python, not installed here
        found[name] = dist
        for requirement in dist.requires or []:
            if "extra" in requirement.partition(";")[2]:
                continue
            match = _NAME.match(requirement.strip())
            if match:
                todo.append(match.group(0))
    return found


def _top_levels(dist: metadata.Distribution) -> set[str]:
    """The entries a distribution puts directly into site-packages (packages, modules, its dist-info)."""
    tops = set()
    for file in dist.files or []:
        parts = Path(file).parts
        if parts and parts[0] != ".." and parts[0] != "__pycache__":
            tops.add(parts[0])
    return tops


def _keep(path: str) -> bool:
    """Leave out botocore service models the datastore does not use."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[0] == "botocore" and parts[1] == "data":
        is_service_dir = len(parts) > 3 or "." not in parts[2]
        return not is_service_dir or parts[2] in BOTOCORE_SERVICES
    return True


def bundle_key(dists: dict[str, metadata.Distribution]) -> str:
    versions = sorted(f"{name}=={dist.version}" for name, dist in dists.items())
    identity = "\n".join([sys.implementation.cache_tag, *versions, *sorted(BOTOCORE_SERVICES)])
    return hashlib.sha1(identity.encode()).hexdigest()[:20]


def client_bundle(cache_dir: str) -> str:
    """The bundle's path (a .tgz of site-packages entries, byte-compiled where the launcher has them)."""
    dists = distributions()
    missing = [m for m in MODULES if _canonical(m) not in dists]
    if missing:
        raise RuntimeError(f"the launcher's environment lacks {', '.join(missing)}")
    directory = os.path.join(cache_dir, "libraries")
    archive = os.path.join(directory, f"client-{bundle_key(dists)}.tgz")
    if os.path.exists(archive):
        return archive
    os.makedirs(directory, exist_ok=True)
    with open(archive + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(archive):
            partial = f"{archive}.partial"
            with tarfile.open(partial, "w:gz", compresslevel=3) as tar:
                for dist in dists.values():
                    root = Path(str(dist.locate_file("")))
                    for top in sorted(_top_levels(dist)):
                        tar.add(root / top, arcname=top, filter=lambda m: m if _keep(m.name) else None)
            os.replace(partial, archive)
    return archive
