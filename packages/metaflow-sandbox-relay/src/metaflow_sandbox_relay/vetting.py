"""Deciding what of a staged task enters the datastore, under the task's policy, before anything is written.

- Blobs: only those the attempt's `data.json` lists, each hashed, size-bounded and (for pickles) scanned
  while the relay takes its own copy. Unlisted blobs are dropped (with a line saying so); an attempt that
  wrote no `data.json` applies none. A listed blob that is already stored must be one of the task's inputs'
  artifacts, or it is checked as stored: a sandbox cannot plant bytes and later adopt them by hash.
- Task files: this attempt's files only, copied (never moved), bounded by the task's budget.
- Metadata records: artifact records must agree with `data.json` (name, sha, datastore, location); records
  about the datastore, code or logs must agree with what the launcher knows; a failed attempt cannot
  claim success.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from .artifact_check import TrustRule, open_artifact, pickle_problem, trust_rule
from .blob_check import CHUNK, BlobRefused, Budget, copy_verified_blob
from .scope import RelayRefusedError
from .staging import Limits, StagedTask
from .stores import Datastore, Rewritten, each

_ATTEMPT_FILE = re.compile(r"^(\d+)\.DONE\.lock$")
#: Gzip framing on top of deflate's worst case: a stored blob this much over its declared size is refused unread.
_GZIP_SLACK = 1024


@dataclass(frozen=True)
class TaskPolicy:
    """What the launcher knows about the task, against which its results are checked."""

    trusted_types: Iterable[str] | str = ()
    #: The task's inputs as "run/step/task" (their artifacts are already in the flow).
    parents: tuple[str, ...] = ()
    exit_code: int = 0
    ds_type: str = "local"
    ds_root: str = ""
    #: The code package the launcher gave the task: (sha, location).
    code_package: tuple[str, str] | None = None
    #: No new artifact may be larger than this once unpickled-ready (bytes), and what sets it.
    max_artifact_bytes: int = 1 << 30
    artifact_limit_reason: str = "METAFLOW_SANDBOX_MAX_ARTIFACT_BYTES"
    limits: Limits = field(default_factory=Limits)


@dataclass
class VettedTask:
    """What may be applied: local copies the relay made and checked, and the records to write."""

    blobs: list[tuple[str, str, bool]] = field(default_factory=list)  # (rel, checked copy, cas_raw)
    task_files: list[tuple[str, str]] = field(default_factory=list)  # (rel, checked copy)
    records: list[tuple[str, dict]] = field(default_factory=list)
    #: Lines for the task's log: what was dropped and why.
    notes: list[str] = field(default_factory=list)
    #: Of the blobs and task files above, those the datastore already holds, when vetting asked (a remote
    #: store: asked while the staged files were read); None: `apply_to_datastore` asks.
    present: set[str] | None = None


class _Listing:
    def __init__(self, objects: dict[str, str], info: dict[str, dict]):
        self.objects = objects
        self.info = info

    @classmethod
    def parse(cls, data: bytes) -> _Listing:
        listing = json.loads(data)
        objects = listing["objects"]
        info = listing.get("info", {})
        if not isinstance(objects, dict) or not isinstance(info, dict):
            raise ValueError("objects and info must be mappings")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in objects.items()):
            raise ValueError("objects must map names to blob names")
        return cls(objects, {k: v for k, v in info.items() if isinstance(v, dict)})

    def names_of(self, sha: str) -> list[str]:
        return sorted(name for name, value in self.objects.items() if value == sha)

    def declared_size(self, sha: str) -> int | None:
        sizes = [self.info.get(name, {}).get("size") for name in self.names_of(sha)]
        known = [int(size) for size in sizes if isinstance(size, int) and size >= 0]
        return max(known) if known and len(known) == len(sizes) else None

    def encodings(self, sha: str) -> set[str]:
        return {str(self.info.get(name, {}).get("encoding", "pickle")) for name in self.names_of(sha)}


class _Memo:
    """A bounded, thread-safe map the host keeps across tasks (the least recently used entries go first)."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._known: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._known:
                self._known.move_to_end(key)
                return self._known[key]
            return None

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._known[key] = value
            while len(self._known) > self.entries:
                self._known.popitem(last=False)


#: Stored blobs found safe to load under a trust rule, by (where, version, rule), the version being an S3
#: ETag: a foreach's tasks list the same stored artifacts over and over. Only the verdict is kept: whether the
#: blob exists and which version it is are asked every time, so a store emptied or rewritten is never
#: trusted from memory; a blob whose store names no version is never remembered.
SAFE_BLOBS = _Memo(10_000)
#: How many times a stored blob is read when it keeps being rewritten while it is read.
REREADS = 3
#: The blobs an input's finished attempt lists, by where the input is: it never changes once finished (writes are
#: create-only; a child runs after its inputs finished), and a foreach's children share their input.
FINISHED_INPUTS = _Memo(64)
_REMEMBERED_LISTING = 10_000  # blobs at most, in an input's listing kept (64 of them: at most ~64 MB)


