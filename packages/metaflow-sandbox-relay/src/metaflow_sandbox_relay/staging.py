"""Reading a sandbox's staging tree and accepting only what belongs to the launched task."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Union

from .scope import RelayRefusedError, TaskScope
from .sources import LocalStaging, S3Staging, StagedTree

Source = Union[LocalStaging, S3Staging, StagedTree]  # noqa: UP007 - also runs on Python 3.9

_SHA = re.compile(r"^[0-9a-f]{40}$")
_ATTEMPT_TAG = re.compile(r"^attempt_id:(\d+)$")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one task may send home through the relay."""

    max_record_bytes: int = 1 << 20
    max_metadata_bytes: int = 32 << 20
    max_files: int = 100_000
    max_data_json_bytes: int = 64 << 20
    #: Bytes read from the sandbox's results plus bytes inflated while checking them.
    max_result_bytes: int = 16 << 30
    #: How long checking one task's results may take.
    seconds: float = 1800.0


@dataclass
class StagedTask:
    """What a sandboxed task produced, already checked against its scope."""

    source: Source
    scope: TaskScope
    blobs: list[str] = field(default_factory=list)  # paths relative to the source (sidecars are not taken)
    task_files: list[str] = field(default_factory=list)
    #: Size of each staged file, as listed.
    sizes: dict[str, int] = field(default_factory=dict)
    #: (record name without .json, record) for the task's metadata.
    records: list[tuple[str, dict]] = field(default_factory=list)


def _check_record(rel: str, record: object, scope: TaskScope) -> str | None:
    """Why a metadata record does not belong to `scope`, or None when it does."""
    if not isinstance(record, dict):
        return f"{rel} is not a JSON object"
    expected = {
        "flow_id": scope.flow,
        "run_number": scope.run_id,
        "step_name": scope.step,
        "task_id": scope.task_id,
    }
    for key, value in expected.items():
        if key in record and str(record[key]) != value:
            return f"{rel} names {key}={record[key]!r}, not {value!r}"
    if "attempt_id" in record and str(record["attempt_id"]) != str(scope.attempt):
        return f"{rel} names attempt_id={record['attempt_id']!r}, not {scope.attempt}"
    if record.get("field_name") in ("attempt", "attempt-done") and str(record.get("value")) != str(
        scope.attempt
    ):
        return f"{rel} claims {record['field_name']}={record.get('value')!r}, not {scope.attempt}"
    for tag in record.get("tags") or []:
        match = _ATTEMPT_TAG.match(str(tag))
        if match and int(match.group(1)) != scope.attempt:
            return f"{rel} is tagged {tag!r}, not attempt_id:{scope.attempt}"
    return None


def _check_ancestor(rel: str, record: object, scope: TaskScope) -> str | None:
    """A `_self.json` of the flow, run or step above the task: ids must match; it is not applied."""
    if not isinstance(record, dict):
        return f"{rel} is not a JSON object"
    for key, value in (("flow_id", scope.flow), ("run_number", scope.run_id), ("step_name", scope.step)):
        if key in record and str(record[key]) != value:
            return f"{rel} names {key}={record[key]!r}, not {value!r}"
    return None


def _load_json(source: Source, rel: str, size: int, limits: Limits, problems: list[str]) -> object | None:
    if size > limits.max_record_bytes:
        problems.append(f"{rel} is {size} bytes (limit {limits.max_record_bytes})")
        return None
    try:
        with source.open(rel) as f:
            return json.loads(f.read())
    except ValueError:
        problems.append(f"{rel} is not valid JSON")
        return None


def collect_staged_task(
    datastore: Source | str,
    scope: TaskScope,
    limits: Limits | None = None,
    metadata: Source | str | None = None,
) -> StagedTask:
    """Classify every staged file; raise `RelayRefusedError` if anything is out of scope or bounds.

    `datastore` holds the task's datastore writes; `metadata` its local metadata tree (by default the
    same tree, as with the local datastore). Paths are given as a local directory or a source object.
    """
    limits = limits or Limits()
    datastore = LocalStaging(datastore) if isinstance(datastore, str) else datastore
    if metadata is None:
        metadata = datastore
    elif isinstance(metadata, str):
        metadata = LocalStaging(metadata)
    staged = StagedTask(source=datastore, scope=scope)
    problems: list[str] = []
    flow, run_id, step, task_id = scope.task_path
    task_prefix = f"{scope.attempt}."
    ancestors = {
        (flow, "_meta", "_self.json"),
        (flow, run_id, "_meta", "_self.json"),
        (flow, run_id, step, "_meta", "_self.json"),
    }
    metadata_bytes = 0
    count = 0
    entries = [(datastore, rel, size) for rel, size in datastore.files()]
    if metadata is not datastore:
        entries += [(metadata, rel, size) for rel, size in metadata.files()]
    for source, rel, size in entries:
        count += 1
        if count > limits.max_files:
            problems.append(f"more than {limits.max_files} files")
            break
        parts = tuple(rel.split("/"))
        name = parts[-1]
        is_datastore = source is datastore
        is_metadata = source is metadata
        if source.is_partial_write(rel):
            continue  # an interrupted atomic write; never applied
        if is_datastore and len(parts) == 4 and parts[:2] == (flow, "data"):
            sha = name[: -len("_meta")] if name.endswith("_meta") else name
            if _SHA.match(sha) and parts[2] == sha[:2]:
                if name == sha:  # checked, with the listing, by `vet_task`; sidecars are the relay's to write
                    staged.blobs.append(rel)
                    staged.sizes[rel] = size
                continue
        elif is_datastore and len(parts) == 5 and parts[:4] == scope.task_path:
            if name.startswith(task_prefix):
                staged.task_files.append(rel)
                staged.sizes[rel] = size
                continue
        elif (
            is_metadata
            and len(parts) == 6
            and parts[:5] == (*scope.task_path, "_meta")
            and name.endswith(".json")
        ):
            record = _load_json(source, rel, size, limits, problems)
            if record is not None:
                metadata_bytes += size
                if name == "_self.json":
                    why = _check_ancestor(rel, record, scope)
                    if (
                        why is None
                        and isinstance(record, dict)
                        and str(record.get("task_id", task_id)) != task_id
                    ):
                        why = f"{rel} names task_id={record['task_id']!r}, not {task_id!r}"
                else:
                    why = _check_record(rel, record, scope)
                if why:
                    problems.append(why)
                else:
                    staged.records.append((name[: -len(".json")], record))  # type: ignore[arg-type]
            continue
        elif is_metadata and parts in ancestors:
            record = _load_json(source, rel, size, limits, problems)
            if record is not None:
                why = _check_ancestor(rel, record, scope)
                if why:
                    problems.append(why)
            continue
        problems.append(f"{rel} is outside {scope}")
    problems = datastore.problems + (metadata.problems if metadata is not datastore else []) + problems
    if metadata_bytes > limits.max_metadata_bytes:
        problems.append(f"{metadata_bytes} bytes of metadata (limit {limits.max_metadata_bytes})")
    if problems:
        raise RelayRefusedError(scope, problems)
    return staged
