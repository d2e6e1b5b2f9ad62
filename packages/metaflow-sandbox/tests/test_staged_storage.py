"""The staging overlay inside the sandbox: writes go to staging, reads find them there, and with a list of
staged paths every other read goes to the real root alone (one round trip, not two, on a remote store)."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import pytest
from metaflow.plugins.datastores.local_storage import LocalStorage

from metaflow_extensions.sandbox.plugins.sandbox.staged_storage import StagedPaths, _staging

Asked = dict[str, set[str]]


def _counted(asked: Asked) -> type:
    """A fresh LocalStorage class that notes which paths each root was asked about."""

    class Counted(LocalStorage):
        def is_file(self, paths):
            paths = list(paths)
            asked[self.datastore_root].update(paths)
            return super().is_file(paths)

    return Counted


def _read(storage, paths) -> dict[str, bytes]:
    with storage.load_bytes(paths) as loaded:
        return {path: open(local, "rb").read() for path, local, _ in loaded if local is not None}


@pytest.fixture
def roots(tmp_path: Path) -> tuple[str, str]:
    real, stage = tmp_path / "real", tmp_path / "stage"
    (real / "flow" / "data").mkdir(parents=True)
    (real / "flow" / "data" / "parent").write_bytes(b"from the parent")
    stage.mkdir()
    return str(stage), str(real)


@pytest.mark.parametrize("listed", [False, True], ids=["asking-staging", "staged-paths"])
def test_writes_are_staged_and_reads_find_both(roots, tmp_path: Path, listed: bool) -> None:
    stage, real = roots
    asked: Asked = defaultdict(set)
    storage_cls = _counted(asked)
    _staging(storage_cls, stage, StagedPaths(str(tmp_path / "staged")) if listed else None)
    storage = storage_cls(real)

    storage.save_bytes(iter([("flow/data/mine", io.BytesIO(b"from this task"))]))

    assert (Path(stage) / "flow/data/mine").read_bytes() == b"from this task"
    assert not (Path(real) / "flow/data/mine").exists()
    assert storage.is_file(["flow/data/mine", "flow/data/parent", "flow/data/absent"]) == [True, True, False]
    assert _read(storage, ["flow/data/mine", "flow/data/parent"]) == {
        "flow/data/mine": b"from this task",
        "flow/data/parent": b"from the parent",
    }
    assert storage.size_file("flow/data/parent") == len(b"from the parent")
    assert storage.info_file("flow/data/mine")[0] is True
    assert "flow/data/mine" not in asked[real]  # found in staging: the real root is never asked
    if listed:  # staging is not asked about what the task did not stage
        assert "flow/data/parent" not in asked[stage] and "flow/data/absent" not in asked[stage]
    else:
        assert {"flow/data/parent", "flow/data/absent"} <= asked[stage]


def test_another_process_of_the_task_sees_what_was_staged(roots, tmp_path: Path) -> None:
    stage, real = roots
    listing = str(tmp_path / "staged")
    first, second = _counted(defaultdict(set)), _counted(defaultdict(set))
    _staging(first, stage, StagedPaths(listing))
    _staging(second, stage, StagedPaths(listing))  # e.g. a card's subprocess, sharing the list by its path
    first(real).save_bytes(iter([("flow/data/mine", io.BytesIO(b"x"))]))
    assert second(real).is_file(["flow/data/mine"]) == [True]


def test_the_two_views_share_the_instance_state(roots) -> None:
    stage, real = roots
    storage_cls = _counted(defaultdict(set))
    _staging(storage_cls, stage)
    storage = storage_cls(real)
    storage.client = object()  # e.g. S3Storage's client: one per instance, not one per view
    storage.is_file(["flow/data/parent"])
    *views, own = storage.__dict__["_sandbox_views"]
    assert [view.datastore_root for view in views] == [stage, real] and own is None
    assert all(view.client is storage.client for view in views)


def test_own_files_are_kept_on_the_sandbox_disk_and_blobs_in_staging(roots, tmp_path: Path) -> None:
    """With own files (a remote datastore): the task's files go to the local tree shipped home in one archive,
    its blobs to the staging prefix; reads find each where it went, and the rest at the real root."""
    stage, real = roots
    (Path(real) / "flow/run/step/1").mkdir(parents=True)
    (Path(real) / "flow/run/step/1/0.data.json").write_bytes(b"the parent's listing")
    own_root = tmp_path / "own"
    asked: Asked = defaultdict(set)
    storage_cls = _counted(asked)
    _staging(storage_cls, stage, StagedPaths(str(tmp_path / "staged")), LocalStorage(str(own_root)))
    storage = storage_cls(real)

    storage.save_bytes(iter([("flow/data/ab/abcd", io.BytesIO(b"a blob"))]))
    storage.save_bytes(iter([("flow/run/step/2/0.data.json", io.BytesIO(b"my listing"))]))

    assert (Path(stage) / "flow/data/ab/abcd").read_bytes() == b"a blob"
    assert (own_root / "flow/run/step/2/0.data.json").read_bytes() == b"my listing"
    assert not (Path(stage) / "flow/run/step/2").exists() and not (Path(real) / "flow/run/step/2").exists()
    paths = ["flow/data/ab/abcd", "flow/run/step/2/0.data.json", "flow/run/step/1/0.data.json", "flow/run/x"]
    assert storage.is_file(paths) == [True, True, True, False]
    assert _read(storage, paths[:3]) == {
        "flow/data/ab/abcd": b"a blob",
        "flow/run/step/2/0.data.json": b"my listing",
        "flow/run/step/1/0.data.json": b"the parent's listing",
    }
    assert storage.size_file("flow/run/step/2/0.data.json") == len(b"my listing")
    assert {r.path for r in storage.list_content(["flow/run/step/2/"])} >= {"flow/run/step/2/0.data.json"}
    assert "flow/data/ab/abcd" not in asked[stage]  # the staged-paths file answered