def _blob_rel(flow: str, sha: str) -> str:
    return f"{flow}/data/{sha[:2]}/{sha}"


def _rel_of(flow: str) -> Callable[[str], str]:
    return lambda sha: _blob_rel(flow, sha)


def _inputs(store: Datastore, flow: str, parents: Iterable[str]) -> list[tuple[str, list[str], set[str]]]:
    """For each input task ("run/step/task"): its directory, its files, and the blobs its finished attempt
    lists (a join's inputs are read concurrently)."""

    def read(parent: str) -> tuple[str, list[str], set[str]]:
        task_dir = f"{flow}/{parent}"
        names = store.listdir(task_dir)
        attempts = [int(m.group(1)) for m in map(_ATTEMPT_FILE.match, names) if m]
        shas: set[str] = set()
        if attempts:
            try:
                with store.open(f"{task_dir}/{max(attempts)}.data.json") as f:
                    shas = set(_Listing.parse(f.read(64 << 20)).objects.values())
                if len(shas) <= _REMEMBERED_LISTING:
                    FINISHED_INPUTS.put(store.location(task_dir), frozenset(shas))
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return task_dir, names, shas

    return each(store.concurrency, read, parents)


def parent_artifacts(store: Datastore, flow: str, parents: Iterable[str]) -> set[str]:
    """The blob names the inputs' finished attempts list (already accepted into the flow); an input whose
    listing this process read before (a foreach's children share theirs) is not read again."""
    parents = list(parents)
    known = [FINISHED_INPUTS.get(store.location(f"{flow}/{parent}")) for parent in parents]
    unread = [parent for parent, shas in zip(parents, known) if shas is None]
    found = {sha for shas in known if shas is not None for sha in shas}
    return found | {sha for _, _, shas in _inputs(store, flow, unread) for sha in shas}


def input_files(store: Datastore, flow: str, parents: Iterable[str]) -> list[str]:
    """What a task reads of the datastore (relative paths): its inputs' task files and their artifacts' blobs."""
    files = []
    for task_dir, names, shas in _inputs(store, flow, parents):
        files += [f"{task_dir}/{name}" for name in names]
        for sha in sorted(shas):
            files += [_blob_rel(flow, sha), _blob_rel(flow, sha) + "_meta"]
    return files


def vet_task(
    staged: StagedTask, store: Datastore, policy: TaskPolicy, scratch: str, say: Callable[[str], None]
) -> VettedTask:
    """Check everything `staged` would apply; raise `RelayRefusedError` naming each problem."""
    remote = store.concurrency > 1
    with ThreadPoolExecutor(2) as background:
        # A remote store's inputs are read meanwhile: a child lists its inputs' artifacts (e.g. a foreach's
        # items) nearly always. A local one is read only if needed. So is which of the task's files the
        # store holds already (asked again by nothing: writes are create-only whatever it says).
        inputs = (
            background.submit(parent_artifacts, store, staged.scope.flow, policy.parents)
            if remote and policy.parents
            else None
        )
        files = sorted(staged.task_files)
        held = background.submit(_held, store, files) if remote else None
        return _vet(staged, store, policy, scratch, say, inputs, held)


def _held(store: Datastore, rels: list[str]) -> set[str]:
    """Which of `rels` the store holds: the task's files share one directory, listed once (S3 lists
    consistently), rather than one question each."""
    directories = {rel.rpartition("/")[0] for rel in rels}
    if len(directories) != 1:
        return {rel for rel, there in zip(rels, each(store.concurrency, store.exists, rels)) if there}
    names = set(store.listdir(directories.pop()))
    return {rel for rel in rels if rel.rpartition("/")[2] in names}


