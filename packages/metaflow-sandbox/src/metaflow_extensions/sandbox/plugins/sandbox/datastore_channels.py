"""How a sandboxed task reaches its datastore and how its results come back, per datastore type.

`LocalChannel`: the local datastore is mounted read-only (this run and the flow's blobs only); the task
writes into a staging tree on the launcher's disk, mounted read-write.
`S3Channel`: the task reads the flow's prefix and writes its blobs to a private staging prefix with short-lived,
prefix-scoped credentials; its own files and local metadata come back as one archive, its logs as files, through
presigned PUTs.
Either way, the relay then accepts only what belongs to the launched task.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from metaflow_sandbox_core import Backend, ConfigError, Mount, NetworkPolicy
from metaflow_sandbox_relay import (
    Datastore,
    Limits,
    LocalDatastore,
    LocalStaging,
    RelayRefusedError,
    S3Datastore,
    S3Staging,
    StagedTask,
    StagedTree,
    TaskPolicy,
    TaskScope,
    apply_local_metadata,
    apply_to_datastore,
    collect_staged_task,
    each,
    extract_bounded,
    input_files,
    replay_to_service,
    vet_task,
)

from .attributes import DATASTORE_STAGING_ENV, STAGING_ENV
from .client_libraries import MODULES as CLIENT_MODULES
from .client_libraries import client_bundle
from .code_package import compiled_archive, ensure_extracted
from .task_launch import TaskLaunch

if TYPE_CHECKING:
    from .s3_access import S3Location

SANDBOX_SUBDIR = "metaflow-sandbox"  # below the sandbox's workdir: bootstrap, plan, package, logs, metadata
#: The archive of a task's own files and local metadata (S3Channel): at most this long, and its files at most
#: a data.json and the metadata a task may have (`Limits`) and this much more.
MAX_RESULTS_ARCHIVE = 64 << 20
RESULTS_SLACK = 16 << 20
#: One publisher per archive and store in this process: the sandbox host starts many tasks of a run at once, and
#: concurrent uploads of one key are wasted work (and some S3-compatible servers fail them).
_PUBLISHING: dict[str, threading.Lock] = {}
_PUBLISHING_LOCK = threading.Lock()
PACKAGES_PREFIX = ".sandbox-packages"  # below the datastore root: compiled code packages, client bundles


class Channel:
    """What the executor needs from a datastore: mounts, environment, plan fields, and the way back."""

    network = NetworkPolicy.NONE
    #: Set by the executor once the sandbox exists: `<sandbox.workdir>/metaflow-sandbox`.
    base = "/tmp/" + SANDBOX_SUBDIR

    def __init__(
        self, launch: TaskLaunch, backend: Backend, staging: str, scratch: str, say: Callable[[str], None]
    ):
        self.launch = launch
        self.backend = backend
        self.staging = staging  # on the launcher: the sandbox may write here (the local channel mounts it)
        self.scratch_root = scratch  # on the launcher, never mounted: the relay's own copies
        self.say = say
        self.scope = TaskScope(launch.flow, launch.run_id, launch.step, launch.task_id, launch.attempt)

    @property
    def task_path(self) -> str:
        return "/".join((self.launch.flow, self.launch.run_id, self.launch.step, self.launch.task_id))

    def prepare(self) -> None:
        """Everything that can fail before a sandbox exists (package, credentials)."""

    def package(self, base: str | None = None) -> tuple[dict[str, str | None], list[Mount]]:
        """Plan fields for the code package (in a sandbox whose channel directory is `base`, by default
        `self.base`), and mounts it needs."""
        raise NotImplementedError

    def mounts(self) -> list[Mount]:
        return []

    def readable(self) -> list[str]:
        """Host files in the read-only mounts that the task reads (`SandboxSpec.readable`)."""
        return []

    def env(self) -> dict[str, str]:
        return {}

    def log_paths(self) -> dict[str, str]:
        raise NotImplementedError

    def uploads(self) -> list[dict[str, str]]:
        return []

    def libraries(self, base: str | None = None) -> list[dict]:
        """Plan `libraries`: bundles offered to an image that may lack them (see `package` for `base`)."""
        return []

    def endpoints(self) -> list[dict[str, str]]:
        return []

    def publish(self, archive: str) -> str:
        """A URL the sandbox fetches a launcher-built, content-named archive from (remote backends)."""
        raise ConfigError(
            f"The {self.launch.datastore_type} datastore cannot hand archives to a remote sandbox."
        )

    def presigned_reads(self, urls: list[str]) -> list[str]:
        """Short-lived read links to exactly these datastore objects (e.g. an environment's package cache),
        for a sandbox whose credentials do not cover them."""
        raise ConfigError(
            f"The {self.launch.datastore_type} datastore cannot hand objects to a remote sandbox; run with "
            "--datastore=s3."
        )

    def relay(self, exit_code: int) -> None:
        """Bring the task's results home (see `_apply`); `RelayRefusedError` when anything is out of bounds."""
        raise NotImplementedError

    def cleanup(self) -> None:
        pass

    def _apply(self, staged: StagedTask, store: Datastore, exit_code: int) -> None:
        """Vet the staged results under this task's policy (nothing is written unless all of it passes),
        then apply them: the relay's checked copies into the datastore, the vetted records into metadata."""
        launch = self.launch
        policy = TaskPolicy(
            trusted_types=launch.trusted_types,
            parents=tuple(launch.parents),
            exit_code=exit_code,
            ds_type=launch.datastore_type,
            ds_root=launch.datastore_root,
            code_package=(launch.package_sha, launch.package_blob),
            limits=self.limits,
            **self._artifact_limit(),
        )
        scratch = tempfile.mkdtemp(prefix="relay-", dir=self.scratch_root)
        try:
            vetted = vet_task(staged, store, policy, scratch, self.say)
            apply_to_datastore(vetted, store)
            if launch.metadata_type == "service" and launch.service_url:
                replay_to_service(
                    vetted.records, self.scope.task_path, launch.service_url, launch.service_headers
                )
            else:
                apply_local_metadata(
                    vetted.records, self.scope.task_path, launch.metadata_root or launch.datastore_root
                )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _artifact_limit(self) -> dict:
        """An artifact is pickled in the sandbox's memory: none can be larger than the step's memory limit.
        Without one, METAFLOW_SANDBOX_MAX_ARTIFACT_BYTES bounds what a sandbox may claim."""
        memory_mb = self.launch.spec.get("memory_mb")
        if memory_mb:
            return {
                "max_artifact_bytes": int(memory_mb) << 20,
                "artifact_limit_reason": f"the step's memory={int(memory_mb)} MiB; an artifact is pickled in it",
            }
        return {"max_artifact_bytes": self.launch.max_artifact_bytes}

    @property
    def limits(self) -> Limits:
        launch = self.launch
        return Limits(max_result_bytes=launch.max_result_bytes, seconds=launch.relay_timeout)


class LocalChannel(Channel):
    bundle: str | None = None  # the client libraries' archive, for a sandbox Python that may lack them

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if not self.backend.capabilities.can_mount:
            raise ConfigError(
                f"The {self.backend.name!r} backend cannot see this machine's files, so it cannot use the local "
                "datastore. Run with --datastore=s3 and set METAFLOW_DATASTORE_SYSROOT_S3."
            )

    def prepare(self) -> None:
        launch = self.launch
        self.package_dir = ensure_extracted(launch.package_blob, launch.package_sha, launch.cache_dir)
        # Another Python than the launcher's (a micro-VM's image, METAFLOW_SANDBOX_PYTHON) may lack what
        # metaflow imports: offer the launcher's client libraries, mounted read-only.
        self.bundle = None if launch.python == sys.executable else client_bundle(launch.cache_dir)

    def package(self, base: str | None = None) -> tuple[dict[str, str | None], list[Mount]]:
        mounts = [Mount(self.package_dir, self.package_dir, read_only=True)]
        if self.bundle is not None:
            libraries = os.path.dirname(self.bundle)  # a directory: VM shares (virtiofs) take no single files
            mounts.append(Mount(libraries, libraries, read_only=True))
        return {"dir": self.package_dir}, mounts

    def libraries(self, base: str | None = None) -> list[dict]:
        if self.bundle is None:
            return []
        directory = f"{base or self.base}/libraries"
        return [{"modules": list(CLIENT_MODULES), "url": f"file://{self.bundle}", "dir": directory}]

    def mounts(self) -> list[Mount]:
        # Only this run's directory and the flow's content-addressed blobs, read-only: other flows and
        # other runs stay invisible; writes go to the staging tree.
        flow_root = os.path.join(self.launch.datastore_root, self.launch.flow)
        readable = [os.path.join(flow_root, self.launch.run_id), os.path.join(flow_root, "data")]
        mounts = [Mount(path, path, read_only=True) for path in readable if os.path.isdir(path)]
        return [*mounts, Mount(self.staging, self.staging, read_only=False)]

    def readable(self) -> list[str]:
        store = LocalDatastore(self.launch.datastore_root)
        files = [store.path(rel) for rel in input_files(store, self.launch.flow, self.launch.parents)]
        return files if self.bundle is None else [*files, self.bundle]

    def env(self) -> dict[str, str]:
        return {STAGING_ENV: self.staging}

    def log_paths(self) -> dict[str, str]:
        task_dir = os.path.join(self.staging, self.task_path)
        attempt = self.launch.attempt
        return {
            "stdout": os.path.join(task_dir, f"{attempt}.task_stdout.log"),
            "stderr": os.path.join(task_dir, f"{attempt}.task_stderr.log"),
        }

    def relay(self, exit_code: int) -> None:
        staged = collect_staged_task(self.staging, self.scope, self.limits)
        self._apply(staged, LocalDatastore(self.launch.datastore_root), exit_code)


class S3Channel(Channel):
    network = NetworkPolicy.DATASTORE

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        from .s3_access import S3Access, S3Location

        launch = self.launch
        self.s3 = S3Access.shared(launch.datastore_root, launch.s3_endpoint_url, launch.s3_region)
        unique = uuid.uuid4().hex
        self.staging_root = self.s3.root.child(".sandbox-staging", unique)
        self.staged_datastore = self.staging_root.child("datastore")
        self.results_archive = self.staging_root.child("results.tgz")
        self.package_location = S3Location.parse(launch.package_blob)
        self.lifetime = float(launch.spec.get("timeout") or launch.run_time_limit) + 3600

    def prepare(self) -> None:
        from .s3_access import task_policy

        launch = self.launch
        self.package_dir: str | None = None
        self.package_url: str | None = None
        self.client_url: str | None = None
        # Fetched once per package by the launcher, extracted and byte-compiled.
        archive = os.path.join(launch.cache_dir, "packages", launch.package_sha + ".tgz")
        if not os.path.exists(archive):
            partial = f"{archive}.{uuid.uuid4().hex}.partial"  # unique per task (the host runs many at once)
            self.s3.download(self.package_location, partial)
            os.replace(partial, archive)
        package_dir = ensure_extracted(archive, launch.package_sha, launch.cache_dir)
        policy = task_policy(self.s3.root, launch.flow, self.staging_root)
        name = f"mfsb-{launch.task_id}-{launch.attempt}"[:32]
        # Independent round trips, at once: the sandbox's credentials and, for a sandbox that cannot mount,
        # whether the store holds the compiled package and the client bundle.
        calls: list[Callable[[], Any]] = [
            lambda: self.s3.sandbox_credentials(launch.s3_credentials, policy, self.lifetime, name, self.say)
        ]
        if self.backend.capabilities.can_mount:
            self.package_dir = package_dir  # mounted read-only
        else:
            # The compiled copy, stored once next to the datastore; fetched through a presigned URL that
            # expires with the task (no credential needed in the sandbox).
            archives = (
                compiled_archive(launch.cache_dir, launch.package_sha),
                client_bundle(launch.cache_dir),
            )
            calls += [functools.partial(self._publish, archive) for archive in archives]
        self.credentials, *published = each(len(calls), lambda call: call(), calls)
        if published:
            self.package_url, self.client_url = (self.s3.presigned_get(p, self.lifetime) for p in published)

    def _publish(self, archive: str) -> S3Location:
        """Store a launcher-built, content-named archive under the datastore root unless the store holds it.

        Checked against the store itself every time a sandbox is about to depend on it: a bucket emptied by
        a clean-up or lifecycle rule, or another store behind the same bucket name, is never trusted from a
        local note.
        """
        location = self.s3.root.child(PACKAGES_PREFIX, os.path.basename(archive))
        key = f"{self.s3.endpoint_url}|{location.url}"
        with _PUBLISHING_LOCK:
            lock = _PUBLISHING.setdefault(key, threading.Lock())
        with lock:
            if not self.s3.exists(location):
                self.s3.upload(archive, location)
        return location

    def publish(self, archive: str) -> str:
        return self.s3.presigned_get(self._publish(archive), self.lifetime)

    def presigned_reads(self, urls: list[str]) -> list[str]:
        from .s3_access import S3Location

        root = self.s3.root
        reads = []
        for url in urls:
            location = S3Location.parse(url)
            if location.bucket != root.bucket or not location.key.startswith(root.key.rstrip("/") + "/"):
                raise ConfigError(
                    f"{url} is outside the datastore root {root.url}: a package cache the sandbox's credentials "
                    "cannot read; unset METAFLOW_CONDA_PACKAGE_S3ROOT so Metaflow caches under the root."
                )
            reads.append(self.s3.presigned_get(location, self.lifetime))
        return reads

    def libraries(self, base: str | None = None) -> list[dict]:
        if self.client_url is None:
            return []  # the backend runs the launcher's (or the configured) Python, which has them
        return [
            {"modules": list(CLIENT_MODULES), "url": self.client_url, "dir": f"{base or self.base}/libraries"}
        ]

    def package(self, base: str | None = None) -> tuple[dict[str, str | None], list[Mount]]:
        if self.package_dir is not None:
            return {"dir": self.package_dir}, [Mount(self.package_dir, self.package_dir, read_only=True)]
        return {"dir": f"{base or self.base}/package", "url": self.package_url}, []

    def env(self) -> dict[str, str]:
        return {
            **self.launch.s3_env,
            **self.credentials,
            STAGING_ENV: f"{self.base}/results",
            DATASTORE_STAGING_ENV: self.staged_datastore.url,
        }

    def log_paths(self) -> dict[str, str]:
        attempt = self.launch.attempt
        return {
            "stdout": f"{self.base}/logs/{attempt}.task_stdout.log",
            "stderr": f"{self.base}/logs/{attempt}.task_stderr.log",
        }

    def uploads(self) -> list[dict[str, str]]:
        uploads = [
            {
                "path": path,
                "url": self.s3.presigned_put(
                    self.staged_datastore.child(self.task_path, os.path.basename(path)), self.lifetime
                ),
            }
            for path in self.log_paths().values()
        ]
        uploads.append(
            {
                "path": f"{self.base}/results",
                "url": self.s3.presigned_put(self.results_archive, self.lifetime),
            }
        )
        return uploads

    def endpoints(self) -> list[dict[str, str]]:
        return [self.s3.endpoint()]

    def relay(self, exit_code: int) -> None:
        blobs = S3Staging(self.s3.client, self.staged_datastore.url)
        results = tempfile.mkdtemp(prefix="results-", dir=self.scratch_root)
        # Two independent round trips at once: the staging listing (blobs) and the archive of the rest.
        each(2, lambda read: read(), [blobs.list_once, lambda: self._fetch_results(results)])
        staged = collect_staged_task(StagedTree(blobs, LocalStaging(results)), self.scope, self.limits)
        self._apply(staged, S3Datastore(self.s3.client, self.s3.root.url), exit_code)

    def _fetch_results(self, directory: str) -> None:
        """The task's own files and local metadata, shipped as one archive through the datastore; bounded and
        extracted safely."""
        from botocore.exceptions import ClientError

        location = self.results_archive
        try:  # one GET: its length is known before the body is read
            response = self.s3.client.get_object(Bucket=location.bucket, Key=location.key)
        except ClientError:
            return  # the task never got to write any
        body = response["Body"]
        archive = os.path.join(directory, "..", os.path.basename(directory) + ".tgz")
        try:
            if int(response["ContentLength"]) > MAX_RESULTS_ARCHIVE:
                raise RelayRefusedError(
                    self.scope, [f"the results archive is {response['ContentLength']} bytes"]
                )
            with open(archive, "wb") as target:
                while chunk := body.read(1 << 20):
                    target.write(chunk)
                    if target.tell() > MAX_RESULTS_ARCHIVE:
                        raise RelayRefusedError(self.scope, ["the results archive is longer than announced"])
        finally:
            body.close()
        limits = self.limits
        try:
            extract_bounded(
                archive,
                directory,
                max_bytes=limits.max_data_json_bytes + limits.max_metadata_bytes + RESULTS_SLACK,
                max_files=limits.max_files,
            )
        except ValueError as error:
            raise RelayRefusedError(self.scope, [f"the results archive: {error}"])

    def cleanup(self) -> None:
        try:
            S3Staging(self.s3.client, self.staging_root.url).delete_all()
        except Exception as error:  # the task's result is already decided; leave a note
            self.say(f"Could not remove the staging prefix {self.staging_root.url}: {error}")


def channel_for(
    launch: TaskLaunch, backend: Backend, staging: str, scratch: str, say: Callable[[str], None]
) -> Channel:
    if launch.datastore_type == "local":
        return LocalChannel(launch, backend, staging, scratch, say)
    if launch.datastore_type == "s3":
        return S3Channel(launch, backend, staging, scratch, say)
    raise ConfigError(
        f"The {launch.datastore_type} datastore is not supported by sandboxed steps yet; use local or s3."
    )
