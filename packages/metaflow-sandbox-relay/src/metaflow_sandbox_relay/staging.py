"""Reading a sandbox's staging tree and accepting only what belongs to the launched task."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field

from .blob_check import blob_matches_name
from .scope import RelayRefusedError, TaskScope

_SHA = re.compile(r"^[0-9a-f]{40}$")
_ATTEMPT_TAG = re.compile(r"^attempt_id:(\d+)$")


@dataclass(frozen=True)
class Limits:
    """Bounds on what one task may send home through the relay."""

    max_record_bytes: int = 1 << 20
    max_metadata_bytes: int = 32 << 20
    max_files: int = 100_000


@dataclass
class StagedTask:
    """What a sandboxed task produced, already checked against its scope."""

    root: str
    scope: TaskScope
    blobs: list[str] = field(default_factory=list)  # paths relative to root, with their _meta files
    task_files: list[str] = field(default_factory=list)
    #: (record name without .json, record) for the task's metadata.
    records: list[tuple[str, dict]] = field(default_factory=list)


def _walk_files(root: str, problems: list[str], limit: int):
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in list(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):
                problems.append(f"symlink {os.path.relpath(os.path.join(dirpath, name), root)}")
                dirnames.remove(name)
        for name in filenames:
            path = os.path.join(dirpath, name)
            count += 1
            if count > limit:
                problems.append(f"more than {limit} files")
                return
            mode = os.lstat(path).st_mode
            rel = os.path.relpath(path, root)
            if not stat.S_ISREG(mode):
                problems.append(f"{rel} is not a regular file")
                continue
            yield rel


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


def _load_json(path: str, rel: str, limits: Limits, problems: list[str]) -> object | None:
    size = os.path.getsize(path)
    if size > limits.max_record_bytes:
        problems.append(f"{rel} is {size} bytes (limit {limits.max_record_bytes})")
        return None
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except ValueError:
        problems.append(f"{rel} is not valid JSON")
        return None


def collect_staged_task(root: str, scope: TaskScope, limits: Limits | None = None) -> StagedTask:
    """Classify every file under `root`; raise `RelayRefusedError` if anything is out of scope."""
    limits = limits or Limits()
    staged = StagedTask(root=root, scope=scope)
    problems: list[str] = []
    if not os.path.isdir(root):
        return staged
    flow, run_id, step, task_id = scope.task_path
    task_prefix = f"{scope.attempt}."
    ancestors = {
        (flow, "_meta", "_self.json"),
        (flow, run_id, "_meta", "_self.json"),
        (flow, run_id, step, "_meta", "_self.json"),
    }
    metadata_bytes = 0
    for rel in _walk_files(root, problems, limits.max_files):
        parts = tuple(rel.split(os.sep))
        path = os.path.join(root, rel)
        name = parts[-1]
        if name.startswith("tmp") and len(parts) > 1:
            continue  # an interrupted atomic write; never applied
        if len(parts) == 4 and parts[:2] == (flow, "data"):
            sha = name[: -len("_meta")] if name.endswith("_meta") else name
            if _SHA.match(sha) and parts[2] == sha[:2]:
                if name == sha:
                    if blob_matches_name(path):
                        staged.blobs.append(rel)
                    else:
                        problems.append(f"{rel} does not hash to its name")
                continue
        elif len(parts) == 5 and parts[:4] == scope.task_path:
            if name.startswith(task_prefix):
                staged.task_files.append(rel)
                continue
        elif len(parts) == 6 and parts[:5] == (*scope.task_path, "_meta") and name.endswith(".json"):
            record = _load_json(path, rel, limits, problems)
            if record is not None:
                metadata_bytes += os.path.getsize(path)
                why = None if name == "_self.json" else _check_record(rel, record, scope)
                if why is None and name == "_self.json":
                    why = _check_ancestor(rel, record, scope)
                    if (
                        why is None
                        and isinstance(record, dict)
                        and str(record.get("task_id", task_id)) != task_id
                    ):
                        why = f"{rel} names task_id={record['task_id']!r}, not {task_id!r}"
                if why:
                    problems.append(why)
                else:
                    staged.records.append((name[: -len(".json")], record))  # type: ignore[arg-type]
            continue
        elif parts in ancestors:
            record = _load_json(path, rel, limits, problems)
            if record is not None:
                why = _check_ancestor(rel, record, scope)
                if why:
                    problems.append(why)
            continue
        problems.append(f"{rel} is outside {scope}")
    if metadata_bytes > limits.max_metadata_bytes:
        problems.append(f"{metadata_bytes} bytes of metadata (limit {limits.max_metadata_bytes})")
    if problems:
        raise RelayRefusedError(scope, problems)
    return staged