def _vet(
    staged: StagedTask,
    store: Datastore,
    policy: TaskPolicy,
    scratch: str,
    say: Callable[[str], None],
    inputs: Future[set[str]] | None,
    held: Future[set[str]] | None = None,
) -> VettedTask:
    scope = staged.scope
    limits = policy.limits
    budget = Budget(limits.max_result_bytes, limits.seconds)
    vetted = VettedTask()
    problems: list[str] = []
    allowed = trust_rule(policy.trusted_types)
    source = staged.source
    flow = scope.flow
    data_json_rel = "/".join((*scope.task_path, f"{scope.attempt}.data.json"))
    listing: _Listing | None = None
    files = sorted(staged.task_files)
    others = [rel for rel in files if rel != data_json_rel]

    def copy_files(rels: list[str]) -> None:
        nonlocal listing
        try:
            for rel in rels:
                fd, copied = tempfile.mkstemp(dir=scratch)
                with os.fdopen(fd, "wb") as target, source.open(rel) as stream:
                    _copy(stream, target, budget)
                vetted.task_files.append((rel, copied))
                if rel == data_json_rel:
                    with open(copied, "rb") as f:
                        listing = _Listing.parse(
                            f.read(limits.max_data_json_bytes + 1)[: limits.max_data_json_bytes]
                        )
        except (ValueError, KeyError, TypeError):
            raise RelayRefusedError(scope, [f"{data_json_rel} is not a Metaflow artifact listing"])
        except BlobRefused as error:
            raise RelayRefusedError(scope, [str(error)])

    # The task's listing first: it says what to ask the store and what else to fetch.
    copy_files([rel for rel in files if rel == data_json_rel])
    staged_blobs = {rel.rsplit("/", 1)[-1]: rel for rel in staged.blobs}
    if listing is None:
        if staged_blobs:
            say(f"Dropped {len(staged_blobs)} blob(s): the attempt ended without a data.json listing them.")
        staged_blobs = {}
        listed: set[str] = set()
    else:
        listed = set(listing.objects.values())
        unlisted = sorted(set(staged_blobs) - listed)
        if unlisted:
            say(
                f"Dropped {len(unlisted)} blob(s) the task wrote but its data.json does not list "
                f"(e.g. {unlisted[0]})."
            )
    # The round trips at once: the task's other files, the staged blobs it lists (new, nearly always: Metaflow
    # writes only blobs the store lacks) and which listed blobs are stored already (an input's artifacts are,
    # when the inputs were read meanwhile).
    with ThreadPoolExecutor(1) as ahead:
        fetching = ahead.submit(
            source.prefetch,
            [*others, *(staged_blobs[sha] for sha in sorted(listed) if sha in staged_blobs)],
            staged.sizes,
        )
        parents: set[str] | None = inputs.result() if inputs is not None else None
        known = sorted(listed & parents) if parents is not None else []
        ask = sorted(listed - set(known))
        versions = dict(zip(ask, each(store.concurrency, store.version, map(_rel_of(flow), ask))))
        fetching.result()
    copy_files(others)
    stored = dict.fromkeys(known, True)
    stored.update((sha, version is not None) for sha, version in versions.items())
    rule = ("*",) if allowed.everything else tuple(sorted(allowed.entries))
    #: (where its problem goes, names, rel, the version asked about): scanned concurrently after
    scans: list[tuple[int, str, str, str]] = []
    for sha in sorted(listed):
        assert listing is not None
        names = ", ".join(repr(n) for n in listing.names_of(sha))
        rel = _blob_rel(flow, sha)
        pickled = all("pickle" in encoding for encoding in listing.encodings(sha))
        if not pickled and allowed.everything is False:
            problems.append(
                f"artifact {names} has encoding {sorted(listing.encodings(sha))}, which the relay cannot check"
            )
            continue
        try:
            if sha in staged_blobs and not stored[sha]:
                vetted.blobs.append(
                    _vet_new_blob(
                        staged, staged_blobs[sha], sha, listing, budget, scratch, allowed, pickled, policy
                    )
                )
                continue
            if parents is None:
                parents = parent_artifacts(store, flow, policy.parents)
            if sha in parents:
                continue  # an input's artifact, accepted into the flow before this task ran
            if not stored[sha]:
                problems.append(
                    f"artifact {names} names blob {sha}, which neither the task nor the flow holds"
                )
                continue
            version = str(versions[sha])  # stored, and not an input's artifact: it was asked about
            if (
                pickled
                and not allowed.everything
                and not SAFE_BLOBS.get((store.location(rel), version, rule))
            ):
                scans.append((len(problems), names, rel, version))
        except BlobRefused as error:
            problems.append(f"artifact {names}{' ' if str(error).startswith('cannot') else ': '}{error}")

    def scan(item: tuple[int, str, str, str]) -> str | None:
        _, names, rel, version = item
        for _read in range(REREADS):
            try:
                raw = store.cas_raw(rel)
                with store.open(rel, version) as stream:  # the version asked about, or `Rewritten`
                    metered = io.BufferedReader(_Metered(stream, budget))
                    why = pickle_problem(open_artifact(metered, raw is True), allowed)
                break
            except Rewritten:  # stored again meanwhile (another task's relay): check what is there now
                version = str(store.version(rel))
            except BlobRefused as error:
                return f"artifact {names}{' ' if str(error).startswith('cannot') else ': '}{error}"
        else:
            return f"artifact {names}: {rel} was rewritten each of the {REREADS} times it was read"
        if why:
            return f"artifact {names} (already stored) cannot be loaded safely: {why}"
        if version:  # a store that names no version could be rewritten unseen: remember nothing
            SAFE_BLOBS.put((store.location(rel), version, rule), True)
        return None

    for (at, *_), found in reversed(list(zip(scans, each(store.concurrency, scan, scans)))):
        if found:
            problems.insert(at, found)
    if held is not None:
        vetted.present = held.result()  # the blobs to write were just found absent
    vetted.records = _vet_records(staged, listing, policy, problems)
    if problems:
        if not allowed.everything and any("cannot be loaded safely" in p for p in problems):
            problems.append("to accept other types, list them in trusted_types=[...] (see docs/security.md)")
        raise RelayRefusedError(scope, problems)
    return vetted


def _vet_new_blob(
    staged: StagedTask,
    rel: str,
    sha: str,
    listing: _Listing,
    budget: Budget,
    scratch: str,
    allowed: TrustRule,
    pickled: bool,
    policy: TaskPolicy,
) -> tuple[str, str, bool]:
    """Copy a staged blob privately while checking it; return (rel, copy, cas_raw) or raise `BlobRefused`."""
    limit = policy.max_artifact_bytes
    declared = listing.declared_size(sha)
    if declared is not None and declared > limit:
        raise BlobRefused(
            f"it declares {declared} bytes, more than the limit of {limit} bytes ({policy.artifact_limit_reason})"
        )
    declared = limit if declared is None else declared
    size = staged.sizes.get(rel)
    if size is not None and size > declared + declared // 100 + _GZIP_SLACK:
        raise BlobRefused(
            f"its blob is {size} bytes, far more than the limit of its declared size, {declared}"
        )
    fd, copy = tempfile.mkstemp(dir=scratch)
    with os.fdopen(fd, "wb") as target, staged.source.open(rel) as stream:
        raw = copy_verified_blob(stream, sha, target, declared, budget)
    if pickled and not allowed.everything:
        with open(copy, "rb") as stored:
            why = pickle_problem(open_artifact(stored, raw), allowed)
        if why:
            raise BlobRefused(f"cannot be loaded safely: {why}")
    return rel, copy, raw


def _vet_records(
    staged: StagedTask, listing: _Listing | None, policy: TaskPolicy, problems: list[str]
) -> list[tuple[str, dict]]:
    scope = staged.scope
    accepted = []
    location = f":root:{policy.ds_root}"
    for name, record in staged.records:
        where = f"_meta/{name}.json"
        if "_artifact_" in name:
            artifact = record.get("name")
            expected_file = f"{scope.attempt}_artifact_{artifact}"
            if listing is None or artifact not in listing.objects:
                problems.append(f"{where} describes an artifact {artifact!r} that data.json does not list")
                continue
            if name != expected_file:
                problems.append(f"{where} describes artifact {artifact!r} under another name")
                continue
            wrong = [
                f"{key}={record.get(key)!r}"
                for key, value in (
                    ("sha", listing.objects[artifact]),
                    ("ds_type", policy.ds_type),
                    ("location", location),
                )
                if record.get(key) != value
            ]
            if wrong:
                problems.append(f"{where} does not match data.json and the datastore: {', '.join(wrong)}")
                continue
        elif name.startswith("sysmeta_"):
            field_name, value = str(record.get("field_name", "")), record.get("value")
            if field_name.startswith("log_location"):
                problems.append(f"{where} sets {field_name}, which points the client at other logs")
                continue
            known = {"ds-type": policy.ds_type, "ds-root": policy.ds_root}
            if field_name in known and value != known[field_name]:
                problems.append(f"{where} claims {field_name}={value!r}, not {known[field_name]!r}")
                continue
            if field_name == "code-package" and policy.code_package is not None:
                why = _code_package_problem(value, policy.code_package)
                if why:
                    problems.append(f"{where} {why}")
                    continue
            if field_name == "attempt_ok" and str(value) == "True" and policy.exit_code != 0:
                problems.append(
                    f"{where} claims the attempt succeeded, but it exited with {policy.exit_code}"
                )
                continue
        accepted.append((name, record))
    return accepted


def _code_package_problem(value: object, expected: tuple[str, str]) -> str | None:
    """Why a code-package record does not describe the package the launcher gave the task, or None."""
    try:
        described = json.loads(str(value))
        found = (described["sha"], described["location"])
    except (ValueError, KeyError, TypeError):
        return "is not a code-package description"
    return None if found == expected else f"names code package {found}, not {expected}"


class _Metered(io.RawIOBase):
    """A stream that charges what is read from it to a budget."""

    def __init__(self, stream: IO[bytes], budget: Budget):
        self._stream = stream
        self._budget = budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        self._budget.spend(len(data))
        buffer[: len(data)] = data
        return len(data)


def _copy(stream: IO[bytes], target: IO[bytes], budget: Budget) -> None:
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        budget.spend(len(chunk))
        target.write(chunk)
